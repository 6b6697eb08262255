"""The workdir's files, written and read here, and experiment identity.

config.json, summary.json and attention_maps.npz: training writes them and
the report reads them, both through this module, which imports no JAX.

A workdir belongs to one experiment. Its identity is the config minus the
fields that only change how a run is observed (logging, evaluation and
checkpoint intervals, where the data lives), so a rerun with the same config
resumes and a different experiment is refused before anything is compiled.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import socket
import threading
import time
from typing import Any, Iterator, Mapping, Sequence
import zipfile

from absl import logging
import numpy as np

CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
ATTENTION_MAPS_FILE = 'attention_maps.npz'
# Held by the run that trains in the workdir (see lock).
LOCK_FILE = '.lock'
# A run refreshes its lock this often; one on another host that has not for
# STALE_S is presumed gone (longer than any clock skew between hosts).
HEARTBEAT_S = 30
STALE_S = 300
# How long a starting run waits out readers that hold the lock for an instant.
_PROBE_WAIT_S = 5.0
# Environment variables that name the scheduler job a run belongs to.
JOB_ID_VARIABLES = ('SLURM_JOB_ID',)
# summary.json's format; a reader refuses any other.
FORMAT = 1
# The summary keys a reader cannot do without (summary() writes them all).
REQUIRED_SUMMARY_KEYS = ('condition', 'seeds', 'per_seed', 'finished')
# Fields that do not change what is trained or measured. seed_chunk,
# eval_batch_size and stats_batch_size are not among them: they change the
# order of float32 sums, and so the results in their last digits, which
# drift apart over many steps. steps_per_call is: a call runs the same steps
# in the same order (tested bit-exact on a CPU).
OPERATIONAL_FIELDS = ('log_every_steps', 'eval_every_steps',
                      'ckpt_every_steps', 'max_to_keep', 'halt_on_nonfinite',
                      'steps_per_call', 'compilation_cache_dir')
DATA_LOCATION_FIELDS = ('data_dir', 'allow_download', 'cache_dir')


def config_dict(config: Any) -> dict:
  return json.loads(config.to_json()) if hasattr(config, 'to_json') else dict(
      config)


def _digest(value: Any) -> str:
  text = json.dumps(value, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity(config: dict) -> dict:
  ident = {k: v for k, v in config.items() if k not in OPERATIONAL_FIELDS}
  ident['data'] = {k: v for k, v in config['data'].items()
                   if k not in DATA_LOCATION_FIELDS}
  return ident


def data_fingerprint(config: dict) -> str:
  return _digest(identity(config)['data'])


def config_hash(config: dict) -> str:
  return _digest(identity(config))


def _diff(old: Any, new: Any, path: str = 'config') -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += _diff(old.get(k), new.get(k), f'{path}.{k}')
    return out
  return [] if old == new else [f'{path}: {old!r} in the workdir, {new!r} now']


def _trained(workdir: str) -> bool:
  """Whether a run in `workdir` got as far as a checkpoint or an evaluation."""
  checkpoints = os.path.join(workdir, 'checkpoints')
  return (os.path.exists(os.path.join(workdir, SUMMARY_FILE))
          or (os.path.isdir(checkpoints) and bool(os.listdir(checkpoints))))


def check_workdir(workdir: str, config: dict) -> list[str]:
  """Raises if `workdir` holds a different experiment than `config`.

  A different config.json in a workdir where nothing was trained yet (no
  checkpoint, no summary; say a run that failed at its tokenizer) is no
  experiment to protect: returns the differences, and the caller replaces it.
  """
  old = read_config(workdir)
  if not old:
    return []
  diffs = _diff(identity(old), identity(config))
  if diffs and not _trained(workdir):
    return diffs
  if diffs:
    raise ValueError(
        f'{workdir} holds a different experiment, so it cannot be resumed:\n  '
        + '\n  '.join(diffs)
        + '\nUse another --workdir, or delete this one to start over.')
  return []


class WorkdirInUseError(ValueError):
  """Another run holds the workdir's lock."""


