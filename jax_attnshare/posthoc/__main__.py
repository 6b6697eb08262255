"""The post-hoc sharing study command.

  python -m jax_attnshare.posthoc --config=configs/posthoc_minilm.py[:cpu] \\
      --workdir=DIR [--config.FIELD=VALUE ...]

Runs the post-hoc sharing study of config.source (see study.py), writes its
results into DIR (replaced whole) and prints its results table. Bad input
(an unknown field, a value a check refuses, a missing, unfinished, training
or shared-weights source, missing data) stops with one line on stderr and
exit status 2, before anything is written.
"""

import functools
import os

# As in jax_attnshare.main: TensorFlow only reads data and writes events.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from ml_collections import config_flags

from jax_attnshare import cli
from jax_attnshare import data
from jax_attnshare.posthoc import config as posthoc_config
from jax_attnshare.posthoc import study

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A study config: configs/posthoc_minilm.py or '
    'configs/posthoc_trained.py, optionally with :cpu or :tiny; override '
    'fields with --config.FIELD=VALUE.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where the results go; a new or empty folder, or a '
    'previous study\'s, which is replaced whole.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {argv[1:]}; fields are set with '
             '--config.FIELD=VALUE.')
  cli.quiet_libraries()
  try:
    study.run(_CONFIG.value, _WORKDIR.value)
  except (posthoc_config.InputError, data.DataMissingError) as e:
    # Not a bug: say what to do, without a traceback.
    cli.fail(str(e))
  with open(os.path.join(_WORKDIR.value, 'results.md')) as f:
    print(f.read())


if __name__ == '__main__':
  app.run(main, flags_parser=functools.partial(cli.parse_flags,
                                               config=_CONFIG))
