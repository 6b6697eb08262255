"""Prepares a config's data once: the tokenized splits and the tokenizer.

  python -m jax_attnshare.prepare --config=configs/kv_share.py[:ARGS]
      [--config.FIELD=VALUE ...]

--config and the overrides are main's. Reads the dataset through
tensorflow-datasets, trains the tokenizer and writes both splits' tokens to
an entry of config.data.cache_dir keyed by the fields that decide them
(data_cache.py), then prints the entry's folder. An entry that is there
already is only read. Every run of main with the same config.data fields
(every condition of a grid) then reads the entry with numpy alone, so that
a machine without TensorFlow trains from an entry copied there.
Bad input or missing data stops with one line on stderr and exit status 2.
"""

import functools
import os
import sys
import time

# As in main: TensorFlow only reads the dataset here.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from ml_collections import config_flags

from jax_attnshare import cli
from jax_attnshare import data
from jax_attnshare import data_cache


_CONFIG = config_flags.DEFINE_config_file(
    'config', None,
    'A training config under configs/, as main takes it: optionally with '
    ':ARGS; override fields with --config.FIELD=VALUE.',
    lock_config=True)
_LIBRARY_LOGS = flags.DEFINE_bool(
    'library_logs', False,
    'Also log the INFO lines of the libraries (tfds); by default only their '
    'warnings and errors are shown.')
flags.mark_flags_as_required(['config'])


def main(argv):
  cli.check_no_arguments(argv)
  if not _LIBRARY_LOGS.value:
    cli.quiet_libraries()
  config = _CONFIG.value
  start = time.time()
  try:
    entry = data_cache.load_or_prepare(config.data)
  except (ValueError, data.DataMissingError) as e:
    cli.fail(str(e))
  dataset = entry.dataset
  print(f'{entry.path}: {len(dataset.train)} train and {len(dataset.test)} '
        f'test examples of {dataset.train.tokens.shape[1]} tokens, '
        f'vocabulary {dataset.vocab_size}, for {cli.config_name(_CONFIG)} '
        f'({time.time() - start:.1f}s).', file=sys.stdout)


if __name__ == '__main__':
  app.run(main, flags_parser=functools.partial(cli.parse_flags,
                                               config=_CONFIG))
