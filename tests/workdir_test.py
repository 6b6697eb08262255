"""The workdir's files read back as they were written."""

import errno
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jax_attnshare import workdir as workdir_lib

_CONFIG = {'name': 'none', 'num_train_steps': 2, 'log_every_steps': 1,
           'model': {'num_layers': 2, 'num_heads': 1},
           'data': {'seed_mode': 'shared', 'data_dir': '/tmp'}}


def _summary() -> dict:
  return workdir_lib.jsonable(workdir_lib.summary(
      config=_CONFIG, config_name='none.py', sharing='', seeds=[0, 1],
      params={'total': 10}, completed_steps=2, wall_time_s=1.5,
      history=[{'step': 2, 'test_accuracy': np.array([0.5, 0.75])}],
      diverged={1: 2}, final_attention=None, sparsity_thresholds={}))


def test_summary_reads_back(tmp_path):
  value = _summary()
  assert set(workdir_lib.REQUIRED_SUMMARY_KEYS) <= set(value)
  workdir_lib.write_summary(str(tmp_path), value)
  assert workdir_lib.read_summary(str(tmp_path)) == value


@pytest.mark.parametrize('change, message', [
    ({'format': 0}, 'has format 0, expected'),
    ({'seeds': None}, 'lacks seeds'),
])
def test_read_summary_refuses_another_format(tmp_path, change, message):
  value = {**_summary(), **change}
  value = {k: v for k, v in value.items() if v is not None}
  workdir_lib.write_json(os.path.join(tmp_path, workdir_lib.SUMMARY_FILE),
                         value)
  with pytest.raises(ValueError, match=message):
    workdir_lib.read_summary(str(tmp_path))


def test_config_reads_back_and_may_be_absent(tmp_path):
  assert workdir_lib.read_config(str(tmp_path)) == {}
  workdir_lib.write_config(str(tmp_path), _CONFIG, {'seeds': [0]})
  assert workdir_lib.read_config(str(tmp_path)) == _CONFIG
  with open(tmp_path / workdir_lib.CONFIG_FILE) as f:
    assert json.load(f)['seeds'] == [0]


def test_attention_maps_read_back_cut_to_the_pieces(tmp_path):
  assert workdir_lib.read_attention_maps(str(tmp_path)) is None
  probs = np.random.default_rng(0).random((2, 1, 1, 4, 4)).astype(np.float32)
  workdir_lib.write_attention_maps(str(tmp_path), probs, ['a', 'b', 'c'],
                                   np.int64(1), 7)
  maps = workdir_lib.read_attention_maps(str(tmp_path))
  np.testing.assert_array_equal(maps['probs'], probs[..., :3, :3])
  assert (maps['pieces'], maps['label'], maps['step']) == (['a', 'b', 'c'],
                                                           1, 7)


def test_a_held_workdir_is_refused_and_released_on_exceptions(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    with pytest.raises(workdir_lib.WorkdirInUseError,
                       match=f'in use by pid {os.getpid()} on host .* since '
                             '.*; wait for it or use another --workdir'):
      with workdir_lib.lock(str(tmp_path)):
        pass
  with pytest.raises(KeyError):
    with workdir_lib.lock(str(tmp_path)):
      raise KeyError
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_FILE)


def _write_lock(workdir, pid, host, silent_s=0.0, **fields):
  """A lock file left by a run that did not release it."""
  path = os.path.join(workdir, workdir_lib.LOCK_FILE)
  with open(path, 'w') as f:
    json.dump({'pid': pid, 'host': host, 'started': 'then', **fields}, f)
  then = time.time() - silent_s
  os.utime(path, (then, then))


def _dead_pid() -> int:
  gone = subprocess.Popen([sys.executable, '-c', ''])
  gone.wait()
  return gone.pid


def test_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
  pid = _dead_pid()
  _write_lock(tmp_path, pid, socket.gethostname())
  assert workdir_lib.live_holder(str(tmp_path)) is None
  with workdir_lib.lock(str(tmp_path)):
    with open(tmp_path / workdir_lib.LOCK_FILE) as f:
      assert json.load(f)['pid'] == os.getpid()
    assert workdir_lib.live_holder(str(tmp_path)).startswith(
        f'pid {os.getpid()} on host {socket.gethostname()}')
  assert f'pid {pid}' in caplog.text and 'is gone' in caplog.text
  assert workdir_lib.live_holder(str(tmp_path)) is None


def test_another_hosts_live_lock_is_refused_naming_force_unlock(tmp_path):
  _write_lock(tmp_path, 1, 'elsewhere', config_hash='abc')
  assert workdir_lib.live_holder(str(tmp_path)).startswith(
      'pid 1 on host elsewhere')
  with pytest.raises(workdir_lib.WorkdirInUseError,
                     match='locked by pid 1 on host elsewhere since then, '
                           r'last seen \d+ s ago, which cannot be checked '
                           'from here; if that run is gone, rerun with '
                           '--force_unlock'):
    with workdir_lib.lock(str(tmp_path), config_hash='abc'):
      pass
  # Refused: the record stays as it was.
  with open(tmp_path / workdir_lib.LOCK_FILE) as f:
    assert json.load(f)['host'] == 'elsewhere'


