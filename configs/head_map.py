"""IMDB sentiment with heads that reuse another head's projection weights.

Head h of each projection named in `share` uses the parameters of head
h - h % 2 (heads 1, 3, ... borrow from heads 0, 2, ...), the within-layer
form of the head maps post-hoc DirectShare produces. With the default
`share=qk` the paired heads have identical attention maps but their own
values and outputs. Any map can be set directly, e.g.
--config.sharing.head_map='key:0,0,2,3,4,4,6,6;value:0,1,2,3,4,5,6,6'.

Full size (3 layers, width 128, 8 heads, 256 tokens, 15 seeds, 11,715 steps):
  python -m jax_attnshare.main --config=configs/head_map.py --workdir=runs/hm
2-core CPU size (5 seeds, width 64, 2 heads, 128 tokens, 400 steps):
  python -m jax_attnshare.main --config=configs/head_map.py:cpu
  python -m jax_attnshare.main --config=configs/head_map.py:cpu,share=kv
Args: `share=` letters of the projections that take the map (q, k, v, o;
default qk), `cpu`, `tiny`, `seeds=N`, `regime=blog` or `regime=blog32`.
"""

from jax_attnshare import configs


def get_config(arg=None):
  a = configs.parse_arg(arg, **configs.SIZE_ARGS, share='qk')
  c = configs.classifier_config('none', a)
  c.sharing.head_map = configs.paired_head_map(a.share,
                                               c.model.num_heads)
  c.name = f'head_map_{a.share}'
  return c
