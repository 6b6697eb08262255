"""The command line and the configs under configs/."""

import ast
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jax_attnshare import configs
from jax_attnshare import cost
from jax_attnshare import data
from jax_attnshare import main as main_lib
from jax_attnshare import train
from jax_attnshare import workdir as workdir_lib
from jax_attnshare.posthoc import study
import tiny_tfds
from train_test import numbers

# Tiny models: compile time dominates, so let XLA skip most optimizations
# (the subprocesses get it through JAX_DISABLE_MOST_OPTIMIZATIONS), here as
# in the runs that a test compares with.
jax.config.update('jax_disable_most_optimizations', True)

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
    ('--config.opt.learning_rate=-1', 'config.opt.learning_rate must be a '
     'finite number > 0, got -1.0.'),
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


def _env(**extra) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu',
              JAX_DISABLE_MOST_OPTIMIZATIONS='1', **extra)


def _errors(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('error: ')]


@pytest.mark.slow
@pytest.mark.parametrize('source, expected', [
    ('def get_config(arg=None)\n  return 1\n',
     "the file failed to load: SyntaxError: expected ':'"),
    ('def get_config(arg=None):\n  raise RuntimeError("no such size")\n',
     'the file failed to load: RuntimeError: no such size'),
])
def test_a_config_file_that_fails_is_one_line(tmp_path, source, expected):
  path = tmp_path / 'broken.py'
  path.write_text(source)
  result = _main(tmp_path, f'--config={path}')
  assert result.returncode == 2, result.stderr
  [error] = _errors(result.stderr)
  assert error.startswith(f'error: --config={path}: ') and expected in error
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_a_damaged_dataset_file_is_one_line_naming_it(tmp_path):
  data_dir = tiny_tfds.write_tiny_imdb(str(tmp_path / 'tfds'))
  [path] = glob.glob(os.path.join(data_dir, '**', '*train.tfrecord*'),
                     recursive=True)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 50)
  result = subprocess.run(
      [sys.executable, '-m', 'jax_attnshare.main',
       '--config=configs/kv_share.py:tiny', f'--workdir={tmp_path / "run"}',
       f'--config.data.data_dir={data_dir}'],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  [error] = _errors(result.stderr)
  assert error.startswith(f'error: {path} cannot be read (')
  assert 'prepare it again' in error and 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


# Long enough that a signal sent once the step has compiled lands in
# training; evaluations (and windows) end at steps 20 and 40.
_STOPPED_RUN = ('--config=configs/kv_share.py:tiny',
                '--config.num_train_steps=40', '--config.log_every_steps=20',
                '--config.eval_every_steps=20', '--config.ckpt_every_steps=20')


def _start(workdir, data_dir, log_path) -> subprocess.Popen:
  with open(log_path, 'w') as log:
    return subprocess.Popen(
        [sys.executable, '-m', 'jax_attnshare.main', f'--workdir={workdir}',
         *_STOPPED_RUN, f'--config.data.data_dir={data_dir}'],
        cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _signal_once_compiled(process, log_path, signum) -> str:
  """Sends `signum` once the log says the step compiled; returns the log."""
  started = time.time()
  while 'Compiled in' not in open(log_path).read():
    assert process.poll() is None, open(log_path).read()[-3000:]
    assert time.time() - started < 600, 'the step never compiled'
    time.sleep(0.05)
  process.send_signal(signum)
  process.wait(timeout=600)
  return open(log_path).read()


@pytest.mark.slow
def test_ctrl_c_and_sigterm_stop_in_one_line_and_the_run_resumes_exactly(
    tmp_path):
  """Ctrl-C stops at once; SIGTERM (after a kill left the lock of another
  host's run of this experiment) saves a checkpoint at the next step
  boundary, inside a logging window; the resumed run equals one that was
  never stopped, bit for bit."""
  data_dir = tiny_tfds.write_tiny_imdb(str(tmp_path / 'tfds'))
  workdir = tmp_path / 'run'
  log = str(tmp_path / 'log')

  process = _start(workdir, data_dir, log)
  output = _signal_once_compiled(process, log, signal.SIGINT)
  assert process.returncode == main_lib.INTERRUPTED_STATUS, output[-3000:]
  assert _errors(output) == [
      f'error: interrupted; rerun the same command to resume {workdir} from '
      'its last checkpoint.'], output[-3000:]
  assert 'Traceback' not in output
  assert not (workdir / workdir_lib.LOCK_FILE).exists()

  # What a run killed on another host leaves: its lock, silent since.
  config_hash = json.loads((workdir / 'config.json').read_text())[
      'config_hash']
  (workdir / workdir_lib.LOCK_FILE).write_text(json.dumps({
      'pid': 1, 'host': 'elsewhere', 'started': 'then', 'job': '',
      'config_hash': config_hash}))
  os.utime(workdir / workdir_lib.LOCK_FILE, (0, 0))
  process = _start(workdir, data_dir, log)
  output = _signal_once_compiled(process, log, signal.SIGTERM)
  assert process.returncode == main_lib.PREEMPTED_STATUS, output[-3000:]
  assert 'Taking over' in output and 'pid 1 on host elsewhere' in output
  last = output.strip().splitlines()[-1]
  step = int(re.fullmatch(
      rf'stopped by SIGTERM at step (\d+) of 40, which is saved in '
      rf'{workdir}/checkpoints; rerun the same command to resume from it\.',
      last).group(1))
  assert 'Traceback' not in output and not _errors(output)
  assert os.path.exists(workdir / 'checkpoints' / str(step) /
                        'sha256sums.json')
  assert not (workdir / workdir_lib.LOCK_FILE).exists()

  process = _start(workdir, data_dir, log)
  assert process.wait(timeout=600) == 0, open(log).read()[-3000:]
  assert f'from step {step}.' in open(log).read()
  resumed = json.loads((workdir / 'summary.json').read_text())

  config = configs.load_config(os.path.join(ROOT, _STOPPED_RUN[0].partition(
      '=')[2]))
  config.unlock()
  config.update_from_flattened_dict({
      arg.partition('=')[0].removeprefix('--config.'): int(
          arg.partition('=')[2]) for arg in _STOPPED_RUN[1:]})
  config.data.data_dir = data_dir
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  print(f'stopped at step {step}; resumed equals straight:',
        resumed['history'] == straight['history'])
  assert resumed['finished'] and [h['step'] for h in resumed['history']] == [
      20, 40]
  # Equal to float32 rounding, not bit for bit: the steps after the stop
  # run in calls of other lengths (one-step scans up to the cut window's
  # end), whose compiled programs may round differently.
  for key in ('history', 'per_seed'):
    np.testing.assert_allclose(numbers(resumed[key]), numbers(straight[key]),
                               rtol=1e-5, atol=1e-6, err_msg=key)


_FULL_DISK_SCRIPT = """
import errno, os, sys
from jax_attnshare import main, workdir
def full(workdir_, value):
  raise OSError(errno.ENOSPC, 'No space left on device',
                os.path.join(workdir_, 'summary.json.tmp'))
workdir.write_summary = full
sys.argv = ['main', *sys.argv[1:]]
main.run()
"""


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_stays_resumable(tmp_path):
  """The disk fills up as the first summary is written (simulated: an
  ENOSPC from that write); the rerun goes on from the checkpoint."""
  data_dir = tiny_tfds.write_tiny_imdb(str(tmp_path / 'tfds'))
  workdir = tmp_path / 'run'
  args = [f'--workdir={workdir}', '--config=configs/kv_share.py:tiny',
          f'--config.data.data_dir={data_dir}']
  result = subprocess.run(
      [sys.executable, '-c', _FULL_DISK_SCRIPT, *args], cwd=ROOT, env=_env(),
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  [error] = _errors(result.stderr)
  assert re.fullmatch(
      rf'error: no space left on the device of {workdir}/summary.json.tmp '
      r'\([\d.]+ \w+ free\): free at least [\d.]+ \w+ \(one checkpoint\) '
      r'and rerun the same command to resume from the last checkpoint\.',
      error), error
  assert 'Traceback' not in result.stderr
  assert not (workdir / workdir_lib.LOCK_FILE).exists()
  assert not (workdir / 'summary.json.tmp').exists()
  result = subprocess.run(
      [sys.executable, '-m', 'jax_attnshare.main', *args], cwd=ROOT,
      env=_env(), capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'from step 3.' in result.stderr
  assert json.loads((workdir / 'summary.json').read_text())['finished']


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
