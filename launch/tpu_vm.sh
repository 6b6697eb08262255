#!/usr/bin/env bash
# One sharing condition at full size on a Cloud TPU VM or pod slice: the
# same command on every worker (--worker=all), joined by JAX's own cluster
# detection (--distributed); the seeds are sharded over every TPU chip.
#   launch/tpu_vm.sh TPU_NAME ZONE [CONFIG] [WORKDIR]
#   launch/tpu_vm.sh my-v5e us-west4-a configs/kv_share.py /mnt/runs/kv
#   DRY_RUN=1 launch/tpu_vm.sh ...   prints the gcloud commands instead
# Needs gcloud and a TPU VM of any software version. A single-host VM
# (accelerator type v4-8, v5litepod-8 or v6e-8) keeps the workdir on its own
# disk; a slice of several hosts (v4-16, v5litepod-16, ...) needs a WORKDIR
# that every worker mounts at the same path: Filestore (NFS), not a gcsfuse
# bucket (docs/scaling.md, "Cloud storage"). A relative WORKDIR is under the
# home folder. Each worker downloads IMDB into its own ~/tensorflow_datasets.
# On every worker, this:
#   1. unless a training still runs there, replaces ~/jax_attnshare with this checkout's tracked files, so a
#      rerun never runs a stale copy;
#   2. the first time, makes a Python 3.11 virtual environment with uv (the
#      TPU VM images have Python 3.10; jax >= 0.7 needs 3.11) and, whenever
#      setup.cfg changed, installs the project and jax[tpu]==JAX_VERSION
#      (launch/lib.sh) into it;
#   3. starts the training detached (setsid nohup) with its output in
#      ~/jax_attnshare_logs/NAME.log, so a dropped ssh stops no worker.
# Rerunning resumes the run from its last checkpoint.
set -euo pipefail
usage="usage: $0 TPU_NAME ZONE [CONFIG] [WORKDIR]"
tpu=${1:?$usage}
zone=${2:?$usage}
config=${3:-configs/kv_share.py}
workdir=${4:-runs/$(basename "$config" .py)}
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/launch/lib.sh"
case $workdir in
  /*) remote_workdir=$(printf %q "$workdir") ;;
  *) remote_workdir="\$HOME/$(printf %q "$workdir")" ;;
esac
# Paths on the workers, expanded there.
# shellcheck disable=SC2016
code_dir='$HOME/jax_attnshare' venv='$HOME/jax_attnshare_venv' \
  uv='$HOME/.local/bin/uv'
log="\$HOME/jax_attnshare_logs/$(basename "$workdir").log"

tpu_ssh() {
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
    --command="$1"
}

code=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$code"' EXIT
git -C "$here" ls-files -z | tar -czf "$code" -C "$here" --null -T -
run gcloud compute tpus tpu-vm scp --zone="$zone" --worker=all "$code" \
  "$tpu":jax_attnshare.tar.gz
tpu_ssh "set -euo pipefail
# [j]: the pattern must not match this shell's own command line.
if pgrep -f 'python.* -m [j]ax_attnshare[.]main' > /dev/null; then
  echo \"error: \$(hostname) still trains (pgrep -af python shows it):\" \\
    'wait for it or stop it first.' >&2
  exit 2
fi
rm -rf $code_dir && mkdir $code_dir
tar -xzf \$HOME/jax_attnshare.tar.gz -C $code_dir
if [ ! -x $venv/bin/python ]; then
  python3 -m pip install --user --quiet uv
  $uv venv --python 3.11 $venv
fi
if ! cmp -s $code_dir/setup.cfg $venv/installed-setup.cfg; then
  $uv pip install --python $venv/bin/python -e $code_dir \\
    'jax[tpu]==$JAX_VERSION'
  cp $code_dir/setup.cfg $venv/installed-setup.cfg
fi"
tpu_ssh "cd $code_dir && mkdir -p \$HOME/jax_attnshare_logs
setsid nohup $venv/bin/python -m jax_attnshare.main --distributed \\
  --config=$(printf %q "$config") --workdir=$remote_workdir \\
  > $log 2>&1 < /dev/null &
echo \"\$(hostname): training as pid \$!, log $log\""
echo "Follow it: gcloud compute tpus tpu-vm ssh $tpu --zone=$zone" \
  "--worker=0 --command='tail -f $log'"
