"""The experiment scripts: every command they would run passes main's checks."""

import json
import os
import re
import subprocess
import sys

import pytest

from jax_attnshare import configs
from jax_attnshare import data_cache
from jax_attnshare import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(*args, env=None):
  result = subprocess.run(
      ['bash', 'experiments/blog.sh', *args], cwd=ROOT, capture_output=True,
      text=True, check=True, env={**os.environ, 'DRY_RUN': '1',
                                  'PYTHON': sys.executable, **(env or {})})
  return result.stdout.splitlines()


def _main_commands(lines):
  return [line for line in lines if 'jax_attnshare.main' in line]


def _config(command):
  """The config a command's --config and --config.data overrides give."""
  config = configs.load_config(
      os.path.join(ROOT, re.search(r'--config=(\S+)', command)[1]))
  for field, value in re.findall(r'--config\.data\.(\w+)=(\S+)', command):
    config.data[field] = value
  return config


@pytest.mark.parametrize('arg', ['tiny', 'tiny,regime=blog',
                                 'tiny,regime=blog32'])
def test_blog_grid_commands_pass_the_checks_per_replica_order(arg, tmp_path):
  commands = _main_commands(_dry_run('all', arg, str(tmp_path)))
  # Experiments 1 and 2 share none and kqv: 10 commands, 8 workdirs.
  assert len(commands) == 10
  assert len({re.search(r'--workdir=(\S+)', c)[1] for c in commands}) == 8
  for command in commands:
    assert '--config.data.seed_mode=per_seed' in command
    train.check_config(_config(command))


@pytest.mark.slow
@pytest.mark.parametrize('arg', ['tiny', 'tiny,regime=blog'])
def test_blog_grid_prepares_the_data_every_condition_reads_once(arg,
                                                                 tmp_path):
  lines = _dry_run('all', arg, str(tmp_path))
  prepares = [i for i, line in enumerate(lines)
              if line.startswith(f'{sys.executable} -m jax_attnshare.prepare ')]
  assert len(prepares) == 1
  assert prepares[0] < min(i for i, line in enumerate(lines)
                           if 'jax_attnshare.main' in line)
  entry = data_cache.entry_name(_config(lines[prepares[0]]).data)
  assert {data_cache.entry_name(_config(command).data)
          for command in _main_commands(lines)} == {entry}


def _finish(workdir, config_name, seed_mode='per_seed', finished=True):
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump({'finished': finished, 'config_name': config_name,
               'seed_mode': seed_mode}, f)


@pytest.mark.slow
def test_blog_grid_skips_finished_conditions_and_resumes_the_others(
    tmp_path):
  _finish(tmp_path / 'kv', 'configs/kv_share.py:tiny')
  _finish(tmp_path / 'kq', 'configs/kq_share.py:tiny', finished=False)
  _finish(tmp_path / 'qv', 'configs/qv_share.py:cpu')  # Another experiment.
  _finish(tmp_path / 'kqv', 'configs/kqv_share.py:tiny', seed_mode='shared')
  lines = _dry_run('exp1', 'tiny', str(tmp_path))
  workdirs = [re.search(r'--workdir=(\S+)', c)[1]
              for c in _main_commands(lines)]
  assert workdirs == [str(tmp_path / c) for c in ('none', 'kq', 'qv', 'kqv')]
  assert f'Skipping kv: {tmp_path}/kv holds its finished run.' in lines
  # The experiment still links it.
  assert f'ln -sfn ../kv {tmp_path}/exp1/kv' in lines


def test_shared_seed_mode_is_a_choice(tmp_path):
  commands = _main_commands(_dry_run('exp1', 'tiny', str(tmp_path),
                                     env={'SEED_MODE': 'shared'}))
  assert all('--config.data.seed_mode=shared' in c for c in commands)


