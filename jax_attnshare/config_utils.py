"""Config helpers: `file.py:arg` parsing and the IMDB classifier config.

Configs under configs/ are loaded by path, so what they share lives here.
"""

from __future__ import annotations

import importlib.util

import ml_collections

# Label of each blog condition -> the components it shares across all layers.
BLOG_CONDITIONS = {
    'none': 'none', 'k': 'key', 'q': 'query', 'v': 'value',
    'kv': 'key,value', 'kq': 'key,query', 'qv': 'query,value',
    'kqv': 'key,query,value', 'albert': 'query,key,value,output,ffn',
}


def load_config(path_and_arg: str) -> ml_collections.ConfigDict:
  """What --config=path:arg does: import the file and call get_config(arg)."""
  path, _, arg = path_and_arg.partition(':')
  spec = importlib.util.spec_from_file_location('config_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style: 'cpu,seeds=3' -> {cpu: True, seeds: 3, ...defaults}.

  A bare name sets a boolean default to True; `k=v` is converted to the type
  of the default. Unknown names raise, so a typo never passes silently.
  """
  result = dict(defaults)
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    name, _, value = item.partition('=')
    if name not in defaults:
      raise ValueError(f'config arg {name!r} is unknown; known: '
                       f'{sorted(defaults)}.')
    kind = type(defaults[name])
    if not value:
      if kind is not bool:
        raise ValueError(f'config arg {name!r} needs a value ({name}=...).')
      result[name] = True
    elif kind is bool:
      result[name] = value.lower() in ('1', 'true', 'yes')
    else:
      result[name] = kind(value)
  return ml_collections.ConfigDict(result)


def classifier_config(condition: str, arg: str | None) -> ml_collections.ConfigDict:
  """The blog's IMDB classifier with `condition` shared across all layers.

  Args:
    condition: a key of BLOG_CONDITIONS.
    arg: 'cpu' for the 2-core-CPU size, 'tiny' for tests, 'seeds=N' to change
      the number of seeds.
  """
  a = parse_arg(arg, cpu=False, tiny=False, seeds=0)
  c = ml_collections.ConfigDict()
  c.name = condition
  # Replica i is trained from seed + i.
  c.seed = 0
  c.num_seeds = 15
  # Examples per replica per step.
  c.batch_size = 32
  # 15 epochs of the 25,000 training reviews, as in the blog's figures.
  c.num_train_steps = 11_715
  c.log_every_steps = 100
  c.eval_every_steps = 781
  c.ckpt_every_steps = 781
  c.max_to_keep = 2
  c.eval_batch_size = 250
  # Attention statistics are computed on the first stats_examples test
  # reviews, stats_batch_size at a time (maps are [S, N, B, H, T, T]).
  c.stats_examples = 128
  c.stats_batch_size = 16
  # Index (in the test split) of the review whose maps are drawn as heatmaps.
  c.heatmap_example = 0
  # Stop the whole run on a non-finite loss instead of flagging the replica.
  c.halt_on_nonfinite = False

  c.model = ml_collections.ConfigDict(dict(
      width=128, num_layers=3, num_heads=8, ffn_multiplier=4, num_classes=2,
      dropout_rate=0.1, pooling='mean', padding_mask=True, qkv_bias=False,
      activation='relu', layer_norm_eps=1e-5, embedding_norm=False))
  c.sharing = ml_collections.ConfigDict(dict(
      components=BLOG_CONDITIONS[condition], group_size=0, groups=''))
  c.data = ml_collections.ConfigDict(dict(
      dataset='imdb_reviews', data_dir='', vocab_size=16_000, max_length=256,
      train_examples=0, test_examples=0, data_seed=0,
      # 'shared': one batch stream for all replicas (paired comparisons);
      # 'per_seed': replica i shuffles with its own seed.
      seed_mode='shared', tokenizer_train_examples=25_000,
      allow_download=True))
  c.opt = ml_collections.ConfigDict(dict(
      name='adamw', learning_rate=3e-4, warmup_steps=313,
      schedule='constant', weight_decay=0.01, clip_norm=1.0, b1=0.9,
      b2=0.999))

  if a.cpu:
    c.num_seeds = 5
    c.model.update(width=64, num_heads=4)
    c.data.update(vocab_size=4000, max_length=128, test_examples=5000,
                  tokenizer_train_examples=5000)
    c.num_train_steps = 600
    c.eval_every_steps = c.ckpt_every_steps = 200
    c.log_every_steps = 50
    c.stats_examples = 64
    c.opt.update(learning_rate=1e-3, warmup_steps=60, schedule='cosine')
  if a.tiny:
    c.num_seeds = 2
    c.batch_size = 4
    c.model.update(width=16, num_layers=2, num_heads=2)
    c.data.update(vocab_size=64, max_length=16, train_examples=0,
                  test_examples=0, tokenizer_train_examples=1000)
    c.num_train_steps = 6
    c.log_every_steps = c.eval_every_steps = c.ckpt_every_steps = 3
    c.eval_batch_size = 8
    c.stats_examples = 8
    c.stats_batch_size = 4
    c.opt.update(learning_rate=1e-3, warmup_steps=2)
  if a.seeds:
    c.num_seeds = a.seeds
  return c