def _is_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, under another user.
    return True
  return True


def job_id() -> str:
  """The scheduler job this process runs in ('' outside one).

  A job that its scheduler requeues on another node keeps its id.
  """
  return next((f'{name}={os.environ[name]}' for name in JOB_ID_VARIABLES
               if os.environ.get(name)), '')


def _try_flock(fd: int, operation: int) -> bool:
  """flock without blocking; False if another open file holds the lock."""
  try:
    fcntl.flock(fd, operation | fcntl.LOCK_NB)
  except BlockingIOError:
    return False
  return True


def _is_current(fd: int, path: str) -> bool:
  """Whether `fd` is still the file at `path` (a holder removes it last)."""
  try:
    on_disk = os.stat(path)
  except FileNotFoundError:
    return False
  mine = os.fstat(fd)
  return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def _read_holder(fd: int) -> dict | None:
  """The holder record in the lock file; None if empty, {} if unreadable."""
  text = os.pread(fd, 1 << 16, 0)
  if not text:
    return None
  try:
    holder = json.loads(text)
  except json.JSONDecodeError:  # Its writer died while writing it.
    return {}
  return holder if isinstance(holder, dict) else {}


def _describe(holder: dict | None) -> str:
  if not holder or 'pid' not in holder:
    return 'a run whose lock record is being written or unreadable'
  job = f', job {holder["job"]}' if holder.get('job') else ''
  return (f'pid {holder["pid"]} on host {holder.get("host")}{job} since '
          f'{holder.get("started")}')


def _silent_s(fd: int) -> float:
  """Seconds since the lock's holder last refreshed it (its heartbeat)."""
  return time.time() - os.fstat(fd).st_mtime


def _presumed_live(holder: dict, fd: int) -> bool:
  """Whether the holder of a record left unreleased may still run.

  On this host its pid answers (a run whose pid lives on took no flock: a
  pid reused, or an older version of this code). Another host cannot be
  asked: its run counts as live while it refreshes the lock (HEARTBEAT_S).
  """
  if holder.get('host') == socket.gethostname():
    return _is_running(holder.get('pid', 0))
  return _silent_s(fd) < STALE_S


def _check_takeover(workdir: str, fd: int, holder: dict, config_hash: str,
                    force: bool) -> None:
  """Raises unless the unreleased record `holder` may be taken over.

  Taken over: with force; by the same scheduler job (requeued on another
  node); or when its holder is not presumed live (_presumed_live) and, on
  another host, ran the same experiment (config hash).
  """
  path, who = os.path.join(workdir, LOCK_FILE), _describe(holder)
  if force:
    logging.warning('--force_unlock: taking over %s from %s.', path, who)
    return
  if not holder:  # Records are written under the flock: its writer died.
    logging.warning('Taking over %s, whose record is unreadable.', path)
    return
  same_host = holder.get('host') == socket.gethostname()
  if holder.get('job') and holder['job'] == job_id():
    logging.warning('Taking over %s from %s: the same job, restarted.', path,
                    who)
    return
  if not _presumed_live(holder, fd) and (
      same_host or holder.get('config_hash') == config_hash):
    logging.warning('Taking over %s: its holder, %s, is gone.', path, who)
    return
  if same_host:
    raise WorkdirInUseError(
        f'{workdir} is in use by {who}; wait for it or use another '
        '--workdir (or, if that pid is not a run in this workdir, rerun with '
        '--force_unlock).')
  raise WorkdirInUseError(
      f'{workdir} is locked by {who}, last seen {_silent_s(fd):.0f} s ago, '
      'which cannot be checked from here; if that run is gone, rerun with '
      '--force_unlock (the same experiment takes the lock over by itself '
      f'once it has been silent for {STALE_S} s).')


