"""IMDB sentiment, blog condition `qv`. The query and value projections are shared across all layers.

Full size (the blog's model and schedule: 3 layers, width 128, 8 heads,
15 seeds, 15 epochs at batch 32 = 11,715 steps; 256 SentencePiece tokens in
the clean regime, up to 512 words in length buckets in the blog's), for one
GPU/TPU:
  python -m jax_attnshare.main --config=configs/qv_share.py --workdir=runs/qv
  python -m jax_attnshare.main --config=configs/qv_share.py:regime=blog \
      --workdir=runs/blog_regime/qv
Expected cost: 6.8e15 training matmul FLOPs over the 15 replicas (the
count of experiments/seed_throughput.py). Not timed on a GPU here; at 10-30%
of an A100's TF32 peak that is 2.5-7 minutes of training plus evaluation.

2-core CPU size (5 seeds, width 64, 2 heads, 128 tokens, 400 steps, test
subset of 5,000 reviews); measured figures: docs/studies/, docs/performance.md.
  python -m jax_attnshare.main --config=configs/qv_share.py:cpu
Args: `cpu`, `tiny` (tests), `seeds=N`, `regime=blog` (512 words in length
buckets) or `regime=blog32` (the blog regime at 32 words); docs/regimes.md.
"""

from jax_attnshare import configs


def get_config(arg=None):
  return configs.classifier_config('qv', arg)
