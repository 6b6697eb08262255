"""Parameters, attention FLOPs and K/V cache of every config, as markdown.

  python experiments/cost_table.py [--size=] [config.py:arg ...]

One row per training config under configs/ at its default (full) size, plus the
variants in VARIANTS (the ALBERT grid, the LM's sharing options). Pass
`--size=cpu` for the :cpu sizes, or config specs to tabulate those instead.
Counts are closed form (jax_attnshare.cost), checked against the parameter
trees by the tests; nothing is built or trained. FLOPs are forward matmul
FLOPs of all attention sublayers per token at the config's max_length; the
K/V cache is elements per token over all layers, for the causal LM only.
"""

import glob
import os

from absl import app
from absl import flags

from jax_attnshare import configs
from jax_attnshare import cost
from jax_attnshare import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Variants beyond each config's default arg.
VARIANTS = (
    'albert_grid.py:variant=attention', 'albert_grid.py:variant=ffn',
    'albert_grid.py:variant=none', 'gqa.py:share=kv', 'mqa.py:share=kv',
    'shared_attention.py:layers=1-2', 'lm.py:kv_heads=2', 'lm.py:kv_heads=1',
    'lm.py:sa=3-5', 'lm.py:cla=2', 'lm.py:cla=2,kv_heads=1',
    'lm.py:share=kv')

_SIZE = flags.DEFINE_enum('size', '', ['', 'cpu'],
                          'Config size: full (default) or :cpu.')


def default_specs() -> list[str]:
  names = sorted(os.path.basename(p)
                 for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))
  return names + list(VARIANTS)


def row(spec: str, size: str) -> dict | None:
  """The costs of one config; None for configs that train no model."""
  name, _, arg = spec.partition(':')
  arg = ','.join(a for a in (size, arg) if a)
  config = configs.load_config(
      os.path.join(ROOT, 'configs', name) + (f':{arg}' if arg else ''))
  if 'model' not in config:  # E.g. the post-hoc configs.
    return None
  cfg = model_lib.model_config(config, config.data.vocab_size, 0)
  return {'config': f'{name}:{arg}' if arg else name, 'name': config.name,
          'sharing': cfg.sharing.to_string(), 'task': config.task,
          **cost.param_counts(cfg), **cost.summary(cfg)}


def table(rows: list[dict]) -> str:
  lines = ['| config | task | sharing | params | attention params | shared '
           'params | attention FLOPs/token | K/V cache/token |',
           '|---|---|---|---:|---:|---:|---:|---:|']
  for r in rows:
    kv = '—' if r['kv_cache_per_token'] is None else (
        f'{r["kv_cache_per_token"]:,}')
    lines.append(
        f'| `{r["config"]}` | {r["task"]} | {r["sharing"]} | {r["total"]:,} '
        f'| {r["attention"]:,} | {r["shared"]:,} | '
        f'{r["attention_flops_per_token"]:,} (T={r["length"]}) | {kv} |')
  return '\n'.join(lines)


def main(argv):
  specs = argv[1:] or default_specs()
  rows = [row(s, _SIZE.value) for s in specs]
  print(table([r for r in rows if r is not None]))


if __name__ == '__main__':
  app.run(main)
