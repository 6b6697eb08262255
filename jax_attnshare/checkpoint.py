"""orbax checkpoints of the seed-stacked train state plus a JSON meta item.

Every step folder holds CHECKSUMS_FILE, the sha256 of each file of its
items, written into the step's temporary folder before orbax renames that
into place: a committed step always has it, and a restore checks it first.
A restore takes the newest checkpoint that restores: one that does not (a
byte changed, a truncated or missing file, a state of another model) is
reported in one warning line and the one before it is tried. Nothing is ever
deleted: the folder of a step that did not restore is renamed
`<step>.unrestorable` when the run saves that step again, and orbax's
max_to_keep does not count (or delete) such folders.

Several processes restore the step that process 0 picks (the newest whose
checksums and tree check), and check that they restored the same step and
meta.

The state is saved as the devices hold it, seed-sharded and padded
(steps.SeedLayout: padding replica j repeats replica j % num_seeds), so no
device holds more than its own replicas. It restores into any other padding,
so a run resumes on any device count.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging as pylogging
import os
from typing import Any, Iterator

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from jax_attnshare import distributed

UNRESTORABLE_SUFFIX = '.unrestorable'
CHECKSUMS_FILE = 'sha256sums.json'


class CheckpointError(ValueError):
  """No checkpoint in the folder restores."""


class Checkpointer:
  """Saves `state` (every leaf has a leading seed axis) and `meta` together.

  read_only opens an existing checkpoint folder to restore from and never
  writes, prunes, renames or creates anything in it.
  """

  def __init__(self, workdir: str, max_to_keep: int | None = None,
               read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f'{workdir} has no checkpoints folder.')
    self.read_only = read_only
    defaults = ocp.path.atomicity_defaults
    temporary_path = defaults.get_default_temporary_path_class(
        epath.Path(self.directory))
    # orbax warns for (and overrides) pruning or creating when read-only. It
    # reads each step's metadata file here.
    with _quiet_libraries():
      self.manager = ocp.CheckpointManager(
          self.directory,
          item_names=('state', 'meta'),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=None if read_only else max_to_keep,
              create=not read_only, read_only=read_only,
              temporary_path_class=_checksummed(temporary_path)))
    # Reads the stored tree of a step's state to check it before restoring.
    self._state_handler = ocp.StandardCheckpointHandler()
    self._unrestorable: set[int] = set()
    # Steps without CHECKSUMS_FILE (saved by an older version).
    self._unverified: set[int] = set()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict):
    """Saves asynchronously; the caller decides which steps are saved."""
    if step in self._unrestorable:
      self._set_aside(step)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=True)

  def wait_until_finished(self) -> None:
    """Returns once the last save has committed (or raises its error)."""
    self.manager.wait_until_finished()

  def _set_aside(self, step: int) -> None:
    """Renames the folder of `step`, which did not restore, out of the way.

    orbax refuses to save a step whose folder exists, even with force=True.
    Process 0 renames it; every process of a multi-process run gets here
    (their restores failed alike) and re-lists the folder after it.
    """
    # The reload below re-lists the folder: no save may be in flight.
    self.wait_until_finished()
    path = self._step_path(step)
    target, n = path + UNRESTORABLE_SUFFIX, 1
    while os.path.exists(target):
      target, n = f'{path}{UNRESTORABLE_SUFFIX}.{n}', n + 1
    distributed.primary_only(f'renaming {path}',
                             lambda: os.rename(path, target))
    self.manager.reload()
    self._unrestorable.discard(step)
    logging.warning('Renamed the checkpoint %s, which does not restore, to %s '
                    'to save step %d again; delete it when you no longer need '
                    'it.', path, target, step)

  def restore(self, abstract_state: Any,
              num_real: int | None = None) -> tuple[Any, dict]:
    """Returns (state, meta) of the newest checkpoint that restores.

    `abstract_state`: the state as this run lays it out, whose leading axis
    holds `num_real` real replicas (all by default) and then padding that
    repeats them (steps.SeedLayout). Each checkpoint that does not restore
    is logged in one warning and the one before it is tried. Raises
    FileNotFoundError if there is no checkpoint and CheckpointError if none
    restores.
    """
    candidates = sorted(self.manager.all_steps(), reverse=True)
    if not candidates:
      raise FileNotFoundError(f'{self.directory} has no checkpoint yet.')
    failures = []
    while True:
      step = distributed.primary_value(
          'choosing the checkpoint to restore',
          lambda: self._newest_intact(candidates, abstract_state, failures))
      # Process 0 found every newer step damaged.
      self._unrestorable.update(s for s in candidates if s > step)
      candidates = [s for s in candidates if s < step]
      try:
        with _quiet_libraries():
          state, meta = self._restore_step(step, abstract_state, num_real)
        reason = None
      # A damaged checkpoint surfaces as about any exception type from orbax
      # or tensorstore, so each one is reported and the next step tried.
      except Exception as e:  # pylint: disable=broad-exception-caught
        reason = _one_line(e)
      if distributed.all_processes(reason is None):
        distributed.check_same(
            [np.int64(step),
             np.frombuffer(json.dumps(meta, sort_keys=True).encode(),
                           np.uint8)],
            f'the processes restored different checkpoints of '
            f'{self.directory}')
        if step in self._unverified:
          logging.warning('Restored checkpoint %s, which has no %s (saved by '
                          'an older version), so its bytes were not checked.',
                          self._step_path(step), CHECKSUMS_FILE)
        return state, meta
      self._unrestorable.add(step)
      reason = reason or 'it does not restore on another process'
      failures.append(f'step {step} ({reason})')
      self._report(step, reason, candidates)

  def _newest_intact(self, candidates: list[int], abstract_state: Any,
                     failures: list[str]) -> int:
    """The newest of `candidates` whose checksums and tree check.

    Raises CheckpointError if none does.
    """
    for i, step in enumerate(candidates):
      try:
        with _quiet_libraries():
          self._check_step(step, abstract_state)
        return step
      except Exception as e:  # pylint: disable=broad-exception-caught
        reason = _one_line(e)
      failures.append(f'step {step} ({reason})')
      self._report(step, reason, candidates[i + 1:])
    steps = sorted(self.manager.all_steps())
    raise CheckpointError(
        f'no checkpoint in {self.directory} restores: {"; ".join(failures)}. '
        'Nothing was deleted; to start the run over, delete the step folders '
        f'{", ".join(map(str, steps))} in it (or the whole workdir).')

  def _report(self, step: int, reason: str, older: list[int]) -> None:
    """The one warning line for a step that does not restore."""
    if not older:  # CheckpointError says it.
      return
    kept = ('' if self.read_only else
            f'; its folder is kept and renamed {step}{UNRESTORABLE_SUFFIX} '
            f'if the run saves step {step} again')
    logging.warning('checkpoint %s does not restore (%s); trying step %d%s.',
                    self._step_path(step), reason, older[0], kept)

  def _check_step(self, step: int, abstract_state: Any) -> None:
    """Raises ValueError unless the step's files and tree are intact."""
    path = epath.Path(self._step_path(step))
    if (path / CHECKSUMS_FILE).exists():
      _verify_checksums(path)
    else:
      self._unverified.add(step)
    # orbax's layout: <directory>/<step>/<item>.
    _check_tree(self._state_handler.metadata(path / 'state').tree,
                abstract_state)

  def _restore_step(self, step: int, abstract_state: Any,
                    num_real: int | None) -> tuple[Any, dict]:
    stored = ocp.tree.to_flat_dict(self._state_handler.metadata(
        epath.Path(self._step_path(step)) / 'state').tree)
    target = ocp.tree.from_flat_dict(
        {path: _stored_target(stored[path], leaf) for path, leaf in
         ocp.tree.to_flat_dict(abstract_state).items()},
        target=abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        meta=ocp.args.JsonRestore()))
    return _relayout(restored.state, abstract_state, num_real), restored.meta

  def _step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def close(self) -> None:
    self.wait_until_finished()
    self.manager.close()
    self._state_handler.close()


