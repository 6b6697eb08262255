"""IMDB sentiment with grouped-query attention: G key/value heads per layer.

Query head h uses key/value head h // (H / G) (GQA, arXiv 2305.13245), so
the key and value projections store G heads instead of H. `share=kv` also
shares those K/V heads across all layers (sharing across layers and heads).

Full size (3 layers, width 128, 8 heads, 256 tokens, 15 seeds, 11,715 steps):
  python -m jax_attnshare.main --config=configs/gqa.py --workdir=runs/gqa
2-core CPU size (5 seeds, width 64, 4 heads, 128 tokens, 400 steps; `groups=4`
is the MHA reference at that size):
  python -m jax_attnshare.main --config=configs/gqa.py:cpu
  python -m jax_attnshare.main --config=configs/gqa.py:cpu,groups=4
  python -m jax_attnshare.main --config=configs/gqa.py:cpu,groups=2,share=kv
Args: `groups=G` (default 2; must divide the heads; 1 is MQA, see mqa.py),
`share=` components shared across layers (e.g. `kv`), `cpu`, `tiny`,
`seeds=N`, `regime=blog` or `regime=blog32`. Costs:
experiments/sharing_options.md.
"""

from jax_attnshare import configs


def get_config(arg=None):
  a = configs.parse_arg(arg, **configs.SIZE_ARGS, groups=2,
                        share='none')
  c = configs.classifier_config(a.share, a)
  if a.cpu or a.tiny:  # Four heads: GQA differs from both MHA and MQA.
    c.model.num_heads = 4
  c.sharing.kv_heads = a.groups
  c.name = configs.variant_name(f'gqa{a.groups}', a, share='none')
  return c
