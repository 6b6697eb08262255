"""Smoke test of the published command on the real IMDB reviews, :cpu size.

Runs only where tfds finds a prepared imdb_reviews (TFDS_DATA_DIR), as .ci/run
arranges when the shared copy is beside the checkout; it skips elsewhere.
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imdb_prepared() -> bool:
  return tfds.builder('imdb_reviews',
                      data_dir=os.environ.get('TFDS_DATA_DIR')).is_prepared()


@pytest.mark.skipif(not _imdb_prepared(),
                    reason='no prepared imdb_reviews under TFDS_DATA_DIR')
def test_cpu_size_learns_real_imdb_through_the_command_line(tmp_path):
  workdir = tmp_path / 'kv'
  result = subprocess.run(
      [sys.executable, '-m', 'jax_attnshare.main',
       '--config=configs/kv_share.py:cpu,seeds=2', f'--workdir={workdir}',
       '--config.num_train_steps=150', '--config.log_every_steps=50',
       '--config.eval_every_steps=150', '--config.ckpt_every_steps=150',
       '--config.data.test_examples=1000',
       '--config.data.tokenizer_train_examples=2000',
       '--config.data.allow_download=False', '--config.stats_examples=32',
       # Not the data dir's default folder: the shared copy stays as it is.
       f'--config.data.cache_dir={tmp_path / "prepared"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['finished']
  accuracies = [s['test_accuracy'] for s in summary['per_seed']]
  # Chance is 0.5; 150 steps of 32 reviews already get well above it.
  assert min(accuracies) > 0.6, accuracies
  log = result.stderr.splitlines()
  assert 'Finished 150 steps' in log[-1] and 'summary.json' in log[-1]
  # The libraries' INFO chatter (orbax, tfds, jax) is left out by default.
  info_sources = {line.split()[3].split(':')[0] for line in log
                  if line.startswith('I')}
  assert info_sources <= {'main.py', 'data.py', 'data_cache.py', 'train.py',
                          'logging_writer.py'}, info_sources
