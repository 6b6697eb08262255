#!/usr/bin/env bash
# Every sharing option beyond the blog's grid, one workdir per option.
#
#   experiments/options.sh [CONFIG_ARG] [OUT]
#   experiments/options.sh cpu runs/options        # 2-core CPU size
#   experiments/options.sh '' runs/options_full    # full size, for a GPU/TPU
#
# Classifier options train into OUT/classify/<option> beside the unshared
# baseline OUT/classify/none; causal-LM options into OUT/lm/<option>.
# Rerunning resumes or skips finished runs. Compare the classifiers with
#   python -m jax_attnshare.analyze --runs OUT/classify --out OUT/classify_report
# (GQA and MQA use 4 heads at the CPU size: their own MHA reference is gqa4).
set -euo pipefail
arg=${1:-cpu}
out=${2:-runs/options}

# workdir name -> config file and its extra args.
classify=(
  "none no_share"
  "gqa2 gqa"
  "mqa mqa"
  "mqa_kv mqa share=kv"
  "head_map_qk head_map"
  "shared_weight shared_weight"
  "shared_attention shared_attention"
  "cla2 cla"
  "albert_all albert_grid variant=all"
  "albert_attention albert_grid variant=attention"
  "albert_ffn albert_grid variant=ffn"
  "albert_none albert_grid variant=none"
  "gqa4 gqa groups=4")
lm=(
  "lm lm"
  "lm_gqa2 lm kv_heads=2"
  "lm_sa lm sa=2-3"
  "lm_cla2 lm cla=2")

train() {  # task, workdir name, config, extra config args
  local args=$arg${arg:+${4:+,}}${4:-}
  python -m jax_attnshare.main --config="configs/$3.py${args:+:$args}" \
    --workdir="$out/$1/$2"
}

for row in "${classify[@]}"; do train classify $row; done
for row in "${lm[@]}"; do train lm $row; done
echo "Analyse with: python -m jax_attnshare.analyze --runs $out/classify --out $out/classify_report"
