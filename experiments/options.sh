#!/usr/bin/env bash
# Every sharing option beyond the blog's grid, one workdir per option.
#
#   experiments/options.sh [CONFIG_ARG] [OUT]
#   experiments/options.sh cpu runs/options        # 2-core CPU size
#   experiments/options.sh '' runs/options_full    # full size, for a GPU/TPU
#
# Classifier options train into OUT/classify/<option> beside the unshared
# baseline OUT/classify/none; causal-LM options into OUT/lm/<option>.
# Rerunning resumes or skips finished runs. Tabulate quality beside cost with
#   python experiments/options_table.py OUT
# and test the classifiers against the baseline with
#   python -m jax_attnshare.report --runs OUT/classify --out OUT/classify_report
# (GQA and MQA use 4 heads at the CPU size: their own MHA reference is gqa4).
# Each replica draws its own data order; SEED_MODE=shared pairs the options
# on one data order instead.
set -euo pipefail
python=${PYTHON:-python}
arg=${1:-cpu}
out=${2:-runs/options}
seed_mode=${SEED_MODE:-per_seed}

# task, workdir name, config file, extra config args; the most informative
# first, so an interrupted sweep has covered every kind of option.
runs=(
  "classify none no_share"
  "classify gqa2 gqa"
  "classify mqa mqa"
  "classify shared_weight shared_weight"
  "classify shared_attention shared_attention"
  "classify cla2 cla"
  "classify head_map_qk head_map"
  "classify mqa_kv mqa share=kv"
  "classify albert_all albert_grid variant=all"
  "lm lm lm"
  "classify albert_attention albert_grid variant=attention"
  "classify albert_ffn albert_grid variant=ffn"
  "classify albert_none albert_grid variant=none"
  "lm lm_gqa2 lm kv_heads=2"
  "lm lm_sa lm sa=2-3"
  "lm lm_cla2 lm cla=2"
  "classify gqa4 gqa groups=4")

train() {  # task, workdir name, config, extra config args
  local args=$arg${arg:+${4:+,}}${4:-}
  "$python" -m jax_attnshare.main --config="configs/$3.py${args:+:$args}" \
    --workdir="$out/$1/$2" --config.data.seed_mode="$seed_mode"
}

for row in "${runs[@]}"; do train $row; done
echo "Tabulate with: $python experiments/options_table.py $out"
echo "Analyse with: $python -m jax_attnshare.report --runs $out/classify --out $out/classify_report"