def _check_tree(stored: Any, expected: Any) -> None:
  """Raises ValueError naming the first leaf whose name, shape or dtype differ.

  The leading (seed) axis may differ: a state saved with another padding.
  orbax's own errors for these name no leaf, and it casts another dtype.
  """
  stored, expected = ocp.tree.to_flat_dict(stored), ocp.tree.to_flat_dict(
      expected)
  for path in sorted(stored.keys() | expected.keys()):
    name = '/'.join(path)
    if path not in stored:
      raise ValueError(f'the checkpoint lacks {name}, which this model has.')
    if path not in expected:
      raise ValueError(f'the checkpoint has {name}, which this model lacks.')
    got, want = _stored_form(stored[path]), _stored_form(expected[path])
    if (got[0][1:], got[1]) != (want[0][1:], want[1]):
      raise ValueError(f'{name} is {got[1]}{list(got[0])} in the checkpoint, '
                       f'{want[1]}{list(want[0])} in this model.')


def _stored_form(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype as orbax stores them: a typed key as its raw data."""
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def _stored_target(stored: Any, expected: Any) -> Any:
  """What to restore a leaf into: `expected`, or the stored padding.

  A state saved with another padding (another device count) is read whole
  onto every device, once, and laid out again by _relayout.
  """
  length = _stored_form(stored)[0][0]
  if length == expected.shape[0]:
    return expected
  sharding = expected.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    sharding = jax.sharding.NamedSharding(sharding.mesh,
                                          jax.sharding.PartitionSpec())
  return jax.ShapeDtypeStruct((length, *expected.shape[1:]), expected.dtype,
                              sharding=sharding)


def _relayout(state: Any, expected: Any, num_real: int | None) -> Any:
  """A restored state in the padding of `expected` (as it is if it is).

  Leaf by leaf, the first `num_real` (by default all of `expected`'s)
  replicas are the real ones and the rest repeat them.
  """
  lengths = [leaf.shape[0] for leaf in jax.tree.leaves(expected)]
  if [leaf.shape[0] for leaf in jax.tree.leaves(state)] == lengths:
    return state

  def repeat(x, length):
    real = num_real or length
    if x.shape[0] < real:
      raise ValueError(f'the checkpoint holds {x.shape[0]} replicas, this '
                       f'run {real}.')
    return x[np.arange(length) % real]

  def pick(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([repeat(x, n) for x, n in zip(leaves, lengths)])

  shardings = [leaf.sharding for leaf in jax.tree.leaves(expected)]
  out = (jax.tree.unflatten(jax.tree.structure(expected), shardings)
         if all(shardings) else None)
  return jax.jit(pick, out_shardings=out)(state)


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _files(folder: epath.Path) -> Iterator[epath.Path]:
  for path in folder.iterdir():
    if path.is_dir():
      yield from _files(path)
    else:
      yield path


def _item_files(step_dir: epath.Path) -> list[epath.Path]:
  """The files of a step's items (orbax updates its own top-level ones
  after the checksums are written)."""
  return sorted(path for item in step_dir.iterdir() if item.is_dir()
                for path in _files(item))


def _write_checksums(step_dir: epath.Path) -> None:
  sums = {str(path.relative_to(step_dir)): _sha256(path)
          for path in _item_files(step_dir)}
  (step_dir / CHECKSUMS_FILE).write_text(json.dumps({'sha256': sums},
                                                    indent=1))


def _verify_checksums(step_dir: epath.Path) -> None:
  """Raises ValueError naming the first file that differs from its sum."""
  sums = json.loads((step_dir / CHECKSUMS_FILE).read_text())['sha256']
  for name, expected in sorted(sums.items()):
    path = step_dir / name
    if not path.exists():
      raise ValueError(f'{name} is missing.')
    if _sha256(path) != expected:
      raise ValueError(f'{name} differs from its sha256 in {CHECKSUMS_FILE}.')


def _checksummed(base: type[Any]) -> type[Any]:
  """orbax's temporary-folder class `base`, writing CHECKSUMS_FILE.

  orbax finalizes each item's folder, then the step's, whose finalize
  renames it into place (or writes its commit file): the checksums go in
  just before. A step folder is named by its step number.
  """

  class Checksummed(base):

    async def finalize(self, *args, **kwargs):
      if self.get_final().name.isdigit():
        await asyncio.to_thread(_write_checksums, self.get())
      await super().finalize(*args, **kwargs)

  return Checksummed


class LibraryFilter(pylogging.Filter):
  """Drops the records of orbax, tensorstore and asyncio."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return not (record.name == 'asyncio' or any(
        f'{os.sep}{package}{os.sep}' in record.pathname
        for package in ('orbax', 'tensorstore')))


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
  """Silences the libraries while checkpoints are listed and tried.

  A damaged one makes orbax log tracebacks and file contents, and its
  coroutines complain as they are cancelled; the one warning line of
  Checkpointer.restore says what matters.
  """
  loggers = [pylogging.getLogger(name) for name in ('absl', 'asyncio')]
  quiet = LibraryFilter()
  for logger in loggers:
    logger.addFilter(quiet)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeFilter(quiet)


def _one_line(error: Exception) -> str:
  """'<type>: <first line of the message>', for a one-line report."""
  lines = str(error).strip().splitlines()
  # tensorstore appends its whole spec as JSON to the line that says it all,
  # or (orbax) a pointer to it, printed as a bound method.
  first = lines[0].split(' [tensorstore_spec=')[0] if lines else ''
  first = first.split(' See full TensorStore details: ')[0]
  return f'{type(error).__name__}: {first}' if first else type(error).__name__


def replica(tree: Any, index: int) -> Any:
  """Slices replica `index` out of a seed-stacked tree."""
  return jax.tree.map(lambda x: x[index], tree)
