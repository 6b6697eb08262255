"""The command line and the configs under configs/."""

import ast
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from jax_attnshare import configs
from jax_attnshare import cost
from jax_attnshare import data
from jax_attnshare import train
from jax_attnshare.posthoc import study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))
SIZES = ('', 'cpu', 'tiny')
SIZE_ARG_NAMES = ('cpu', 'tiny', 'seeds', 'regime')


def _documented(path: str) -> tuple[set[str], set[str]]:
  """(arg names in the docstring's Args:, variants its commands use).

  A variant is a command's arg without its size args, e.g. 'kv_heads=2'
  from 'configs/lm.py:cpu,kv_heads=2'.
  """
  with open(path) as f:
    doc = ast.get_docstring(ast.parse(f.read()))
  names = set(re.findall(r'(?:^|,)\s*`(\w+)',
                         doc.partition('Args:')[2].strip()))
  variants = set()
  name = os.path.basename(path)
  for arg in re.findall(rf'configs/{re.escape(name)}:([^\s`\'"\]$]+)(?!\S)', doc):
    items = [i for i in arg.split(',')
             if i.partition('=')[0] not in SIZE_ARG_NAMES]
    variants.add(','.join(items))
  return names, variants


def _cases():
  for path in CONFIGS:
    names, variants = _documented(path)
    for variant in sorted(variants | {''}):
      for size in SIZES:
        yield path, ','.join(a for a in (size, variant) if a)
    if 'regime' in names:
      for size in SIZES:
        for regime in configs.REGIMES[1:]:
          yield path, ','.join(a for a in (size, f'regime={regime}') if a)
    if 'seeds' in names:
      yield path, 'seeds=3'


@pytest.mark.parametrize(
    'path,arg', list(_cases()),
    ids=lambda x: os.path.basename(x) if x.endswith('.py') else x or 'full')
def test_every_documented_config_passes_the_checks_main_runs(path, arg):
  """Each size and variant passes; a variant too big for the tiny model
  (e.g. SA layers 2-3 of a 3-layer LM) is refused naming the field."""
  config = configs.load_config(f'{path}:{arg}' if arg else path)
  if 'model' not in config:  # A post-hoc study config.
    study.check_config(config)
    return
  size = next((s for s in ('cpu', 'tiny') if s in arg.split(',')), '')
  try:
    model_config = train.check_config(config)
  except ValueError as e:
    assert size == 'tiny' and str(e).startswith('config.'), e
    return
  assert cost.param_counts(model_config)['total'] > 0
  expected_seeds = 3 if 'seeds=3' in arg else {'': 15, 'cpu': 5,
                                                'tiny': 2}[size]
  assert config.num_seeds == expected_seeds


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_every_documented_arg_has_a_command_in_the_docstring(path):
  names, variants = _documented(path)
  used = {item.partition('=')[0] for v in variants for item in v.split(',')}
  undocumented = names - set(SIZE_ARG_NAMES) - used
  assert not undocumented, (
      f'{path} documents args {sorted(undocumented)} but shows no command '
      'using them, so the config test does not cover them.')


def test_full_size_evaluates_fifteen_times_over_the_blog_schedule():
  config = configs.load_config(
      os.path.join(ROOT, 'configs', 'kv_share.py'))
  assert config.num_train_steps == 11_715
  assert len(train.evaluation_steps(config)) == 15


def test_unknown_config_arg_raises():
  with pytest.raises(ValueError, match='unknown'):
    configs.load_config(CONFIGS[0] + ':gpu')


