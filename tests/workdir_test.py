"""The workdir's files read back as they were written."""

import json
import os
import socket
import subprocess
import sys

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


def _write_lock(workdir, pid, host):
  with open(os.path.join(workdir, workdir_lib.LOCK_FILE), 'w') as f:
    json.dump({'pid': pid, 'host': host, 'started': 'then'}, f)


def test_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
  gone = subprocess.Popen([sys.executable, '-c', ''])
  gone.wait()
  _write_lock(tmp_path, gone.pid, socket.gethostname())
  with workdir_lib.lock(str(tmp_path)):
    with open(tmp_path / workdir_lib.LOCK_FILE) as f:
      assert json.load(f)['pid'] == os.getpid()
  assert f'pid {gone.pid}' in caplog.text and 'is gone' in caplog.text


def test_another_hosts_lock_is_refused(tmp_path):
  _write_lock(tmp_path, 1, 'elsewhere')
  with pytest.raises(workdir_lib.WorkdirInUseError,
                     match='cannot be checked from here; if that run is '
                           'gone, delete'):
    with workdir_lib.lock(str(tmp_path)):
      pass


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
    with pytest.raises(OSError):
      workdir_lib.write_json(path, {'a': 2})
    with open(path) as f:
      assert json.load(f) == {'a': 1}
  else:
    workdir_lib.write_npz(path, x=np.arange(3))
    monkeypatch.setattr(np, 'savez',
                        lambda file, **arrays: _fail_halfway(file))
    with pytest.raises(OSError):
      workdir_lib.write_npz(path, x=np.arange(4))
    np.testing.assert_array_equal(np.load(path)['x'], np.arange(3))


def _fail_halfway(target):
  """Writes part of a file, as a crash mid-write would, then fails."""
  if isinstance(target, str):
    with open(target, 'w') as f:
      f.write('{"a": ')
  else:
    target.write('{"a": ')
  raise OSError('disk full')
