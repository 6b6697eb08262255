"""Seeds over many devices and processes give the one-device results.

The multi-device and multi-process runs are subprocesses: the device count
is fixed when JAX starts, and each process of a run is its own Python.
"""

import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jax_attnshare import configs
from jax_attnshare import distributed
from jax_attnshare import train
from jax_attnshare import workdir as workdir_lib
import tiny_tfds
from train_test import numbers

# Tiny models: compile time dominates, so let XLA skip most optimizations
# (the subprocesses get it through JAX_DISABLE_MOST_OPTIMIZATIONS).
jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def _env(devices: int, **extra) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu',
              JAX_DISABLE_MOST_OPTIMIZATIONS='1',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              **extra)


def _read_summary(workdir) -> dict:
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def _assert_same_per_seed(summary, expected):
  """Every replica's final metrics and history, to float32 rounding."""
  assert [e['seed'] for e in summary['per_seed']] == [
      e['seed'] for e in expected['per_seed']]
  for key in ('per_seed', 'history'):
    np.testing.assert_allclose(numbers(summary[key]),
                               numbers(expected[key]), rtol=1e-5, atol=1e-6)


_EIGHT_DEVICE_SCRIPT = '''
import sys, time
import jax
assert jax.device_count() == 8
sys.path.insert(0, sys.argv[1])
from conftest import read_fake_texts
from jax_attnshare import configs, train
start = time.time()
config = configs.classifier_config("kv", "tiny,seeds=15")
config.data.cache_dir = sys.argv[3]
train.train_and_evaluate(config, sys.argv[2], read_texts=read_fake_texts)
print(f"8 devices, 15 seeds: {time.time() - start:.1f} s")
'''


def test_fifteen_seeds_on_eight_devices_equal_one_device(
    tmp_path, fake_texts, prepared_data_folder):
  """As on a TPU's 8 cores: 2 seeds per device, 1 padding replica."""
  config = configs.classifier_config('kv', 'tiny,seeds=15')
  expected = train.train_and_evaluate(config, str(tmp_path / 'one'),
                                      read_texts=fake_texts)
  workdir = str(tmp_path / 'eight')
  result = subprocess.run(
      [sys.executable, '-c', _EIGHT_DEVICE_SCRIPT, TESTS, workdir,
       prepared_data_folder],
      env=_env(8), cwd=ROOT, capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = _read_summary(workdir)
  assert summary['seeds'] == list(range(15))
  assert len(summary['per_seed']) == 15
  _assert_same_per_seed(summary, expected)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['seed_layout'] == {'devices': 8, 'seeds_per_device': 2,
                                           'padding': 1}
  assert np.load(os.path.join(workdir, 'attention_maps.npz'))[
      'probs'].shape[0] == 15
  assert sorted(os.listdir(os.path.join(workdir, 'tb'))) == [
      'agg', *(f'seed_{i:02d}' for i in range(15))]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


_CONFIG = 'configs/kv_share.py:tiny,seeds=4'


def _start_processes(workdir, data_dir) -> list[subprocess.Popen]:
  """Both processes of one run: 2 CPU devices each, 4 seeds over the 4."""
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, '-m', 'jax_attnshare.main', f'--config={_CONFIG}',
       f'--workdir={workdir}', f'--coordinator_address=localhost:{port}',
       '--num_processes=2', f'--process_id={i}', '--heartbeat_timeout_s=10'],
      env=_env(2, TFDS_DATA_DIR=data_dir), cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _finish(processes, timeout_s=300) -> list[str]:
  """The processes' logs, once both have exited."""
  try:
    return [p.communicate(timeout=timeout_s)[0] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()


def test_two_processes_train_one_experiment_and_resume_after_a_kill(
    tmp_path):
  data_dir = tiny_tfds.write_tiny_imdb(str(tmp_path / 'tfds'))
  config = configs.load_config(os.path.join(ROOT, _CONFIG))
  config.data.data_dir = data_dir
  expected = train.train_and_evaluate(config, str(tmp_path / 'one'))

  workdir = str(tmp_path / 'two')
  started = time.time()
  processes = _start_processes(workdir, data_dir)
  committed = os.path.join(workdir, 'checkpoints', '3', 'commit_success.txt')
  while not os.path.exists(committed):
    assert all(p.poll() is None for p in processes), _finish(processes)
    assert time.time() - started < 300, 'no checkpoint at step 3'
    time.sleep(0.02)
  # Process 1 dies after the step-3 checkpoint; process 0 cannot go on
  # without it and must stop, not hang.
  processes[1].kill()
  log0, _ = _finish(processes, timeout_s=120)
  assert processes[0].returncode != 0
  # JAX's words when it stops a process whose peer died, or ours when a
  # collective with the dead process fails first.
  assert re.search('task died|Rerun the same command on every host',
                   log0), log0[-3000:]
  assert _read_summary(workdir)['completed_steps'] == 3

  pids = {processes[0].pid}
  processes = _start_processes(workdir, data_dir)
  pids.add(processes[0].pid)
  logs = _finish(processes)
  assert [p.returncode for p in processes] == [0, 0], logs[0][-3000:]
  for log in logs:
    assert 'from step 3' in log
  print(f'2 processes x 2 devices, resumed run: {time.time() - started:.1f} s '
        'since the first start')

  summary = _read_summary(workdir)
  assert summary['finished'] and summary['seeds'] == [0, 1, 2, 3]
  _assert_same_per_seed(summary, expected)
  # One copy of every file, each written by process 0; no lock left.
  assert sorted(os.listdir(workdir)) == [
      'attention_maps.npz', 'checkpoints', 'config.json', 'summary.json',
      'tb', 'tokenizer']
  assert os.listdir(os.path.join(workdir, 'tokenizer')) == ['spm.model']
  for run in ('agg', 'seed_00', 'seed_01', 'seed_02', 'seed_03'):
    writers = [int(m.group(1)) for m in (
        re.search(r'\.(\d+)\.\d+\.v2$', path) for path in glob.glob(
            os.path.join(workdir, 'tb', run, 'events.out.tfevents.*')))
               if m]
    assert sorted(writers) == sorted(pids), run  # One per run of process 0.
  assert not glob.glob(os.path.join(workdir, '**', '*.tmp*'), recursive=True)
  assert workdir_lib.read_summary(workdir)['completed_steps'] == 6
  # Process 0 wrote the checksums of what both processes saved.
  for step in ('3', '6'):
    assert os.path.exists(os.path.join(workdir, 'checkpoints', step,
                                       'sha256sums.json'))


@pytest.mark.parametrize('flags, message', [
    (('localhost:1234', 2, None, False), '--process_id missing'),
    (('localhost', 2, 0, False), 'needs a port'),
    (('localhost:1234', 2, 2, False), r'must be in \[0, --num_processes=2\)'),
    ((None, 0, None, True), '--num_processes must be >= 1'),
])
def test_bad_process_flags_name_the_problem(flags, message):
  assert re.search(message, distributed.check_flags(*flags))


def test_process_flags_together_or_detected_pass():
  assert distributed.check_flags('10.0.0.2:29500', 4, 3, False) is None
  assert distributed.check_flags(None, None, None, True) is None
  assert distributed.check_flags(None, None, None, False) is None


@pytest.mark.slow
def test_processes_that_do_not_all_join_stop_with_one_line(tmp_path):
  """A peer that never starts: process 0 waits for process 1 in vain, and
  process 1 (started alone elsewhere) for a coordinator that is not there.
  JAX's own timeout would end both with SIGABRT and a C++ stack."""
  ports = [_free_port(), _free_port()]
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'jax_attnshare.main', f'--config={_CONFIG}',
       f'--workdir={tmp_path / "run"}',
       f'--coordinator_address=localhost:{port}', '--num_processes=2',
       f'--process_id={i}', '--initialization_timeout_s=2'],
      env=_env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i, port in enumerate(ports)]
  for i, (process, port) in enumerate(zip(processes, ports)):
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2, stderr[-3000:]
    assert stderr.splitlines() == [
        'error: joining the other processes failed: not all of them joined '
        f'within --initialization_timeout_s=2 (process {i} of 2, coordinator '
        f'localhost:{port}). Start the same command on every host, each with '
        'its own --process_id; check that every host reaches the '
        'coordinator, or raise --initialization_timeout_s if hosts start '
        'slowly.']
  assert not (tmp_path / 'run').exists()


