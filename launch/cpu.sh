#!/usr/bin/env bash
# One sharing condition at the 2-core-CPU size (5 seeds, minutes).
#   launch/cpu.sh [CONFIG] [WORKDIR]
#   launch/cpu.sh configs/kv_share.py runs/kv_cpu
# Uses ../shared/tensorflow_datasets when it exists and TFDS_DATA_DIR is unset.
set -euo pipefail
config=${1:-configs/kv_share.py}
workdir=${2:-runs/$(basename "$config" .py)_cpu}
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d "$here/../shared/tensorflow_datasets" ]; then
  export TFDS_DATA_DIR="$here/../shared/tensorflow_datasets"
fi
export JAX_PLATFORMS=cpu
exec python -m jax_attnshare.main --config="$config:cpu" --workdir="$workdir"
