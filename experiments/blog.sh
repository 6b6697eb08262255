#!/usr/bin/env bash
# The blog's two experiments, one workdir per sharing condition.
#
#   experiments/blog.sh [exp1|exp2|all] [CONFIG_ARG] [OUT]
#   experiments/blog.sh full [OUT]
#   experiments/blog.sh all cpu runs/blog        # 2-core CPU size
#   experiments/blog.sh exp1 '' runs/blog_full   # full size, for a GPU/TPU
#
#   experiments/blog.sh all 'cpu,regime=blog' runs/blog_cpu   # blog regime
#   experiments/blog.sh full runs/blog_full   # both regimes, full size, GPU/TPU
#
# `full` runs both regimes x the 8 conditions at full size into
# OUT/clean/... and OUT/blog/..., after printing the expected training time
# measured by experiments/seed_throughput.py on this machine; compare the
# regimes' claims with
#   python -m jax_attnshare.report --runs OUT/blog \
#       --compare_runs OUT/clean --out OUT/report
#
# Experiment 1 compares none, kv, kq, qv, kqv; experiment 2 none, k, q, v, kqv.
# The data is prepared once per regime (python -m jax_attnshare.prepare: IMDB
# read and the tokenizer trained), and every condition reads it. Each
# condition trains once into OUT/<condition>: a condition whose summary.json
# says it finished (with the same config and seed mode) is skipped, any other
# resumes from its last checkpoint, so an interrupted grid goes on where it
# stopped. OUT holds all 8 conditions and its report tests the whole family
# of the blog's claims (docs/statistics.md):
#   python -m jax_attnshare.report --runs OUT --out OUT_report
# OUT/exp1 and OUT/exp2 link to the conditions each experiment compares; a
# report on one of them leaves the other's claims untested.
# Each replica draws its own data order (seed_mode=per_seed), so conclusions
# generalise over data order; SEED_MODE=shared pairs the conditions on one
# data order instead (the report then says its comparisons are conditional
# on it). DRY_RUN=1 prints the commands instead of running them (and says
# which it would skip); PYTHON=... picks the interpreter.
set -euo pipefail
python=${PYTHON:-python}
run() { if [ -n "${DRY_RUN:-}" ]; then echo "$*"; else "$@"; fi; }
# Whether WORKDIR holds a finished run of CONFIG_ARG with SEED_MODE.
finished() {
  "$python" - "$@" <<'EOF'
import json, sys
workdir, config_arg, seed_mode = sys.argv[1:]
try:
  with open(f'{workdir}/summary.json') as f:
    summary = json.load(f)
except (OSError, ValueError):
  sys.exit(1)
sys.exit(not (summary.get('finished') is True
              and summary.get('config_name') == config_arg
              and summary.get('seed_mode') == seed_mode))
EOF
}
which=${1:-all}
if [ "$which" = full ]; then
  out=${2:-runs/blog_full}
  for regime in clean blog; do
    run "$python" experiments/seed_throughput.py \
      --config="configs/no_share.py:regime=$regime" --estimate_runs=8
  done
  for regime in clean blog; do
    "$0" all "regime=$regime" "$out/$regime"
  done
  exit
fi
arg=${2:-cpu}
out=${3:-runs/blog}
seed_mode=${SEED_MODE:-per_seed}

declare -A config=(
  [none]=no_share [k]=k_share [q]=q_share [v]=v_share [kv]=kv_share
  [kq]=kq_share [qv]=qv_share [kqv]=kqv_share)
exp1=(none kv kq qv kqv)
exp2=(none k q v kqv)
case "$which" in
  exp1) experiments=(exp1) ;;
  exp2) experiments=(exp2) ;;
  all) experiments=(exp1 exp2) ;;
  *) echo "usage: $0 [exp1|exp2|all] [CONFIG_ARG] [OUT] | full [OUT]" >&2
     exit 2 ;;
esac

suffix=${arg:+:$arg}
# The conditions differ in what they share, not in their data.
run "$python" -m jax_attnshare.prepare --config="configs/no_share.py$suffix"
for experiment in "${experiments[@]}"; do
  declare -n conditions=$experiment
  run mkdir -p "$out/$experiment"
  for condition in "${conditions[@]}"; do
    config_arg="configs/${config[$condition]}.py$suffix"
    workdir="$out/$condition"
    if finished "$workdir" "$config_arg" "$seed_mode"; then
      echo "Skipping $condition: $workdir holds its finished run."
    else
      run "$python" -m jax_attnshare.main --config="$config_arg" \
        --workdir="$workdir" --config.data.seed_mode="$seed_mode"
    fi
    run ln -sfn "../$condition" "$out/$experiment/$condition"
  done
done
echo "Analyse with: $python -m jax_attnshare.report --runs $out --out ${out}_report"