def _main(tmp_path, *args):
  return subprocess.run(
      [sys.executable, '-m', 'jax_attnshare.main',
       f'--workdir={tmp_path / "run"}', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_missing_data_stops_at_once_with_what_to_do(tmp_path):
  empty = tmp_path / 'no_data'
  empty.mkdir()
  result = _main(tmp_path, '--config=configs/kv_share.py:tiny',
                 f'--config.data.data_dir={empty}',
                 '--config.data.allow_download=False')
  assert result.returncode == 2
  assert str(empty) in result.stderr
  assert 'TFDS_DATA_DIR' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()
  assert not os.listdir(empty)


@pytest.mark.parametrize('override,expected', [
    ('--config.num_seed=3', '--config.num_seed: no such config field; did '
     'you mean --config.num_seeds?'),
    ('--config.model.widht=8', 'did you mean --config.model.width?'),
    ('--config.num_seeds=x', "--config.num_seeds=x: invalid literal"),
    ('--config.batch_size=0', 'config.batch_size must be >= 1, got 0.'),
    ('--config.sharing.components=kx', 'config.sharing.components'),
])
def test_bad_input_is_one_line_and_exit_status_two(tmp_path, override,
                                                   expected):
  result = _main(tmp_path, '--config=configs/kv_share.py:tiny', override)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('error: ')]
  assert len(errors) == 1 and expected in errors[0], result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


def test_help_shows_the_config_args_and_overrides(tmp_path):
  result = _main(tmp_path, '--help')
  for text in ('cpu', 'tiny', 'seeds=N', '--config.FIELD=VALUE',
               'variant=', 'configs.py'):
    assert text in result.stdout


@pytest.mark.parametrize('size', SIZES)
def test_regimes_resolve_to_their_fields(size):
  path = os.path.join(ROOT, 'configs', 'k_share.py')
  clean = configs.load_config(f'{path}:{size}')
  blog = configs.load_config(f'{path}:{size},regime=blog')
  blog32 = configs.load_config(f'{path}:{size},regime=blog32')
  assert (clean.regime, blog.regime, blog32.regime) == (
      'clean', 'blog', 'blog32')
  assert clean.model.padding_mask and clean.model.pooling_mask
  assert clean.model.init == 'flax'
  assert clean.data.tokenizer == 'sentencepiece'
  assert clean.data.seed_mode == 'shared'
  assert clean.data.bucket_lengths == ''
  for b in (blog, blog32):
    assert not b.model.padding_mask and not b.model.pooling_mask
    assert b.model.init == 'pytorch' and b.model.dropout_rate == 0
    assert b.model.pooling == 'mean'
    assert (b.opt.name, b.opt.schedule, b.opt.weight_decay,
            b.opt.clip_norm) == ('adam', 'constant', 0.0, 1.0)
    assert b.data.tokenizer == 'words'
    assert b.data.seed_mode == 'per_seed'
  # The blog regime reads up to 512 words in length buckets (the last 512);
  # blog32 its heatmap's 32 words, every batch padded to them.
  assert blog32.data.max_length == (16 if size == 'tiny' else 32)
  assert data.bucket_lengths(blog32.data) == (blog32.data.max_length,)
  assert blog.data.max_length == 512
  buckets = data.bucket_lengths(blog.data)
  assert len(buckets) > 1 and buckets[-1] == 512
  # A call cannot cross a bucket change: longer calls would scan idle steps.
  assert blog.steps_per_call <= blog.data.bucket_run_steps
  assert clean.batch_size == blog.batch_size == blog32.batch_size
  if not size:
    assert buckets == (80, 128, 160, 192, 240, 304, 384, 512)
    for b in (blog, blog32):
      assert (b.model.num_layers, b.model.width,
              b.model.num_heads) == (3, 128, 8)
      assert b.num_train_steps == 11_715  # 15 epochs of 25,000 at batch 32.
      assert b.opt.learning_rate == 1e-4
      assert (b.data.vocab_size, b.batch_size) == (50_000, 32)
      # Warm-up over 10,000 examples, whatever the batch size.
      assert b.opt.warmup_steps == 312
      b.batch_size = 4  # The base code's, as --config.batch_size=4 sets it.
      assert b.opt.warmup_steps == 2500
      assert json.loads(b.to_json())['opt']['warmup_steps'] == 2500
  # The regime changes nothing else: same sharing, sizes, seeds and (but at
  # `:cpu`, where a step's cost depends on the length) loop.
  same = ('num_seeds', 'sharing') + (
      () if size == 'cpu' else ('num_train_steps', 'eval_every_steps'))
  for b in (blog, blog32):
    assert all(clean[k] == b[k] for k in same)
    assert clean.model.width == b.model.width


def test_unknown_regime_is_refused_naming_the_choices():
  with pytest.raises(ValueError, match=r"regime must be one of \('clean', "
                     r"'blog', 'blog32'\), got 'pytorch'"):
    configs.load_config(os.path.join(ROOT, 'configs', 'kv_share.py') +
                        ':regime=pytorch')
