"""IMDB sentiment with shared attention maps (SA, arXiv 2407.12866).

The listed layers hold no Q or K and compute no Q·Kᵀ: each reuses the softmax
map of the most recent earlier layer that computed one, with its own V and
output projection (as in metacarbon/shareAtt: layers a..b reuse layer a-1).
Gradients flow through the reused map. This shares activations, not weights;
compare kv_share.py (weights) and cla.py (K/V activations).

Full size (3 layers, width 128, 8 heads, 256 tokens, 15 seeds, 11,715 steps):
  python -m jax_attnshare.main --config=configs/shared_attention.py
2-core CPU size (5 seeds, width 64, 2 heads, 128 tokens, 400 steps):
  python -m jax_attnshare.main --config=configs/shared_attention.py:cpu
  python -m jax_attnshare.main --config=configs/shared_attention.py:cpu,layers=1-2
Args: `layers=` the SA layers as a range (default: the last layer, e.g. 2,
which reuses layer 1's map; `layers=1-2` makes layer 0's map serve all
three), `cpu`, `tiny`, `seeds=N`, `regime=blog` or `regime=blog32`. A list
goes in --config.sharing.attention_map_layers=1,3.
"""

from jax_attnshare import configs


def get_config(arg=None):
  a = configs.parse_arg(arg, **configs.SIZE_ARGS, layers='')
  c = configs.classifier_config('none', a)
  c.sharing.attention_map_layers = a.layers or str(c.model.num_layers - 1)
  c.name = f'shared_attention_{c.sharing.attention_map_layers}'
  return c
