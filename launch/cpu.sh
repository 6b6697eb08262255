#!/usr/bin/env bash
# One sharing condition at the 2-core-CPU size (5 seeds, minutes).
#   launch/cpu.sh [CONFIG] [WORKDIR]
#   launch/cpu.sh configs/kv_share.py runs/kv_cpu
#   DRY_RUN=1 launch/cpu.sh ...   prints the command instead of running it
# Uses ../shared/tensorflow_datasets when it exists and TFDS_DATA_DIR is unset.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/launch/lib.sh"
config=${1:-configs/kv_share.py}
workdir=${2:-runs/$(basename "$config" .py)_cpu}
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d "$here/../shared/tensorflow_datasets" ]; then
  export TFDS_DATA_DIR="$here/../shared/tensorflow_datasets"
fi
export JAX_PLATFORMS=cpu
run exec python -m jax_attnshare.main --config="$config:cpu" \
  --workdir="$workdir"