@pytest.mark.parametrize('case', ['silent', 'same_job', 'forced'])
def test_another_hosts_lock_is_resumed_by_the_same_run(tmp_path, monkeypatch,
                                                      caplog, case):
  """A preempted job resumed on another node: the same experiment after its
  holder's heartbeat stopped, the same scheduler job at once, or forced."""
  monkeypatch.setenv('SLURM_JOB_ID', '77')
  fields = {'silent': dict(silent_s=workdir_lib.STALE_S + 1,
                           config_hash='abc', job='SLURM_JOB_ID=76'),
            'same_job': dict(config_hash='abc', job='SLURM_JOB_ID=77'),
            'forced': dict(config_hash='other')}[case]
  _write_lock(tmp_path, 1, 'elsewhere', **fields)
  with workdir_lib.lock(str(tmp_path), config_hash='abc',
                        force=case == 'forced'):
    with open(tmp_path / workdir_lib.LOCK_FILE) as f:
      holder = json.load(f)
    assert (holder['host'], holder['pid'], holder['job'],
            holder['config_hash']) == (socket.gethostname(), os.getpid(),
                                       'SLURM_JOB_ID=77', 'abc')
  assert 'Taking over' in caplog.text or 'taking over' in caplog.text


def test_a_silent_lock_of_another_experiment_is_refused(tmp_path):
  _write_lock(tmp_path, 1, 'elsewhere', silent_s=workdir_lib.STALE_S + 1,
              config_hash='other')
  with pytest.raises(workdir_lib.WorkdirInUseError, match='--force_unlock'):
    with workdir_lib.lock(str(tmp_path), config_hash='abc'):
      pass


def test_the_holder_refreshes_its_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lib, 'HEARTBEAT_S', 0.05)
  with workdir_lib.lock(str(tmp_path)):
    path = tmp_path / workdir_lib.LOCK_FILE
    os.utime(path, (0, 0))
    time.sleep(0.5)
    assert time.time() - os.path.getmtime(path) < 5


def _take_stale_locks(workdir, trials, barrier, results):
  """One of two processes racing for a stale lock, `trials` times."""
  for _ in range(trials):
    barrier.wait()  # The stale record is in place.
    try:
      with workdir_lib.lock(workdir):
        results.put('won')
        barrier.wait()  # Both have tried.
    except workdir_lib.WorkdirInUseError:
      results.put('refused')
      barrier.wait()
    except Exception as e:  # pylint: disable=broad-exception-caught
      results.put(repr(e))
      barrier.wait()
    barrier.wait()  # The lock is released.


@pytest.mark.slow
def test_two_runs_taking_over_a_stale_lock_at_once_one_wins(tmp_path):
  trials = 100
  context = multiprocessing.get_context('spawn')
  barrier, results = context.Barrier(3), context.Queue()
  workers = [context.Process(target=_take_stale_locks,
                             args=(str(tmp_path), trials, barrier, results))
             for _ in range(2)]
  for worker in workers:
    worker.start()
  pid = _dead_pid()
  outcomes = []
  try:
    for _ in range(trials):
      _write_lock(tmp_path, pid, socket.gethostname())
      barrier.wait(timeout=60)
      barrier.wait(timeout=60)
      outcomes.append(sorted([results.get(timeout=60),
                              results.get(timeout=60)]))
      barrier.wait(timeout=60)
  finally:
    for worker in workers:
      worker.join(timeout=60)
      if worker.is_alive():
        worker.kill()
  assert outcomes == [['refused', 'won']] * trials


def test_live_holder_is_none_without_a_lock(tmp_path):
  assert workdir_lib.live_holder(str(tmp_path)) is None
  assert workdir_lib.live_holder(str(tmp_path / 'missing')) is None


def test_a_killed_writes_temporary_file_is_removed_by_the_next_run(tmp_path):
  stale = tmp_path / (workdir_lib.SUMMARY_FILE + '.tmp')
  stale.write_text('')
  with workdir_lib.lock(str(tmp_path)):
    assert not stale.exists()


def test_a_changed_config_replaces_one_that_trained_nothing(tmp_path):
  workdir = str(tmp_path)
  workdir_lib.write_config(workdir, _CONFIG, {})
  changed = {**_CONFIG, 'num_train_steps': 3}
  assert workdir_lib.check_workdir(workdir, changed) == [
      'config.num_train_steps: 2 in the workdir, 3 now']
  os.makedirs(tmp_path / 'checkpoints' / '1')
  with pytest.raises(ValueError, match='holds a different experiment'):
    workdir_lib.check_workdir(workdir, changed)


@pytest.mark.parametrize('write', ['json', 'npz'])
def test_a_write_that_fails_leaves_the_earlier_file_whole(tmp_path,
                                                          monkeypatch, write):
  path = str(tmp_path / f'out.{write}')
  if write == 'json':
    workdir_lib.write_json(path, {'a': 1})
    monkeypatch.setattr(json, 'dump',
                        lambda value, f, **kwargs: _fail_halfway(f))
    with pytest.raises(OSError, match='No space left') as error:
      workdir_lib.write_json(path, {'a': 2})
    assert error.value.filename == path + '.tmp'  # Named for the message.
    with open(path) as f:
      assert json.load(f) == {'a': 1}
    assert os.listdir(tmp_path) == ['out.json']
  else:
    workdir_lib.write_npz(path, x=np.arange(3))
    monkeypatch.setattr(np, 'savez',
                        lambda file, **arrays: _fail_halfway(file))
    with pytest.raises(OSError):
      workdir_lib.write_npz(path, x=np.arange(4))
    np.testing.assert_array_equal(np.load(path)['x'], np.arange(3))
    assert os.listdir(tmp_path) == ['out.npz']


def _fail_halfway(target):
  """Writes part of a file, as a crash mid-write would, then fails."""
  if isinstance(target, str):
    with open(target, 'w') as f:
      f.write('{"a": ')
  else:
    target.write(b'{"a": ' if 'b' in target.mode else '{"a": ')
  raise OSError(errno.ENOSPC, 'No space left on device')
