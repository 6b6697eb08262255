#!/usr/bin/env bash
# One task of launch/slurm.sbatch: gives the task its GPUs, then runs the
# training as process SLURM_PROCID of SLURM_NTASKS.
#   slurm_task.sh CONFIG WORKDIR COORDINATOR_HOST:PORT
# With several tasks per node (one per GPU), a site either binds one GPU to
# each task (SLURM sets CUDA_VISIBLE_DEVICES to it: kept) or lets every task
# see every GPU of the node (this task takes the SLURM_LOCALID-th). With one
# task per node it keeps every GPU. main's explicit process flags keep JAX
# from choosing the GPU of SLURM_LOCALID itself, which does not exist where
# SLURM bound one GPU per task.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/launch/lib.sh"
config=$1
workdir=$2
coordinator=$3
if (( ${SLURM_NTASKS_PER_NODE:-1} > 1 )); then
  IFS=, read -r -a gpus <<< "${CUDA_VISIBLE_DEVICES:-}"
  if (( ${#gpus[@]} == 0 )); then  # Not named: every GPU of the node.
    export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID
  elif (( ${#gpus[@]} > 1 )); then
    if (( SLURM_LOCALID >= ${#gpus[@]} )); then
      echo "error: task $SLURM_LOCALID of its node sees only ${#gpus[@]}" \
        "GPUs; set --ntasks-per-node to the GPUs per node." >&2
      exit 2
    fi
    export CUDA_VISIBLE_DEVICES=${gpus[$SLURM_LOCALID]}
  fi
fi
echo "process $SLURM_PROCID of $SLURM_NTASKS on $(hostname):" \
  "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-(every GPU)}" >&2
run exec python -m jax_attnshare.main --config="$config" \
  --workdir="$workdir" --config.data.allow_download=False \
  --coordinator_address="$coordinator" --num_processes="$SLURM_NTASKS" \
  --process_id="$SLURM_PROCID"
