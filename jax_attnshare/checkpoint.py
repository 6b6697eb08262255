"""orbax checkpoints of the seed-stacked train state plus a JSON meta item.

A restore takes the newest checkpoint that restores: one that does not (a
truncated or missing file, a state of another model) is reported in one
warning and the one before it is tried. Nothing is ever deleted: the folder of
a step that did not restore is renamed `<step>.unrestorable` when the run
saves that step again.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from jax_attnshare import distributed

UNRESTORABLE_SUFFIX = '.unrestorable'


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
    # orbax warns for (and overrides) pruning or creating when read-only.
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            create=not read_only, read_only=read_only))
    # Reads the stored tree of a step's state to check it before restoring.
    self._state_handler = ocp.StandardCheckpointHandler()
    self._unrestorable: set[int] = set()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict):
    """Saves asynchronously; the caller decides which steps are saved."""
    if step in self._unrestorable:
      self._set_aside(step)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=True)

  def _set_aside(self, step: int) -> None:
    """Renames the folder of `step`, which did not restore, out of the way.

    orbax refuses to save a step whose folder exists, even with force=True.
    Process 0 renames it; every process of a multi-process run gets here
    (their restores failed alike) and re-lists the folder after it.
    """
    # The reload below re-lists the folder: no save may be in flight.
    self.manager.wait_until_finished()
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

  def restore(self, abstract_state: Any) -> tuple[Any, dict]:
    """Returns (state, meta) of the newest checkpoint that restores.

    Each one that does not is logged in one warning and the one before it is
    tried. Raises FileNotFoundError if there is no checkpoint and
    CheckpointError if none restores.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'{self.directory} has no checkpoint yet.')
    failures = []
    for i, step in enumerate(steps):
      # A damaged checkpoint surfaces as about any exception type from orbax
      # or tensorstore, so each one is reported and the next step tried.
      try:
        return self._restore_step(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-exception-caught
        reason = _one_line(e)
      failures.append(f'step {step} ({reason})')
      self._unrestorable.add(step)
      if i + 1 < len(steps):
        kept = ('' if self.read_only else
                f'; its folder is kept and renamed {step}{UNRESTORABLE_SUFFIX} '
                f'if the run saves step {step} again')
        logging.warning(
            'checkpoint %s does not restore (%s); trying step %d%s.',
            self._step_path(step), reason, steps[i + 1], kept)
    raise CheckpointError(
        f'no checkpoint in {self.directory} restores: {"; ".join(failures)}. '
        'Nothing was deleted; to start the run over, delete the step folders '
        f'{", ".join(map(str, sorted(steps)))} in it (or the whole workdir).')

  def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    # orbax's layout: <directory>/<step>/<item>.
    stored = self._state_handler.metadata(
        epath.Path(self._step_path(step)) / 'state')
    _check_tree(stored.tree, abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def _step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
    self._state_handler.close()


def _check_tree(stored: Any, expected: Any) -> None:
  """Raises ValueError naming the first leaf whose name, shape or dtype differ.

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
    if got != want:
      raise ValueError(f'{name} is {got[1]}{list(got[0])} in the checkpoint, '
                       f'{want[1]}{list(want[0])} in this model.')


def _stored_form(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype as orbax stores them: a typed key as its raw data."""
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def _one_line(error: Exception) -> str:
  """'<type>: <first line of the message>', for a one-line report."""
  lines = str(error).strip().splitlines()
  # tensorstore appends its whole spec as JSON to the line that says it all.
  first = lines[0].split(' [tensorstore_spec=')[0] if lines else ''
  return f'{type(error).__name__}: {first}' if first else type(error).__name__


def replica(tree: Any, index: int) -> Any:
  """Slices replica `index` out of a seed-stacked tree."""
  return jax.tree.map(lambda x: x[index], tree)