# jax 0.6.2's initialize has no heartbeat_timeout_seconds.
_INITIALIZE_RAISES = '''
import runpy, sys, jax
def initialize(*args, **kwargs):
  raise TypeError("initialize() got an unexpected keyword argument "
                  "'heartbeat_timeout_seconds'")
jax.distributed.initialize = initialize
sys.argv = ["main", *sys.argv[1:]]
runpy.run_module("jax_attnshare.main", run_name="__main__")
'''


@pytest.mark.slow
def test_joining_fails_in_one_line_whatever_jax_raises(tmp_path):
  result = subprocess.run(
      [sys.executable, '-c', _INITIALIZE_RAISES, f'--config={_CONFIG}',
       f'--workdir={tmp_path / "run"}', '--distributed'],
      env=_env(2), cwd=ROOT, capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.splitlines() == [
      'error: joining the other processes failed: TypeError: initialize() '
      "got an unexpected keyword argument 'heartbeat_timeout_seconds'"]


_SLURM_TASK = '''
import sys, jax
from jax_attnshare import distributed
distributed.initialize(f"localhost:{sys.argv[1]}", 1, 0, False, 10, 60)
print(jax.config.read("jax_cuda_visible_devices"), jax.local_device_count())
'''


@pytest.mark.slow
def test_explicit_process_flags_leave_the_devices_to_the_launcher():
  """Under SLURM, JAX's cluster detection would make each process use only
  the GPU of its SLURM_LOCALID (here 3), which does not exist where SLURM
  binds one GPU per task; with the three flags given, it detects nothing."""
  env = _env(2, SLURM_JOB_ID='7', SLURM_STEP_NODELIST='localhost',
             SLURM_NTASKS='1', SLURM_PROCID='0', SLURM_LOCALID='3')
  result = subprocess.run(
      [sys.executable, '-c', _SLURM_TASK, str(_free_port())], env=env,
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['all', '2']
