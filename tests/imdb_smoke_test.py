"""Smoke test on the real IMDB reviews, at the :cpu model size.

Runs only where tfds finds a prepared imdb_reviews (TFDS_DATA_DIR), as .ci/run
arranges when the shared copy is beside the checkout; it skips elsewhere.
"""

import os

import pytest
import tensorflow_datasets as tfds

from jax_attnshare import config_utils
from jax_attnshare import loop


def _imdb_prepared() -> bool:
  return tfds.builder('imdb_reviews',
                      data_dir=os.environ.get('TFDS_DATA_DIR')).is_prepared()


@pytest.mark.skipif(not _imdb_prepared(),
                    reason='no prepared imdb_reviews under TFDS_DATA_DIR')
def test_cpu_size_learns_real_imdb(tmp_path):
  config = config_utils.classifier_config('kv', 'cpu')
  config.num_seeds = 2
  config.num_train_steps = 150
  config.log_every_steps = 50
  config.eval_every_steps = config.ckpt_every_steps = 150
  config.data.update(test_examples=1000, tokenizer_train_examples=2000,
                     allow_download=False)
  config.stats_examples = 32
  summary = loop.train_and_evaluate(config, str(tmp_path / 'kv'))
  assert summary['finished']
  accuracies = [s['test_accuracy'] for s in summary['per_seed']]
  # Chance is 0.5; 150 steps of 32 reviews already get well above it.
  assert min(accuracies) > 0.6, accuracies
