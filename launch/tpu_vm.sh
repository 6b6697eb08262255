#!/usr/bin/env bash
# One sharing condition at full size on a Cloud TPU VM or pod slice: the
# same command on every worker (--worker=all), joined by JAX's own cluster
# detection (--distributed); the seeds are sharded over every TPU core.
#   launch/tpu_vm.sh TPU_NAME ZONE [CONFIG] [WORKDIR]
#   launch/tpu_vm.sh my-v4-16 us-central2-b configs/kv_share.py /mnt/runs/kv
# Needs: gcloud, a TPU VM created with a TPU software version that has
# Python >= 3.10, and for a slice of several hosts a WORKDIR that every
# worker mounts at the same path (Filestore NFS or a gcsfuse bucket); on a
# single-host VM (v2-8, v3-8, v4-8, v5e-8) its own disk does. Each worker
# downloads IMDB into its own ~/tensorflow_datasets.
# Copies this checkout to ~/jax_attnshare on every worker and installs it;
# rerunning resumes the run from its last checkpoint.
set -euo pipefail
tpu=${1:?usage: $0 TPU_NAME ZONE [CONFIG] [WORKDIR]}
zone=${2:?usage: $0 TPU_NAME ZONE [CONFIG] [WORKDIR]}
config=${3:-configs/kv_share.py}
workdir=${4:-runs/$(basename "$config" .py)}
here="$(cd "$(dirname "$0")/.." && pwd)"
tpu_ssh() {
  gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
    --command="$1"
}
gcloud compute tpus tpu-vm scp --zone="$zone" --worker=all --recurse \
  "$here" "$tpu":~/jax_attnshare
tpu_ssh "cd ~/jax_attnshare && python3 -m pip install --quiet -e . 'jax[tpu]'"
tpu_ssh "cd ~/jax_attnshare && python3 -m jax_attnshare.main --distributed \
  --config='$config' --workdir='$workdir'"
