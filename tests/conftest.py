"""Shared test fixtures: tiny in-memory reviews whose label is learnable."""

import numpy as np
import pytest

from jax_attnshare import data_cache


def _reviews(n: int, seed: int) -> tuple[list[str], np.ndarray]:
  rng = np.random.default_rng(seed)
  syllables = ['ka', 'lo', 'mi', 'zu', 're', 'ti', 'pon', 'gra', 'vel', 'su']
  words = [''.join(rng.choice(syllables, size=rng.integers(1, 4)))
           for _ in range(200)]
  texts, labels = [], np.arange(n) % 2
  for label in labels:
    review = list(rng.choice(words, size=rng.integers(4, 14)))
    review.insert(rng.integers(len(review)), 'great' if label else 'awful')
    texts.append(' '.join(review))
  return texts, labels


def read_fake_texts(name, split, data_dir, allow_download):
  """Stands in for data.read_tfds_texts: 64 train and 32 test reviews."""
  del name, data_dir, allow_download  # The fake needs none of them.
  return _reviews(64, 0) if split == 'train' else _reviews(32, 1)


@pytest.fixture
def fake_texts():
  return read_fake_texts


@pytest.fixture(autouse=True)
def prepared_data_folder(tmp_path, monkeypatch):
  """Where a test's prepared entries go by default: a folder of its own.

  Else tests would write into the user's folder
  (data_cache.default_cache_dir), and one could read another's entry.
  Subprocesses that train on fake texts set config.data.cache_dir instead.
  """
  folder = str(tmp_path / 'prepared')
  monkeypatch.setattr(data_cache, 'default_cache_dir', lambda _: folder)
  return folder
