"""The experiment scripts: every command they would run passes main's checks."""

import os
import re
import subprocess
import sys

import pytest

from jax_attnshare import configs
from jax_attnshare import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(*args, env=None):
  result = subprocess.run(
      ['bash', 'experiments/blog.sh', *args], cwd=ROOT, capture_output=True,
      text=True, check=True, env={**os.environ, 'DRY_RUN': '1', **(env or {})})
  return result.stdout.splitlines()


def _main_commands(lines):
  return [line for line in lines if 'jax_attnshare.main' in line]


@pytest.mark.parametrize('arg', ['tiny', 'tiny,regime=blog',
                                 'tiny,regime=blog32'])
def test_blog_grid_commands_pass_the_checks_per_replica_order(arg, tmp_path):
  commands = _main_commands(_dry_run('all', arg, str(tmp_path)))
  # Experiments 1 and 2 share none and kqv: 10 commands, 8 workdirs.
  assert len(commands) == 10
  assert len({re.search(r'--workdir=(\S+)', c)[1] for c in commands}) == 8
  for command in commands:
    config_arg = re.search(r'--config=(\S+)', command)[1]
    config = configs.load_config(os.path.join(ROOT, config_arg))
    assert '--config.data.seed_mode=per_seed' in command
    train.check_config(config)


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


def _benchmark(*args):
  result = subprocess.run(
      [sys.executable, 'experiments/seed_throughput.py',
       '--config=configs/kv_share.py:tiny', '--steps=2', '--matmul_size=64',
       *args], cwd=ROOT, capture_output=True, text=True, check=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  return result.stdout


def test_benchmark_prints_each_variant_and_the_grid_estimate():
  table = _benchmark('--seeds=2', '--variants=float32/explicit,bfloat16/fused')
  assert '| 2 | float32 | explicit |' in table
  assert '| 2 | bfloat16 | fused (xla) |' in table
  estimate = _benchmark('--estimate_runs=8')
  assert re.search(r'Expected: 8 runs x 6 steps = [\d.]+ min of training',
                   estimate)