def test_full_mode_estimates_then_runs_both_regimes_at_full_size(tmp_path):
  lines = _dry_run('full', str(tmp_path))
  estimates = [l for l in lines if 'seed_throughput.py' in l]
  assert lines[:2] == estimates and len(estimates) == 2
  assert all('--estimate_runs=8' in l for l in estimates)
  commands = _main_commands(lines)
  assert len(commands) == 20
  for regime in ('clean', 'blog'):
    mine = [c for c in commands if f':regime={regime} ' in c]
    assert len(mine) == 10
    assert all(f'--workdir={tmp_path}/{regime}/' in c for c in mine)
    # Its data prepared once, before its conditions.
    prepare = [i for i, line in enumerate(lines)
               if 'jax_attnshare.prepare' in line
               and line.endswith(f':regime={regime}')]
    assert len(prepare) == 1 and prepare[0] < lines.index(mine[0])


def _benchmark(*args, check=True, patch=''):
  """The benchmark at :tiny in a subprocess, after `patch` (Python) runs."""
  command = (f'{patch}\nimport runpy, sys\nsys.argv = sys.argv[1:]\n'
             "runpy.run_path(sys.argv[0], run_name='__main__')")
  return subprocess.run(
      [sys.executable, '-c', command, 'experiments/seed_throughput.py',
       '--config=configs/kv_share.py:tiny', '--steps=2', '--matmul_size=64',
       *args], cwd=ROOT, capture_output=True, text=True, check=check,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_LOG_COMPILES': '1'})


# Stands in for a variant that fails on the device (out of memory, a kernel
# that does not compile): fused attention raises in bfloat16.
_FAILING_BFLOAT16_FUSED = """
from jax_attnshare import model
real = model.fused_implementation
def fused_implementation(cfg, lengths=()):
  if cfg.dtype == 'bfloat16':
    raise RuntimeError('injected failure')
  return real(cfg, lengths)
model.fused_implementation = fused_implementation
"""


@pytest.mark.slow
def test_benchmark_streams_rows_compiles_once_and_outlives_a_failure():
  result = _benchmark('--seeds=1,2', '--variants=float32/explicit,'
                      'bfloat16/fused,float32/fused',
                      patch=_FAILING_BFLOAT16_FUSED)
  lines = result.stdout.splitlines()
  summary = next(i for i, l in enumerate(lines) if 'MFLOP per training' in l)
  streamed = lines[:summary]
  for seeds in (1, 2):
    assert any(l.startswith(f'| {seeds} | float32 | explicit |')
               for l in streamed)
    assert any(l.startswith(f'| {seeds} | float32 | fused (xla) |')
               for l in streamed)
    assert any(l.startswith(f'| {seeds} | bfloat16/fused | | error: '
                            'RuntimeError: injected failure |')
               for l in streamed)
  # Each row's dtype has its own peak.
  assert re.search(r'matmul peak bfloat16 [\d.]+ GFLOP/s, float32 [\d.]+',
                   lines[0])
  # Programs (variant, seeds): 2 working variants x S = 1, 2; the S = 1
  # program also times the 2 seeds in turn.
  assert result.stderr.count(
      'Finished XLA compilation of jit(scanned_steps)') == 4


@pytest.mark.slow
def test_benchmark_estimates_the_grid():
  estimate = _benchmark('--estimate_runs=8').stdout
  assert re.search(r'Expected: 8 runs x 6 steps = [\d.]+ min of training',
                   estimate)


@pytest.mark.slow
def test_whole_run_prints_progress_at_each_evaluation():
  out = _benchmark('--whole_run').stdout
  # :tiny evaluates at steps 3 and 6.
  assert re.search(r'^step 3: setup [\d.]+ s, train [\d.]+ s, eval ', out,
                   re.M)
  assert re.search(r'^step 6: ', out, re.M)
  assert re.search(r'^\| [\d.]+ \| [\d.]+ \|', out, re.M)


@pytest.mark.slow
@pytest.mark.parametrize('flag,message', [
    ('--variants=float16/explicit', 'config.model.dtype must be one of'),
    ('--variants=bfloat16', "'bfloat16' is not dtype/attention"),
    ('--seeds=0', '--seeds must be positive integers')])
def test_benchmark_refuses_bad_flags_before_any_work(flag, message):
  result = _benchmark(flag, check=False)
  assert result.returncode == 2
  assert message in result.stderr.splitlines()[-1]
  assert 'Compiling' not in result.stderr
