"""The workdir's files read back as they were written."""

import json
import os

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
