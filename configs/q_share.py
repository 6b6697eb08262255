"""IMDB sentiment, blog condition `q`. The query projection W_Q is shared across all layers.

Full size (the blog's: 3 layers, width 128, 8 heads, 256 tokens, 15 seeds,
15 epochs at batch 32 = 11,715 steps), for one GPU/TPU:
  python -m jax_attnshare.main --config=configs/q_share.py --workdir=runs/q
Expected: about 1.3e17 training FLOPs over the 15 replicas; at 30% of an
A100's 156 TFLOP/s TF32 peak that is about 45 minutes (an estimate from the
FLOP count, not a measurement).

2-core CPU size (5 seeds, width 64, 4 heads, 128 tokens, 600 steps, test
subset of 5,000 reviews): see README for the measured time and accuracy.
  python -m jax_attnshare.main --config=configs/q_share.py:cpu
Args: `cpu`, `tiny` (tests), `seeds=N`.
"""

from jax_attnshare import config_utils


def get_config(arg=None):
  return config_utils.classifier_config('q', arg)
