#!/usr/bin/env bash
# The accelerator check of docs/performance.md, in one call (NOT RUN YET: no
# GPU was available to the work that wrote it).
#
#   bash experiments/gpu_check.sh [OUT_DIR]
#
# 1. The cuDNN path at full size: fused_implementation picks cuDNN for both
#    regimes (the probe compiles; its refusal is logged with the reason),
#    and the compiled 15-seed training program has one cuDNN forward per
#    layer (the backward's second forward merged into it), one backward per
#    layer, and no conditional.
# 2. The benchmark's rows at full size, both regimes: 1 and 15 seeds,
#    float32/explicit, bfloat16/explicit and bfloat16/auto (each program
#    compiled once, rows printed as measured).
# 3. --whole_run of kv_share at full size: train, evaluations, statistics.
# Everything is printed and kept under OUT_DIR (default gpu_check/).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

python - <<'EOF' 2>&1 | tee "$out/cudnn.txt"
import re
import jax
import numpy as np
from jax_attnshare import configs, data, model as model_lib, steps as steps_lib

print(jax.devices()[0].device_kind, jax.__version__)
for arg in ('', 'regime=blog'):
  c = configs.classifier_config('kv', arg)
  cfg = model_lib.model_config(c, c.data.vocab_size, 0)
  print(arg or 'clean', 'fused_implementation:',
        model_lib.fused_implementation(cfg))
  steps = steps_lib.SeedSteps(
      model_lib.make_model(cfg),
      steps_lib.make_optimizer(c.opt, c.num_train_steps), c.data.max_length,
      c.num_seeds, c.data.seed_mode == 'per_seed', c.seed_chunk,
      c.steps_per_call)
  state = steps.init(steps_lib.seed_keys(range(c.num_seeds)))
  split = steps.put_split(data.Split(
      np.ones((64, c.data.max_length), np.int32), np.zeros(64, np.int32)))
  rows = ((c.steps_per_call, c.num_seeds, c.batch_size)
          if c.data.seed_mode == 'per_seed'
          else (c.steps_per_call, c.batch_size))
  hlo = steps.scanned_steps.lower(
      state, steps.zero_window(), split,
      steps.put_rows(np.zeros(rows, np.int32)), 0,
      length=c.steps_per_call).compile().as_text()
  print('  cuDNN forward calls', len(re.findall(r'__cudnn\$fmhaSoftmax"', hlo)),
        'backward calls',
        len(re.findall(r'__cudnn\$fmhaSoftmaxBackward"', hlo)),
        'layers', cfg.num_layers, '; conditionals', hlo.count('conditional'))
EOF

for regime in '' ':regime=blog'; do
  python experiments/seed_throughput.py --config="configs/kv_share.py${regime}" \
    --seeds=1,15 --steps=200 --matmul_size=8192 \
    --variants=float32/explicit,bfloat16/explicit,bfloat16/auto \
    2>&1 | tee "$out/table${regime//[:=]/_}.txt"
done
python experiments/seed_throughput.py --config=configs/kv_share.py --whole_run \
  2>&1 | tee "$out/whole_run.txt"
