#!/usr/bin/env bash
# One sharing condition at full size (15 seeds) on one NVIDIA GPU, or on
# every GPU of one node: one process shards the seeds over all the GPUs it
# sees (15 seeds on 8 GPUs: 2 per GPU, 1 padding replica). Pick GPUs with
# CUDA_VISIBLE_DEVICES. Several nodes: launch/slurm.sbatch.
#   launch/gpu.sh [CONFIG] [WORKDIR]
#   DRY_RUN=1 launch/gpu.sh ...   prints the commands instead of running them
# The first time, installs jax[cuda12] pinned to JAX_VERSION (launch/lib.sh)
# into the Python on PATH, next to the CPU jaxlib the package pulls in;
# later launches find it installed and skip the install.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/launch/lib.sh"
config=${1:-configs/kv_share.py}
workdir=${2:-runs/$(basename "$config" .py)}
if ! python -c "import importlib.metadata as m, sys
sys.exit(any(m.version(p) != '$JAX_VERSION'
             for p in ('jax', 'jaxlib', 'jax-cuda12-plugin')))" 2>/dev/null
then
  run python -m pip install --quiet "jax[cuda12]==$JAX_VERSION"
fi
# Let JAX grow its memory instead of taking 75% up front, so TensorFlow (used
# by tfds and the writers, on the CPU) and the eval steps fit beside it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
run exec python -m jax_attnshare.main --config="$config" --workdir="$workdir"
