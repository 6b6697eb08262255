"""IMDB sentiment with shared-weight attention (arXiv 2412.00359).

One matrix Ws and three learned diagonals per layer: Q = X·Ws·Dq,
K = X·Ws·Dk, V = X·Ws·Dv, so Q/K/V cost d² + 3d parameters instead of 3d².
The logits Q·Kᵀ = X·Ws·(Dq·Dk)·Wsᵀ·Xᵀ are symmetric: token i attends to j with
the same logit as j to i (before the padding mask and softmax).
`share=qkv` also shares Ws and the diagonals across all layers.

Full size (3 layers, width 128, 8 heads, 256 tokens, 15 seeds, 11,715 steps):
  python -m jax_attnshare.main --config=configs/shared_weight.py
2-core CPU size (5 seeds, width 64, 2 heads, 128 tokens, 400 steps):
  python -m jax_attnshare.main --config=configs/shared_weight.py:cpu
  python -m jax_attnshare.main --config=configs/shared_weight.py:cpu,share=qkv
Args: `share=` components shared across layers (`qkv` or none; q, k and v
go together), `cpu`, `tiny`, `seeds=N`, `regime=blog` or `regime=blog32`.
"""

from jax_attnshare import configs


def get_config(arg=None):
  a = configs.parse_arg(arg, **configs.SIZE_ARGS, share='none')
  c = configs.classifier_config(a.share, a)
  c.sharing.shared_weight = True
  c.name = configs.variant_name('shared_weight', a, share='none')
  return c
