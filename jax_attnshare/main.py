"""Trains the seeds of one sharing condition and writes its workdir.

  python -m jax_attnshare.main --config=configs/kv_share.py[:ARGS]
      [--workdir=DIR] [--config.FIELD=VALUE ...]

--config names a file under configs/ (one per condition); ARGS after the
colon choose a size or variant, comma-separated:
  (none)     the full size: 15 seeds, 11,715 steps; meant for a GPU or TPU
  cpu        the size that finishes in minutes on a laptop CPU (5 seeds)
  tiny       a smoke run in seconds (2 seeds, 6 steps, a tiny model)
  seeds=N    N seeds instead of the size's default
  ...        variants a config documents, e.g. albert_grid.py:variant=ffn,
             gqa.py:groups=4 (see the docstring at the top of each file)
Any field can be overridden after the file, e.g. --config.num_seeds=3
--config.data.test_examples=2000 --config.sharing.components=kv; the fields
and what they mean are in jax_attnshare/configs.py (classifier_config)
and jax_attnshare/sharing.py (the sharing spec).

The same command on the same workdir resumes from the latest checkpoint.

Several processes (hosts) train one experiment together when each runs the
same command with --coordinator_address=HOST:PORT (of process 0),
--num_processes=N and its own --process_id=I, or with --distributed alone
where JAX finds the cluster itself (Cloud TPU VM and pod slice, SLURM, Open
MPI). The seeds are sharded over every process's devices; process 0 writes
the workdir, which every host must mount at the same path (see README,
"Scaling out").
Bad input (an unknown field, a value a check refuses, missing data) stops
with one line on stderr and exit status 2, before anything is compiled.
"""

import functools
import os

# TensorFlow only reads data and writes events here; it does no math, so its
# oneDNN kernels are not needed, and without them and its C++ INFO lines it
# prints nothing at import.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow as tf

from jax_attnshare import cli
from jax_attnshare import data
from jax_attnshare import distributed
from jax_attnshare import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None,
    'A config file under configs/, optionally with :ARGS (cpu, tiny, '
    'seeds=N, or a variant the file documents); override fields with '
    '--config.FIELD=VALUE.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None,
    'Where checkpoints, TensorBoard events and summaries go. Default: '
    'runs/<config name>[_<args>] under the current directory.')
_LIBRARY_LOGS = flags.DEFINE_bool(
    'library_logs', False,
    'Also log the INFO lines of the libraries (orbax, tfds, jax); by default '
    'only their warnings and errors are shown.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None,
    'Several processes: HOST:PORT where process 0 serves the others; with '
    '--num_processes and --process_id.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Several processes: how many run this command.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Several processes: this one\'s index, 0 to '
    '--num_processes - 1; 0 writes the workdir.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Several processes, found by JAX where it detects the cluster (Cloud TPU '
    'VM or pod slice, SLURM, Open MPI); the three flags above override what '
    'it detects.')
_HEARTBEAT_TIMEOUT_S = flags.DEFINE_integer(
    'heartbeat_timeout_s', 100,
    'Several processes: when one has been silent this long, the others stop '
    'the job.')
flags.mark_flags_as_required(['config'])


def default_workdir(config_name: str) -> str:
  stem, _, arg = os.path.basename(config_name).partition(':')
  stem = os.path.splitext(stem)[0]
  suffix = '_' + arg.replace(',', '_').replace('=', '-') if arg else ''
  return os.path.join('runs', stem + suffix)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {argv[1:]}; fields are set with '
             '--config.FIELD=VALUE.')
  if not _LIBRARY_LOGS.value:
    cli.quiet_libraries()
  # tfds and clu import TensorFlow; keep it off the accelerators JAX uses.
  tf.config.set_visible_devices([], 'GPU')
  config_name = config_flags.get_config_filename(flags.FLAGS['config'])
  workdir = _WORKDIR.value or default_workdir(config_name)
  cluster = (_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value,
             _PROCESS_ID.value, _DISTRIBUTED.value)
  problem = distributed.check_flags(*cluster)
  if problem:
    cli.fail(problem)
  if _HEARTBEAT_TIMEOUT_S.value < 1:
    cli.fail(f'--heartbeat_timeout_s must be >= 1, got '
             f'{_HEARTBEAT_TIMEOUT_S.value}.')
  try:  # Before anything asks JAX for its devices.
    distributed.initialize(*cluster, _HEARTBEAT_TIMEOUT_S.value)
  except (RuntimeError, ValueError) as e:  # No cluster found, or no reply.
    cli.fail(f'joining the other processes failed: {cli.one_line(e)}')
  with distributed.ends_job_on_error():
    logging.info('JAX devices: %s; workdir %s', jax.devices(), workdir)
    try:
      train.train_and_evaluate(_CONFIG.value, workdir,
                               config_name=config_name)
    except (train.ConfigError, data.DataMissingError,
            distributed.PrimaryFailedError) as e:
      # Not a bug: say what to do, without a traceback.
      cli.fail(str(e))


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main, flags_parser=functools.partial(cli.parse_flags,
                                             config=_CONFIG))
