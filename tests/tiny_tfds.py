"""A tiny tfds `imdb_reviews/plain_text` for runs of the real command line.

It holds conftest's fake reviews (64 train, 32 test) as tfds would store
them, so `python -m jax_attnshare.main` and the Colab notebook read it through
tfds, with TFDS_DATA_DIR pointing at it, exactly as they read IMDB.
"""

import os

from conftest import read_fake_texts


def write_tiny_imdb(data_dir: str) -> str:
  """Writes the dataset under data_dir; returns data_dir."""
  # Imported here: only the tests that run the command line need tfds.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  folder = os.path.join(data_dir, 'imdb_reviews', 'plain_text', '1.0.0')
  os.makedirs(folder, exist_ok=True)
  features = tfds.features.FeaturesDict({
      'text': tfds.features.Text(),
      'label': tfds.features.ClassLabel(names=['neg', 'pos'])})
  for split in ('train', 'test'):
    texts, labels = read_fake_texts('imdb_reviews', split, None, False)
    path = os.path.join(folder,
                        f'imdb_reviews-{split}.tfrecord-00000-of-00001')
    with tf.io.TFRecordWriter(path) as f:
      for text, label in zip(texts, labels):
        f.write(features.serialize_example({'text': text,
                                            'label': int(label)}))
  tfds.folder_dataset.write_metadata(data_dir=folder, features=features,
                                     split_infos=None)
  return data_dir
