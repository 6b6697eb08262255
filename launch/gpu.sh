#!/usr/bin/env bash
# One sharing condition at full size (15 seeds) on one NVIDIA GPU, or on
# every GPU of one node: one process shards the seeds over all the GPUs it
# sees (15 seeds on 8 GPUs: 2 per GPU, 1 padding replica). Pick GPUs with
# CUDA_VISIBLE_DEVICES. Several nodes: launch/slurm.sbatch.
#   launch/gpu.sh [CONFIG] [WORKDIR]
# Installs the CUDA build of jaxlib next to the CPU one the package pulls in.
set -euo pipefail
config=${1:-configs/kv_share.py}
workdir=${2:-runs/$(basename "$config" .py)}
python -m pip install --quiet -U "jax[cuda12]"
# Let JAX grow its memory instead of taking 75% up front, so TensorFlow (used
# by tfds and the writers, on the CPU) and the eval steps fit beside it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec python -m jax_attnshare.main --config="$config" --workdir="$workdir"
