"""IMDB sentiment, ALBERT's cross-layer sharing ablation (arXiv 1909.11942).

The four rows of ALBERT's Table 4, each with its factorized embedding (tokens
embedded in E dimensions, projected to the width D):
  variant=all        every block parameter shared across layers (Q, K, V,
                     O, FFN and both LayerNorms);
  variant=attention  Q, K, V, O shared; FFN and norms per layer;
  variant=ffn        FFN shared; attention and norms per layer;
  variant=none       nothing shared (only the factorized embedding).
configs/albert.py is the blog's condition instead (norms per layer, E = D).

Full size (3 layers, width 128, 8 heads, 256 tokens, 15 seeds, 11,715 steps):
  python -m jax_attnshare.main --config=configs/albert_grid.py:variant=all
2-core CPU size (5 seeds, width 64, 2 heads, 128 tokens, 400 steps), the grid:
  python -m jax_attnshare.main --config=configs/albert_grid.py:cpu,variant=all
  python -m jax_attnshare.main --config=configs/albert_grid.py:cpu,variant=attention
  python -m jax_attnshare.main --config=configs/albert_grid.py:cpu,variant=ffn
  python -m jax_attnshare.main --config=configs/albert_grid.py:cpu,variant=none
Not factorized (E = D):
  python -m jax_attnshare.main --config=configs/albert_grid.py:cpu,embedding=0
Args: `variant=` (default all), `embedding=E` (default 32; 0 = E = D, not
factorized), `cpu`, `tiny`, `seeds=N`, `regime=blog` or `regime=blog32`.
"""

from jax_attnshare import configs


def get_config(arg=None):
  a = configs.parse_arg(arg, **configs.SIZE_ARGS, variant='all',
                        embedding=32)
  if a.variant not in configs.ALBERT_VARIANTS:
    raise ValueError(f'config arg variant={a.variant!r} must be one of '
                     f'{sorted(configs.ALBERT_VARIANTS)}.')
  c = configs.classifier_config(
      configs.ALBERT_VARIANTS[a.variant], a)
  c.model.embedding_width = a.embedding
  c.name = f'albert_{a.variant}_e{a.embedding}'
  return c
