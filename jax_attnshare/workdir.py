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
import hashlib
import json
import math
import os
import shutil
import socket
from typing import Any, Iterator, Mapping
import zipfile

from absl import logging
import numpy as np

CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
ATTENTION_MAPS_FILE = 'attention_maps.npz'
# Held by the run that trains in the workdir (see lock).
LOCK_FILE = '.lock'
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
                      'steps_per_call')
DATA_LOCATION_FIELDS = ('data_dir', 'allow_download')


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


def _read_holder(path: str) -> dict | None:
  """The lock file's {'pid', 'host', 'started'}; None if there is none.

  Raises json.JSONDecodeError for a lock being written, or whose writer died
  at once.
  """
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:  # Released meanwhile.
    return None


def live_holder(workdir: str) -> str | None:
  """Who holds `workdir`'s lock, if that holder may be alive; else None.

  'pid P on host H since T' for a live holder on this host; one on another
  host cannot be checked from here and counts as alive (said in the text),
  as does a lock file that cannot be read yet. None: no lock, or one whose
  holder died. Reads only: a reader (post-hoc) uses it to keep off a workdir
  that a run is writing.
  """
  path = os.path.join(workdir, LOCK_FILE)
  try:
    holder = _read_holder(path)
  except json.JSONDecodeError:
    return f'the run named in {path}, which cannot be read yet'
  if holder is None:
    return None
  who = (f'pid {holder["pid"]} on host {holder["host"]} since '
         f'{holder["started"]}')
  if holder['host'] != socket.gethostname():
    return f'{who} (another host, which cannot be checked from here)'
  return who if _is_running(holder['pid']) else None


def _check_holder(workdir: str, path: str) -> None:
  """Removes the lock at `path` if its holder is dead, else raises."""
  try:
    holder = _read_holder(path)
  except json.JSONDecodeError:
    raise WorkdirInUseError(
        f'{workdir} is locked by {path}, which cannot be read; if no run '
        'uses this workdir, delete that file.') from None
  if holder is None:
    return
  pid, host = holder['pid'], holder['host']
  if host != socket.gethostname():
    raise WorkdirInUseError(
        f'{workdir} is in use by pid {pid} on host {host} since '
        f'{holder["started"]}, which cannot be checked from here; if that '
        f'run is gone, delete {path}.')
  if _is_running(pid):
    raise WorkdirInUseError(
        f'{workdir} is in use by pid {pid} on host {host} since '
        f'{holder["started"]}; wait for it or use another --workdir.')
  logging.warning('Taking over %s: its holder, pid %d (since %s), is gone.',
                  path, pid, holder['started'])
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds `workdir` for this process; raises WorkdirInUseError if taken.

  Two runs in one workdir would overwrite each other's checkpoints. The lock
  is LOCK_FILE, created atomically, naming the holder's pid, host and start
  time; one whose holder died on this host is taken over.
  """
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      break
    except FileExistsError:
      _check_holder(workdir, path)
  with os.fdopen(fd, 'w') as f:
    json.dump({'pid': os.getpid(), 'host': socket.gethostname(),
               'started': datetime.datetime.now().astimezone().isoformat(
                   timespec='seconds')}, f)
  try:
    yield
  finally:
    os.remove(path)


def write_json(path: str, value: Any) -> None:
  """Writes atomically, so a crash never leaves half a file."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(jsonable(value), f, indent=1, allow_nan=False)
  os.replace(tmp, path)


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
  tmp = f'{path}.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from e


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
            sparsity_thresholds: Mapping[str, str],
            cost: dict | None = None,
            phase_s: Mapping[str, float] | None = None) -> dict:
  """The machine-readable summary of a run (see README, 'Workdir').

  `cost` is cost.summary's FLOP and KV-cache accounting of the model;
  `phase_s` the wall time spent in each phase of the loop.
  """
  last = history[-1] if history else {}
  # The task's test metrics: accuracy for the classifier; perplexity and
  # token accuracy for the LM.
  metrics = [k for k in last if k.startswith('test_')] or [
      'test_accuracy', 'test_loss']
  per_seed = []
  for i, seed in enumerate(seeds):
    entry = {'seed': seed, 'diverged': i in diverged,
             'diverged_at_step': diverged.get(i),
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
