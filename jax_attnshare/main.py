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

The same command on the same workdir resumes from the latest checkpoint:
after a crash, a kill, Ctrl-C (exit status 130), a full disk, or a SIGTERM
(a scheduler's preemption or time limit), on which the run saves a
checkpoint at the next step boundary and exits with status 143. A workdir
locked by a run that was killed on another host is taken over by the same
job or experiment (see docs/reliability.md); --force_unlock takes it over
in any case.
The tokenized data is read from its prepared entry (data_cache.py), which
the first run with its config.data fields makes (or python -m
jax_attnshare.prepare): later runs need neither TensorFlow nor
tensorflow-datasets, and without clu the events are written by tensorboard
itself.

Several processes (hosts) train one experiment together when each runs the
same command with --coordinator_address=HOST:PORT (of process 0),
--num_processes=N and its own --process_id=I, or with --distributed alone
where JAX finds the cluster itself (Cloud TPU VM and pod slice, SLURM, Open
MPI). The seeds are sharded over every process's devices; process 0 writes
the workdir, which every host must mount at the same path; processes that
do not all join within --initialization_timeout_s stop (docs/scaling.md).
Bad input (an unknown field, a value a check refuses, missing data) stops
with one line on stderr and exit status 2, before anything is compiled.
"""

import functools
import logging as pylogging
import os
import sys

from jax_attnshare import versions

# Before the imports below: a library older than the code needs may fail at
# import or, worse, later on every host of a cluster.
if __name__ == '__main__' and (_TOO_OLD := versions.problem()):
  print(f'error: {_TOO_OLD}', file=sys.stderr)
  sys.exit(2)

# TensorFlow, where installed, only reads data and writes events here; it
# does no math, so its oneDNN kernels are not needed, and without them and
# its C++ INFO lines it prints nothing at import.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from jax_attnshare import checkpoint
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
_FORCE_UNLOCK = flags.DEFINE_bool(
    'force_unlock', False,
    'Take over the workdir\'s lock left by a run that did not release it '
    '(killed on another host), even if it cannot be shown to be gone. A run '
    'that still holds it on a file system with working locks stays refused.')
_HEARTBEAT_TIMEOUT_S = flags.DEFINE_integer(
    'heartbeat_timeout_s', 100,
    'Several processes: when one has been silent this long, the others stop '
    'the job.')
_INITIALIZATION_TIMEOUT_S = flags.DEFINE_integer(
    'initialization_timeout_s', 300,
    'Several processes: how long each waits for all of them to start and '
    'reach the coordinator before it stops with an error.')
flags.mark_flags_as_required(['config'])


def default_workdir(config_name: str) -> str:
  stem, _, arg = os.path.basename(config_name).partition(':')
  stem = os.path.splitext(stem)[0]
  suffix = '_' + arg.replace(',', '_').replace('=', '-') if arg else ''
  return os.path.join('runs', stem + suffix)


# Exit statuses of a run that stopped and can be resumed: as a shell reports
# a process ended by SIGINT (Ctrl-C) or SIGTERM.
INTERRUPTED_STATUS = 130
PREEMPTED_STATUS = 143


class _DiskFullFilter(pylogging.Filter):
  """Drops the records of a full disk, which the libraries' threads log
  with their tracebacks: the one line _disk_full_message says it."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not ((error is not None and train.disk_full_path(error) is not None)
                or 'No space left on device' in record.getMessage())


def _hide_accelerators_from_tensorflow() -> None:
  """Keeps TensorFlow, where installed, off the accelerators JAX uses.

  tfds and clu import it; a machine without it has nothing to hide.
  """
  try:
    import tensorflow as tf
  except ImportError:
    return
  tf.config.set_visible_devices([], 'GPU')


def main(argv):
  cli.check_no_arguments(argv)
  if not _LIBRARY_LOGS.value:
    cli.quiet_libraries()
  logging.get_absl_handler().addFilter(_DiskFullFilter())
  _hide_accelerators_from_tensorflow()
  config_name = cli.config_name(_CONFIG)
  workdir = _WORKDIR.value or default_workdir(config_name)
  cluster = (_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value,
             _PROCESS_ID.value, _DISTRIBUTED.value)
  problem = distributed.check_flags(*cluster)
  if problem:
    cli.fail(problem)
  for timeout in (_HEARTBEAT_TIMEOUT_S, _INITIALIZATION_TIMEOUT_S):
    if timeout.value < 1:
      cli.fail(f'--{timeout.name} must be >= 1, got {timeout.value}.')
  try:  # Before anything asks JAX for its devices.
    distributed.initialize(*cluster, _HEARTBEAT_TIMEOUT_S.value,
                           _INITIALIZATION_TIMEOUT_S.value)
  # Any type: no cluster found, no reply, an argument JAX does not take.
  except Exception as e:  # pylint: disable=broad-exception-caught
    cli.fail(f'joining the other processes failed: {type(e).__name__}: '
             f'{cli.one_line(e)}')
  with distributed.ends_job_on_error():
    logging.info('JAX devices: %s; workdir %s', jax.devices(), workdir)
    try:
      train.train_and_evaluate(_CONFIG.value, workdir,
                               config_name=config_name,
                               force_unlock=_FORCE_UNLOCK.value)
    except (train.ConfigError, data.DataMissingError,
            distributed.PrimaryFailedError) as e:
      # Not a bug: say what to do, without a traceback.
      cli.fail(str(e))
    except train.DiskFullError as e:
      # orbax's tasks that failed to write complain again as they go.
      logging.get_absl_handler().addFilter(checkpoint.LibraryFilter())
      cli.fail(str(e))
    except train.Preempted as e:
      print(str(e), file=sys.stderr)
      sys.exit(PREEMPTED_STATUS)
    except KeyboardInterrupt:
      cli.fail(f'interrupted; rerun the same command to resume {workdir} from '
               'its last checkpoint.', INTERRUPTED_STATUS)


def run():
  """The command: `python -m jax_attnshare.main` runs it."""
  jax.config.config_with_absl()
  app.run(main, flags_parser=functools.partial(cli.parse_flags,
                                               config=_CONFIG))


if __name__ == '__main__':
  run()
