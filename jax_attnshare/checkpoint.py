"""orbax checkpoints of the seed-stacked train state plus a JSON meta item."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves `state` (every leaf has a leading seed axis) and `meta` together.

  read_only opens an existing checkpoint folder to restore from and never
  writes, prunes or creates anything in it.
  """

  def __init__(self, workdir: str, max_to_keep: int | None = None,
               read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f'{workdir} has no checkpoints folder.')
    # orbax warns for (and overrides) pruning or creating when read-only.
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            create=not read_only, read_only=read_only))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict):
    """Saves asynchronously; the caller decides which steps are saved."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                      force=True)

  def restore(self, abstract_state: Any, step: int | None = None):
    """Returns (state, meta) of `step` (default: the latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'{self.directory} has no checkpoint yet.')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def replica(tree: Any, index: int) -> Any:
  """Slices replica `index` out of a seed-stacked tree."""
  return jax.tree.map(lambda x: x[index], tree)
