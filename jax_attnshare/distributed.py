"""Several processes (hosts) training one experiment together.

main calls `initialize` before JAX computes anything. From then on
jax.devices() lists every process's devices, so SeedSteps shards the seed
axis over all of them. Every process reads and tokenizes the data itself and
builds the same full batches; jax.device_put of that one value onto the
global sharding copies each process's own shards to its devices. Process 0
alone writes the workdir's files, TensorBoard events and figures; orbax
writes and restores checkpoints with all processes together. So the workdir
must be a folder that every host mounts at the same path.

Processes that do not all join within initialization_timeout_s (a peer
that never started, a coordinator that cannot be reached) stop with one line
(`initialize`). A process that dies later takes the job down: the others
stop when its heartbeats stop (after heartbeat_timeout_s) with JAX's message
that another task died.
A process that raises exits at once (`ends_job_on_error`) so that it does
the same, instead of waiting in JAX's shutdown barrier for processes that
wait on it in a collective. Rerunning the command resumes from the last
checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import threading
import traceback
from typing import (Any, Callable, ContextManager, Iterator, Sequence,
                    TypeVar)

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

T = TypeVar('T')


class PrimaryFailedError(RuntimeError):
  """Process 0 failed at a step that the others wait for."""


def check_flags(coordinator_address: str | None, num_processes: int | None,
                process_id: int | None, detect: bool) -> str | None:
  """What is wrong with the multi-process flags, or None."""
  given = {'--coordinator_address': coordinator_address,
           '--num_processes': num_processes, '--process_id': process_id}
  missing = [name for name, value in given.items() if value is None]
  if not detect and 0 < len(missing) < len(given):
    return (f'{", ".join(missing)} missing: a multi-process run takes '
            '--coordinator_address, --num_processes and --process_id '
            'together, or --distributed to detect them (Cloud TPU, SLURM, '
            'Open MPI).')
  if coordinator_address is not None and not coordinator_address.rpartition(
      ':')[2].isdigit():
    return (f'--coordinator_address={coordinator_address} needs a port: '
            'HOST:PORT of process 0, e.g. 10.0.0.2:29500.')
  if num_processes is not None and num_processes < 1:
    return f'--num_processes must be >= 1, got {num_processes}.'
  if process_id is not None and not 0 <= process_id < (num_processes or
                                                         process_id + 1):
    return (f'--process_id={process_id} must be in [0, --num_processes'
            f'={num_processes}).')
  return None


# How much longer JAX itself waits than initialization_timeout_s, so that
# the watchdog in `initialize`, not JAX, ends a start that fails.
_JAX_INITIALIZATION_GRACE_S = 30


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, detect: bool,
               heartbeat_timeout_s: int,
               initialization_timeout_s: int) -> bool:
  """Joins the other processes; False (nothing done) for a one-process run.

  `detect`: let JAX find the cluster (Cloud TPU VM, SLURM, Open MPI) and fill
  in whichever of the other arguments are None. Without it JAX detects
  nothing: on SLURM it would otherwise give each process only the GPU of
  its SLURM_LOCALID, which does not exist where SLURM binds one GPU per task.

  If not all processes have joined after initialization_timeout_s, this
  process stops with one line and exit status 2: JAX's own timeout aborts
  it (SIGABRT) with a C++ stack instead.
  """
  if not detect and coordinator_address is None:
    return False
  # CPU processes exchange arrays over gloo: jax 0.10's default, set so that
  # a CPU run does not depend on the installed version's default.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  watchdog = threading.Timer(
      initialization_timeout_s, _not_joined,
      (coordinator_address, num_processes, process_id,
       initialization_timeout_s))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        cluster_detection_method=None if detect else 'deactivate',
        initialization_timeout=(initialization_timeout_s +
                                _JAX_INITIALIZATION_GRACE_S),
        heartbeat_timeout_seconds=heartbeat_timeout_s)
  finally:
    watchdog.cancel()
  logging.info('Process %d of %d: %d local devices of %d.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def _not_joined(coordinator_address: str | None, num_processes: int | None,
                process_id: int | None, timeout_s: int) -> None:
  """Ends this process: the others did not all join within timeout_s."""
  if None in (coordinator_address, num_processes, process_id):
    where = 'the cluster JAX detected'
  else:
    where = (f'process {process_id} of {num_processes}, coordinator '
             f'{coordinator_address}')
  print(f'error: joining the other processes failed: not all of them '
        f'joined within --initialization_timeout_s={timeout_s} ({where}). '
        'Start the same command on every host, each with its own '
        '--process_id; check that every host reaches the coordinator, or '
        'raise --initialization_timeout_s if hosts start slowly.',
        file=sys.stderr)
  _exit_now(2)


def is_primary() -> bool:
  """Whether this process writes the workdir's files (process 0)."""
  return jax.process_index() == 0


def _failed_on_primary(failed: bool) -> bool:
  """Process 0's `failed`, on every process; a barrier as well."""
  return bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))


