#!/usr/bin/env bash
# One sharing condition at full size (15 seeds) on one NVIDIA GPU.
#   launch/gpu.sh [CONFIG] [WORKDIR]
# Installs the CUDA build of jaxlib next to the CPU one the package pulls in.
# With several GPUs the seed axis is sharded over them (num_seeds must be a
# multiple of the device count, else the run stays on one device).
set -euo pipefail
config=${1:-configs/kv_share.py}
workdir=${2:-runs/$(basename "$config" .py)}
python -m pip install --quiet -U "jax[cuda12]"
# Let JAX grow its memory instead of taking 75% up front, so TensorFlow (used
# by tfds and the writers, on the CPU) and the eval steps fit beside it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec python -m jax_attnshare.main --config="$config" --workdir="$workdir"
