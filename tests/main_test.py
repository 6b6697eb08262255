"""The command line and the configs under configs/."""

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

from jax_attnshare import configs
from jax_attnshare import cost
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
        yield path, ','.join(a for a in (size, 'regime=blog') if a)
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
  clean = configs.load_config(
      os.path.join(ROOT, 'configs', f'k_share.py:{size}'))
  blog = configs.load_config(
      os.path.join(ROOT, 'configs', f'k_share.py:{size},regime=blog'))
  assert (clean.regime, blog.regime) == ('clean', 'blog')
  assert clean.model.padding_mask and clean.model.pooling_mask
  assert clean.model.init == 'flax'
  assert clean.data.tokenizer == 'sentencepiece'
  assert clean.data.seed_mode == 'shared'
  assert not blog.model.padding_mask and not blog.model.pooling_mask
  assert blog.model.init == 'pytorch' and blog.model.dropout_rate == 0
  assert blog.model.pooling == 'mean'
  assert (blog.opt.name, blog.opt.schedule, blog.opt.weight_decay,
          blog.opt.clip_norm) == ('adam', 'constant', 0.0, 1.0)
  assert blog.data.tokenizer == 'words'
  assert blog.data.seed_mode == 'per_seed'
  if not size:
    assert (blog.model.num_layers, blog.model.width,
            blog.model.num_heads) == (3, 128, 8)
    assert blog.num_train_steps == 11_715  # 15 epochs of 25,000 at batch 32.
    assert blog.opt.learning_rate == 1e-4
    # Warm-up over 10,000 examples.
    assert blog.opt.warmup_steps * blog.batch_size == pytest.approx(
        10_000, abs=blog.batch_size)
    assert (blog.data.vocab_size, blog.data.max_length) == (50_000, 32)
  # The regime changes nothing else: same sharing, sizes, seeds and (but at
  # `:cpu`, where a 32-token step is cheaper) loop.
  same = ('num_seeds', 'batch_size', 'sharing') + (
      () if size == 'cpu' else ('num_train_steps', 'eval_every_steps'))
  assert all(clean[k] == blog[k] for k in same)
  assert clean.model.width == blog.model.width


def test_unknown_regime_is_refused_naming_the_choices():
  with pytest.raises(ValueError, match=r"regime must be one of \('clean', "
                     r"'blog'\), got 'pytorch'"):
    configs.load_config(os.path.join(ROOT, 'configs', 'kv_share.py') +
                        ':regime=pytorch')


@pytest.mark.parametrize('url', ['gs://bucket/run', 's3://bucket/run',
                                 'file:///tmp/run'])
def test_a_url_workdir_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, url):
  """os would take gs://bucket/run for the relative path gs:/bucket/run."""
  monkeypatch.chdir(tmp_path)

  def read_texts(*args):
    raise AssertionError(f'data read for {args}')
  with pytest.raises(train.ConfigError) as error:
    train.train_and_evaluate(
        configs.load_config(os.path.join(ROOT, 'configs', 'kv_share.py:tiny')),
        url, read_texts=read_texts)
  assert str(error.value) == (
      f'--workdir={url} is a URL; the workdir must be a path on a file system '
      '(its lock and atomic renames need one): mount the bucket or share and '
      'pass the mounted path, e.g. --workdir=/mnt/runs/kv (docs/scaling.md, '
      '"Cloud storage", says which mounts are safe).')
  assert not os.listdir(tmp_path)