def _acquire(workdir: str) -> int:
  """An open lock file of `workdir` that this process holds exclusively."""
  path = os.path.join(workdir, LOCK_FILE)
  deadline = time.monotonic() + _PROBE_WAIT_S
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as e:  # Another user's run.
      raise WorkdirInUseError(
          f'{workdir} is locked by {path}, which this user cannot open '
          f'({e.strerror}); use another --workdir.') from None
    try:
      if _try_flock(fd, fcntl.LOCK_EX):
        if _is_current(fd, path):
          return fd
        # Its holder released and removed it meanwhile: open it anew.
        os.close(fd)
        continue
      # A run holds it, or a reader (live_holder) for an instant.
      readers_only = _try_flock(fd, fcntl.LOCK_SH)
      holder = _read_holder(fd)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise WorkdirInUseError(
            f'{workdir} cannot be locked: its file system does not support '
            f'file locks ({e.strerror}); use a --workdir on one that does '
            '(mount NFS with locking, Lustre with -o flock).') from None
      raise
    os.close(fd)
    if not readers_only or time.monotonic() > deadline:
      raise WorkdirInUseError(
          f'{workdir} is in use by {_describe(holder)}; wait for it or use '
          'another --workdir.')
    time.sleep(0.01)


@contextlib.contextmanager
def _heartbeat(fd: int) -> Iterator[None]:
  """Refreshes the lock file's mtime every HEARTBEAT_S while in the block."""
  stop = threading.Event()

  def beat():
    while not stop.wait(HEARTBEAT_S):
      with contextlib.suppress(OSError):  # The next beat tries again.
        os.utime(fd)

  thread = threading.Thread(target=beat, name='workdir-lock-heartbeat',
                            daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()


@contextlib.contextmanager
def lock(workdir: str, config_hash: str = '',
         force: bool = False) -> Iterator[None]:
  """Holds `workdir` for this process; raises WorkdirInUseError if taken.

  Two runs in one workdir would overwrite each other's checkpoints. The lock
  is an flock on LOCK_FILE, which also records the holder (pid, host, start,
  scheduler job, experiment) for messages and a heartbeat (its mtime). The
  OS drops the flock when its holder dies, however it dies, so of any number
  of runs that start at once exactly one gets it. A released lock's file is
  removed; a file left by a run that was killed is taken over as
  _check_takeover says (`force`: always, for --force_unlock). Temporary
  files a killed run left behind are removed.
  """
  fd = _acquire(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    holder = _read_holder(fd)
    if holder is not None:
      _check_takeover(workdir, fd, holder, config_hash, force)
    record = json.dumps({
        'pid': os.getpid(), 'host': socket.gethostname(),
        'started': datetime.datetime.now().astimezone().isoformat(
            timespec='seconds'),
        'job': job_id(), 'config_hash': config_hash}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    os.fsync(fd)
    _remove_temporary_files(workdir)
  except BaseException:
    os.close(fd)  # Releases the flock; the file is the earlier holder's.
    raise
  try:
    with _heartbeat(fd):
      yield
  finally:
    # Removed while held, so that whoever opened it meanwhile sees that it
    # is gone (_is_current) instead of holding a lock nobody else sees.
    os.remove(path)
    os.close(fd)


def live_holder(workdir: str) -> str | None:
  """Who holds `workdir`'s lock and may be running: a description, or None.

  For readers (post-hoc) that must not read a workdir that is still
  training. It takes the lock shared for an instant, which a starting run
  waits out (_acquire).
  """
  try:
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    holder = _read_holder(fd)
    if not _try_flock(fd, fcntl.LOCK_SH):
      return _describe(holder)
    if holder and _presumed_live(holder, fd):
      return _describe(holder)
    return None
  finally:
    os.close(fd)


def _temporary_path(path: str) -> str:
  return f'{path}.tmp'


def _remove_temporary_files(workdir: str) -> None:
  """Removes the temporary files of writes that a kill interrupted."""
  for name in (CONFIG_FILE, SUMMARY_FILE, ATTENTION_MAPS_FILE):
    with contextlib.suppress(FileNotFoundError):
      os.remove(_temporary_path(os.path.join(workdir, name)))


@contextlib.contextmanager
def _replacing(path: str) -> Iterator[str]:
  """Yields a temporary path to write; it replaces `path` if all went well.

  Otherwise it is removed (a full disk leaves no empty file behind) and an
  OSError names it.
  """
  tmp = _temporary_path(path)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename is None:
      e.filename = tmp
    raise


def versions(packages: Sequence[str]) -> dict[str, str | None]:
  """Each package's installed version (None if it is not installed).

  What config.json and a prepared data entry record of the software.
  """
  out = {}
  for name in packages:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def write_json(path: str, value: Any) -> None:
  """Writes atomically, so a crash never leaves half a file."""
  with _replacing(path) as tmp, open(tmp, 'w') as f:
    json.dump(jsonable(value), f, indent=1, allow_nan=False)


def jsonable(value: Any) -> Any:
  """Arrays -> lists, non-finite floats -> None (strict JSON)."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    if value.ndim == 0:
      return jsonable(value[()])
    if value.dtype == np.float32:
      return [jsonable(v) for v in value]
    return jsonable(value.tolist())
  if isinstance(value, np.float32):
    # float32's shortest repr (0.772, not 0.7720000147819519): the digits
    # beyond it are noise of the conversion, not of the measurement.
    return jsonable(float(str(value)))
  if isinstance(value, (np.floating, float)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """np.savez, atomically (see write_json)."""
  with _replacing(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **arrays)


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e


def checkpoint_size(workdir: str) -> int | None:
  """Bytes of the largest checkpoint (step folder) in `workdir`, if any."""
  folder = os.path.join(workdir, 'checkpoints')
  sizes = [sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(os.path.join(folder, step))
               for name in names)
           for step in (os.listdir(folder) if os.path.isdir(folder) else [])
           if step.isdigit()]
  return max(sizes, default=None)


def write_config(workdir: str, config: dict, extra: Mapping[str, Any]) -> None:
  write_json(os.path.join(workdir, CONFIG_FILE),
             {'config': config, 'config_hash': config_hash(config), **extra})


def read_config(workdir: str) -> dict:
  """The config write_config wrote ({} if there is no config.json)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return {}
  value = _read_json(path)
  # A bare config (not wrapped by write_config) is taken as it is.
  return value.get('config', value)


def write_summary(workdir: str, value: Mapping[str, Any]) -> None:
  """Writes summary()'s value (see write_json)."""
  write_json(os.path.join(workdir, SUMMARY_FILE), value)


def read_summary(workdir: str) -> dict:
  """summary.json; raises ValueError if it is not one of this FORMAT."""
  path = os.path.join(workdir, SUMMARY_FILE)
  value = _read_json(path)
  missing = [k for k in REQUIRED_SUMMARY_KEYS if k not in value]
  if missing:
    raise ValueError(f'{path} lacks {", ".join(missing)}')
  if value.get('format') != FORMAT:
    raise ValueError(f'{path} has format {value.get("format")}, expected '
                     f'{FORMAT}')
  return value


def write_attention_maps(workdir: str, probs_SNHTT: np.ndarray,
                         pieces: list[str], label: int, step: int) -> None:
  """One review's maps per replica, its token pieces, label and step."""
  write_npz(os.path.join(workdir, ATTENTION_MAPS_FILE), probs=probs_SNHTT,
            pieces=np.array(pieces), label=label, step=step)


def read_attention_maps(workdir: str) -> dict[str, Any] | None:
  """probs [S, N, H, T', T'] cut to the valid tokens, pieces, label, step.

  None if the run wrote no maps; ValueError if the file cannot be read
  (truncated, not an npz, a key missing).
  """
  path = os.path.join(workdir, ATTENTION_MAPS_FILE)
  if not os.path.exists(path):
    return None
  try:
    # pieces must be a str array: pickled object arrays are refused.
    with np.load(path, allow_pickle=False) as npz:
      pieces = [str(p) for p in npz['pieces']]
      t = len(pieces) or npz['probs'].shape[-1]
      return dict(probs=npz['probs'][..., :t, :t], pieces=pieces,
                  label=int(npz['label']), step=int(npz['step']))
  # BadZipFile: truncated or not a zip; KeyError: a key missing; the others:
  # a damaged array inside.
  except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as e:
    raise ValueError(f'{path} is unreadable ({type(e).__name__}: '
                     f'{e})') from e


def summary(*, config: dict, config_name: str, sharing: str, seeds: list[int],
            params: dict, completed_steps: int, wall_time_s: float,
            history: list[dict], diverged: dict[int, int],
            final_attention: dict[str, np.ndarray] | None,
            exploded: Mapping[int, int] | None = None,
            sparsity_thresholds: Mapping[str, str],
            cost: dict | None = None,
            phase_s: Mapping[str, float] | None = None,
            train_batches: Mapping[str, float] | None = None) -> dict:
  """The machine-readable summary of a run (see docs/outputs.md).

  `cost` is cost.summary's FLOP and KV-cache accounting of the model;
  `phase_s` the wall time spent in each phase of the loop; `train_batches`
  the training batches' padding share and positions per example;
  `exploded` the replicas whose train loss blew up (train.flag_exploding),
  by the step.
  """
  exploded = exploded or {}
  last = history[-1] if history else {}
  # The task's test metrics: accuracy for the classifier; perplexity and
  # token accuracy for the LM.
  metrics = [k for k in last if k.startswith('test_')] or [
      'test_accuracy', 'test_loss']
  per_seed = []
  for i, seed in enumerate(seeds):
    entry = {'seed': seed, 'diverged': i in diverged,
             'diverged_at_step': diverged.get(i),
             'loss_exploded_at_step': exploded.get(i),
             **{k: last[k][i] if k in last else None for k in metrics},
             'params': params}
    if final_attention is not None:
      entry['attention'] = {k: v[i] for k, v in final_attention.items()}
    per_seed.append(entry)
  m = config['model']
  return {
      'format': FORMAT, 'condition': config['name'],
      'config_name': config_name, 'sharing': sharing, 'seeds': seeds,
      'seed_mode': config['data']['seed_mode'],
      'data_fingerprint': data_fingerprint(config),
      'num_train_steps': config['num_train_steps'],
      'completed_steps': completed_steps,
      'finished': completed_steps == config['num_train_steps'],
      'wall_time_s': wall_time_s, 'phase_s': dict(phase_s or {}),
      'train_batches': dict(train_batches or {}),
      'num_layers': m['num_layers'],
      'num_heads': m['num_heads'],
      'sparsity_thresholds': dict(sparsity_thresholds), 'params': params,
      'cost': cost,
      'per_seed': per_seed, 'history': history}


def _aside(folder: str) -> str:
  return folder.rstrip(os.sep) + '.old'


def recover_swap(final: str) -> None:
  """Undoes a swap_in that stopped between its renames (see there)."""
  old = _aside(final)
  if os.path.isdir(old):
    if os.path.exists(final):
      shutil.rmtree(old)
    else:
      os.rename(old, final)


def swap_in(built: str, final: str) -> None:
  """Makes the folder `built` the folder `final`, replacing it as a set.

  A reader finds the old set or the new one, never a mix of the two: `final`
  is renamed aside, `built` renamed to `final`, then the old set deleted. A
  crash between the renames leaves the old set whole beside `final`, where
  recover_swap puts it back.
  """
  recover_swap(final)
  old = _aside(final)
  if os.path.exists(final):
    os.rename(final, old)
  os.rename(built, final)
  if os.path.exists(old):
    shutil.rmtree(old)
