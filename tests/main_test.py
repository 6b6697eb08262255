"""The command line and the configs under configs/."""

import glob
import os
import subprocess
import sys

import pytest

from jax_attnshare import config_utils
from jax_attnshare import cost
from jax_attnshare import cost
from jax_attnshare import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_every_config_loads_at_every_size(path):
  for arg in ('', ':cpu', ':tiny'):
    config = config_utils.load_config(path + arg)
    if 'model' in config:  # A training config: its model must be valid.
      model_config = model_lib.model_config(config, config.data.vocab_size, 0)
      assert cost.param_counts(model_config)['total'] > 0
      assert config.num_seeds == {'': 15, ':cpu': 5, ':tiny': 2}[arg]


def test_seeds_arg_sets_the_number_of_seeds():
  config = config_utils.load_config(
      os.path.join(ROOT, 'configs', 'kv_share.py:cpu,seeds=3'))
  assert config.num_seeds == 3


def test_unknown_config_arg_raises():
  with pytest.raises(ValueError, match='unknown'):
    config_utils.load_config(CONFIGS[0] + ':gpu')


def test_missing_data_stops_at_once_with_what_to_do(tmp_path):
  empty = tmp_path / 'no_data'
  empty.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'jax_attnshare.main',
       '--config=configs/kv_share.py:tiny', f'--workdir={tmp_path / "run"}',
       f'--config.data.data_dir={empty}', '--config.data.allow_download=False'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert str(empty) in result.stderr
  assert 'TFDS_DATA_DIR' in result.stderr
  assert 'Traceback' not in result.stderr
