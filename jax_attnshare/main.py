"""Command line: python -m jax_attnshare.main --config=configs/kv_share.py[:cpu].

Kept short so the logic stays importable (loop.train_and_evaluate). The same
command on the same workdir resumes from the latest checkpoint.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow as tf

from jax_attnshare import data
from jax_attnshare import loop

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, optionally with :arg.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None,
    'Where checkpoints, TensorBoard events and summaries go. Default: '
    'runs/<config name>[_<arg>] under the current directory.')
flags.mark_flags_as_required(['config'])


def default_workdir(config_name: str) -> str:
  stem, _, arg = os.path.basename(config_name).partition(':')
  stem = os.path.splitext(stem)[0]
  suffix = '_' + arg.replace(',', '_').replace('=', '-') if arg else ''
  return os.path.join('runs', stem + suffix)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # tfds and clu import TensorFlow; keep it off the accelerators JAX uses.
  tf.config.set_visible_devices([], 'GPU')
  config_name = config_flags.get_config_filename(flags.FLAGS['config'])
  workdir = _WORKDIR.value or default_workdir(config_name)
  logging.info('JAX devices: %s; workdir %s', jax.devices(), workdir)
  try:
    loop.train_and_evaluate(_CONFIG.value, workdir, config_name=config_name)
  except data.DataMissingError as e:
    # Not a bug: say what to do, without a traceback.
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main)
