"""orbax checkpoints of the seed-stacked train state plus a JSON meta item."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves `state` (every leaf has a leading seed axis) and `meta` together."""

  def __init__(self, workdir: str, max_to_keep: int):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, 'checkpoints')),
        item_names=('state', 'meta'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True))

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
