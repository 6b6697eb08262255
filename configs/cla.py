"""IMDB sentiment with cross-layer K/V activations (CLA, arXiv 2405.12981).

Layers l with l % k == 0 compute keys and values; the k - 1 layers after
each reuse them with their own queries (CLA2 for k = 2: layer 1 reuses layer
0's K and V, layer 2 computes its own). Reusing layers hold no K or V
projection. This shares activations, not weights; compare kv_share.py.

Full size (3 layers, width 128, 8 heads, 256 tokens, 15 seeds, 11,715 steps):
  python -m jax_attnshare.main --config=configs/cla.py --workdir=runs/cla
2-core CPU size (5 seeds, width 64, 2 heads, 128 tokens, 400 steps):
  python -m jax_attnshare.main --config=configs/cla.py:cpu
  python -m jax_attnshare.main --config=configs/cla.py:cpu,every=3
  python -m jax_attnshare.main --config=configs/cla.py:cpu,kv_heads=1
Args: `every=k` (default 2), `kv_heads=G` (CLA on top of GQA/MQA), `cpu`,
`tiny`, `seeds=N`, `regime=blog` or `regime=blog32`.
"""

from jax_attnshare import configs


def get_config(arg=None):
  a = configs.parse_arg(arg, **configs.SIZE_ARGS, every=2,
                        kv_heads=0)
  c = configs.classifier_config('none', a)
  c.sharing.update(kv_activation_every=a.every, kv_heads=a.kv_heads)
  c.name = configs.variant_name(f'cla{a.every}', a, kv_heads=0)
  return c