def primary_only(what: str, fn: Callable[[], T]) -> T | None:
  """fn() on process 0 (None elsewhere); the others wait until it is done.

  If fn raises on process 0, it raises there and the others raise
  PrimaryFailedError, so every process stops with an error together.
  """
  if jax.process_count() == 1:
    return fn()
  if not is_primary():
    if _failed_on_primary(False):
      raise PrimaryFailedError(f'process 0 failed at {what}; its log says '
                               'why.')
    return None
  try:
    result = fn()
  except BaseException:
    _failed_on_primary(True)
    raise
  _failed_on_primary(False)
  return result


def primary_value(what: str, fn: Callable[[], int]) -> int:
  """fn() on process 0, its int on every process (errors as in primary_only).

  For a choice that every process must make alike, such as the checkpoint
  step to restore.
  """
  value = primary_only(what, fn)
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(
      np.int32(value if is_primary() else 0)))


def all_processes(flag: bool) -> bool:
  """Whether `flag` holds on every process; a barrier as well."""
  if jax.process_count() == 1:
    return flag
  return bool(np.all(multihost_utils.process_allgather(np.int32(flag))))


def primary_first(what: str, fn: Callable[[], T]) -> T:
  """fn() on process 0, then on the others: for files they then share.

  The prepared data entry is made once, by process 0, and read by the
  others where they mount its folder. Errors as in primary_only.
  """
  result = primary_only(what, fn)
  return result if is_primary() else fn()


@contextlib.contextmanager
def held_by_primary(what: str,
                    hold: Callable[[], ContextManager[Any]]) -> Iterator[None]:
  """hold() entered by process 0 alone, for the whole block.

  The others enter the block once process 0 holds it (errors as in
  primary_only). The workdir's lock names one pid on one host, so process 0
  holds it for the whole run.
  """
  with contextlib.ExitStack() as stack:
    primary_only(what, lambda: stack.enter_context(hold()))
    yield


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[int], bool]]:
  """Yields stop_requested(call): whether to save and stop after `call`.

  `call` counts the loop's calls from 0, the same on every process. One
  process: whether a SIGTERM came (a scheduler's preemption notice or time
  limit; the signal is caught only inside this block). Several: JAX's
  preemption service, which gets the SIGTERM of any process and picks the
  call after which they all stop together (reached_preemption_sync_point).
  """
  if jax.process_count() > 1:
    yield multihost_utils.reached_preemption_sync_point
    return
  if threading.current_thread() is not threading.main_thread():
    yield lambda call: False  # Python takes signals in its main thread.
    return
  received = []
  previous = signal.signal(signal.SIGTERM,
                           lambda signum, frame: received.append(signum))
  try:
    yield lambda call: bool(received)
  finally:
    signal.signal(signal.SIGTERM, previous)


def check_same(arrays: Sequence[np.ndarray], error: str) -> None:
  """Raises ValueError(error), on every process, if `arrays` differ."""
  if jax.process_count() == 1:
    return
  digest = hashlib.sha256()
  for array in arrays:
    digest.update(np.ascontiguousarray(array).tobytes())
  digests = multihost_utils.process_allgather(
      np.frombuffer(digest.digest(), np.uint8))
  differ = [i for i, d in enumerate(digests)
            if not np.array_equal(d, digests[0])]
  if differ:
    raise ValueError(f'{error} (processes {differ} differ from process 0).')


def check_shared_file(path: str) -> None:
  """Raises on every process unless all read the file process 0 wrote."""
  try:
    with open(path, 'rb') as f:
      contents = f.read()
  except FileNotFoundError:
    contents = b''
  check_same([np.frombuffer(contents, np.uint8)],
             f'{path} is not the same file on every host: the workdir must '
             'be one folder that every host mounts at the same path')


def fetch(tree: Any) -> Any:
  """A tree of device arrays as numpy arrays of their global values.

  jax.device_get cannot read an array with shards on another process's
  devices: such a tree is gathered onto every process first.
  """
  if all(leaf.is_fully_addressable for leaf in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


@contextlib.contextmanager
def ends_job_on_error() -> Iterator[None]:
  """In a multi-process run, an error ends this process at once.

  On a normal exit JAX waits in a shutdown barrier for every process (up to
  5 minutes) while the others may wait for this one in a collective: both
  would hang. Exiting at once stops this process's heartbeats instead, and
  JAX stops the others with the message that a task died.
  """
  try:
    yield
  except BaseException as e:  # pylint: disable=broad-exception-caught
    if not (jax.distributed.is_initialized() and jax.process_count() > 1):
      raise
    if isinstance(e, SystemExit):  # One line already printed, e.g. _fail.
      status = e.code if isinstance(e.code, int) else 1
    else:
      traceback.print_exc()
      status = 1
    print(f'error: process {jax.process_index()} of {jax.process_count()} '
          f'stopped (exit status {status}); if another process died first, '
          'its log says why. The others stop when this one\'s heartbeats do. '
          'Rerun the same command on every host to resume from the last '
          'checkpoint.', file=sys.stderr)
    _exit_now(status)


def _exit_now(status: int) -> None:
  """Exits at once, with the logs flushed, skipping JAX's shutdown barrier."""
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access
