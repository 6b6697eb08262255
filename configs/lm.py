"""Causal LM on the IMDB review texts, with any of the sharing options.

The same blocks with a causal mask; each review is one window of max_length
tokens (truncated, padding left out of the loss). Trained on the train
split's texts, evaluated by perplexity (exp of the mean next-token NLL) and
token accuracy on the test split. The decoder setting is where SA, CLA and
GQA were designed: their K/V cache per token is in summary.json 'cost'.

Full size (6 layers, width 128, 8 heads, 256 tokens, 15 seeds, 11,715 steps):
  python -m jax_attnshare.main --config=configs/lm.py --workdir=runs/lm
2-core CPU size (5 seeds, 4 layers, width 64, 4 heads, 64-token windows,
vocabulary 2,000, 400 steps):
  python -m jax_attnshare.main --config=configs/lm.py:cpu
  python -m jax_attnshare.main --config=configs/lm.py:cpu,kv_heads=2   # GQA
  python -m jax_attnshare.main --config=configs/lm.py:cpu,kv_heads=1   # MQA
  python -m jax_attnshare.main --config=configs/lm.py:cpu,sa=2-3       # SA
  python -m jax_attnshare.main --config=configs/lm.py:cpu,cla=2        # CLA2
  python -m jax_attnshare.main --config=configs/lm.py:cpu,cla=2,kv_heads=1
  python -m jax_attnshare.main --config=configs/lm.py:cpu,share=kv
Args: `kv_heads=G`, `sa=` SA layers as a range, `cla=k`, `share=`
components shared across layers (e.g. kv), `cpu`, `tiny`, `seeds=N`,
`regime=blog` or `regime=blog32`.
"""

from jax_attnshare import configs

OPTIONS = dict(share='none', kv_heads=0, sa='', cla=0)


def get_config(arg=None):
  a = configs.parse_arg(arg, **configs.SIZE_ARGS, **OPTIONS)
  c = configs.lm_config(a)
  c.sharing.update(components=a.share, kv_heads=a.kv_heads,
                   attention_map_layers=a.sa, kv_activation_every=a.cla)
  c.name = configs.variant_name('lm', a, **OPTIONS)
  return c
