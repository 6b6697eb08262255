"""SeedWriters: TensorBoard streams over the seed axis with CLU writers.

`tb/agg` gets mean and standard deviation over the replicas that are still
finite (plus the logging writer, so the console shows them); `tb/seed_XX`
gets each replica's own values under the same tags, so TensorBoard overlays
the seeds as runs.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from clu import metric_writers
import numpy as np


class SeedWriters:
  """One aggregate writer plus one writer per seed."""

  def __init__(self, workdir: str, seeds: Sequence[int]):
    tb = os.path.join(workdir, 'tb')
    self.agg = metric_writers.create_default_writer(
        os.path.join(tb, 'agg'), asynchronous=True)
    self.per_seed = [
        metric_writers.AsyncWriter(metric_writers.SummaryWriter(
            os.path.join(tb, f'seed_{i:02d}')))
        for i in range(len(seeds))]

  @property
  def all(self) -> list[metric_writers.MetricWriter]:
    return [self.agg, *self.per_seed]

  def write_hparams(self, hparams: Mapping[str, object]) -> None:
    self.agg.write_hparams(dict(hparams))

  def write_scalars(self, step: int, scalars_S: Mapping[str, np.ndarray],
                    aggregate: bool = True) -> None:
    """Writes [S] arrays: per seed, and their mean/std over finite replicas."""
    scalars_S = {k: np.asarray(v, np.float64) for k, v in scalars_S.items()}
    for i, writer in enumerate(self.per_seed):
      writer.write_scalars(step, {k: v[i] for k, v in scalars_S.items()})
    if not aggregate:
      return
    agg = {}
    for name, v_S in scalars_S.items():
      finite = v_S[np.isfinite(v_S)]
      if finite.size:
        agg[f'{name}/mean'] = finite.mean()
        agg[f'{name}/std'] = finite.std()
    self.agg.write_scalars(step, agg)

  def write_images(self, step: int, images_S: Sequence[np.ndarray],
                   tag: str) -> None:
    """One [H, W, 3] uint8 image per seed, under the same tag."""
    for writer, image in zip(self.per_seed, images_S):
      writer.write_images(step, {tag: image[None]})

  def flush(self) -> None:
    for writer in self.all:
      writer.flush()

  def close(self) -> None:
    for writer in self.all:
      writer.close()


def flatten_layers(stats_S: Mapping[str, np.ndarray],
                   prefix: str = 'attention') -> dict[str, np.ndarray]:
  """{'entropy': [S, N]} -> {'attention/entropy/layer_0': [S], ...}.

  Arrays with a trailing head axis ([S, N, H]) give one tag per layer and head.
  """
  flat = {}
  for name, value in stats_S.items():
    value = np.asarray(value)
    if value.ndim == 1:
      flat[f'{prefix}/{name}'] = value
    elif value.ndim == 2:
      for layer in range(value.shape[1]):
        flat[f'{prefix}/{name}/layer_{layer}'] = value[:, layer]
    elif value.ndim == 3:
      for layer in range(value.shape[1]):
        for head in range(value.shape[2]):
          flat[f'{prefix}/{name}/layer_{layer}/head_{head}'] = value[:, layer,
                                                                     head]
  return flat
