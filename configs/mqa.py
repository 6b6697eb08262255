"""IMDB sentiment with multi-query attention: one key/value head per layer.

Every query head uses the same key and value head (MQA, arXiv 1911.02150);
it is GQA with one group. `share=kv` also shares that one K/V head across
all layers, so the whole encoder has a single key and a single value head.

Full size (3 layers, width 128, 8 heads, 256 tokens, 15 seeds, 11,715 steps):
  python -m jax_attnshare.main --config=configs/mqa.py --workdir=runs/mqa
2-core CPU size (5 seeds, width 64, 4 heads, 128 tokens, 400 steps; `groups=4`
is the MHA reference at that size):
  python -m jax_attnshare.main --config=configs/mqa.py:cpu
  python -m jax_attnshare.main --config=configs/mqa.py:cpu,share=kv
Args: `share=` components shared across layers, `cpu`, `tiny`, `seeds=N`,
`regime=blog` or `regime=blog32`.
"""

from jax_attnshare import configs


def get_config(arg=None):
  a = configs.parse_arg(arg, **configs.SIZE_ARGS, share='none')
  c = configs.classifier_config(a.share, a)
  if a.cpu or a.tiny:  # Four heads, as gqa.py: GQA differs from MHA and MQA.
    c.model.num_heads = 4
  c.sharing.kv_heads = 1
  c.name = configs.variant_name('mqa', a, share='none')
  return c
