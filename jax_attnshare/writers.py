"""SeedWriters: TensorBoard streams over the seed axis.

The streams are CLU's writers where clu is installed, and event_writers'
(the same events, without TensorFlow) where it is not.

`tb/agg` gets, over the replicas that are still finite, the mean, the sample
standard deviation and the band mean - sd .. mean + sd, plus a Custom Scalars
layout that draws each mean with its band in one chart. The logging writer
shows the mean and standard deviation on the console. `tb/seed_XX` gets each
replica's own values under the same tags, so TensorBoard overlays the seeds as
runs.

TensorBoard's Scalars and Time Series dashboards group tags by the part before
the first '/' and order the groups by name. The loop's curves keep 'train' and
'test'; the attention groups start with 'z_' so that their couple of hundred
charts come after those instead of first.
"""

from __future__ import annotations

import glob
import os
import time
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import logging
import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.summary.writer import record_writer
from tensorboard.util import tensor_util

# One scalar per layer (or adjacent layer pair), aggregated over seeds.
LAYER_GROUP = 'z_attention_layer'
# One scalar per layer and head; only '*_per_head' statistics are aggregated.
HEAD_GROUP = 'z_attention_per_head'
# The attention map of one fixed test review; Time Series groups images too.
HEATMAP_TAG = 'z_attention_map/heatmap'

# Suffixes of the aggregate tags; a Custom Scalars margin chart draws MEAN
# between LOWER and UPPER.
MEAN, STD, LOWER, UPPER = '/mean', '/std', '/mean-sd', '/mean+sd'

# Custom Scalars category titles, in the order the layout lists them.
_GROUP_TITLES = {'train': 'Train', 'test': 'Test',
                 LAYER_GROUP: 'Attention per layer',
                 HEAD_GROUP: 'Attention per head'}


def writer_library() -> ModuleType:
  """clu.metric_writers if clu imports, else event_writers.

  clu's imports TensorFlow; both write the same tags.
  """
  # pylint: disable=g-import-not-at-top
  try:
    from clu import metric_writers
  except ImportError as e:
    from jax_attnshare import event_writers
    logging.info('TensorBoard events are written by tensorboard\'s event '
                 'writer: clu cannot be imported (%s).', e)
    return event_writers
  return metric_writers


class SeedWriters:
  """One aggregate writer plus one writer per seed."""

  def __init__(self, workdir: str, seeds: Sequence[int], first_step: int = 0,
               write: bool = True):
    """`first_step`: the step the run starts from, the restored one if any.

    write=False (every process but 0 of a multi-process run): the same
    calls, writing nothing.
    """
    tb = os.path.join(workdir, 'tb')
    agg_dir = os.path.join(tb, 'agg')
    if write:
      # Past first_step, and at step 0 (the hparams) on a fresh start, this
      # process writes again what an earlier one wrote before it stopped.
      for run in ('agg', *(f'seed_{i:02d}' for i in range(len(seeds)))):
        _mark_restart(os.path.join(tb, run),
                      first_step + 1 if first_step else 0)
    # On resume, the layout keeps charting what the earlier process wrote.
    self._charted = dict.fromkeys(_charted_names(agg_dir) if write else [])
    self._layout_written = False

    library = writer_library()

    def writer(make: Callable[[], Any]):
      """make()'s writer, asynchronous; unless `write`, one of nothing."""
      return (library.AsyncWriter(make()) if write
              else library.MultiWriter([]))

    self._agg_events = writer(lambda: library.SummaryWriter(agg_dir))
    self.agg = library.MultiWriter([
        writer(library.LoggingWriter), self._agg_events])
    self.per_seed = [
        writer(lambda i=i: library.SummaryWriter(
            os.path.join(tb, f'seed_{i:02d}')))
        for i in range(len(seeds))]

  @property
  def all(self) -> list[Any]:
    return [self.agg, *self.per_seed]

  def write_hparams(self, hparams: Mapping[str, object]) -> None:
    self.agg.write_hparams(dict(hparams))

  def write_scalars(self, step: int, scalars_S: Mapping[str, np.ndarray],
                    aggregate: bool = True) -> None:
    """Writes [S] arrays: per seed, and their aggregate over finite replicas.

    The aggregate of NAME is NAME/mean and NAME/std (sample sd; 0 with one
    finite replica) on the console and in `tb/agg`, and NAME/mean-sd and
    NAME/mean+sd in `tb/agg` only. The Custom Scalars layout is rewritten
    whenever a name is aggregated for the first time, and at the first
    aggregate of a process, so that a resumed run's layout outlasts any
    events TensorBoard drops after the restored step.
    """
    scalars_S = {k: np.asarray(v, np.float64) for k, v in scalars_S.items()}
    for i, writer in enumerate(self.per_seed):
      writer.write_scalars(step, {k: v[i] for k, v in scalars_S.items()})
    if not aggregate:
      return
    stats, band = {}, {}
    for name, v_S in scalars_S.items():
      finite = v_S[np.isfinite(v_S)]
      if finite.size:
        mean = finite.mean()
        # ddof=1 as in analysis.describe, so the band is the "± sd" of the
        # results tables.
        std = finite.std(ddof=1) if finite.size > 1 else 0.
        stats[name + MEAN], stats[name + STD] = mean, std
        band[name + LOWER], band[name + UPPER] = mean - std, mean + std
    self.agg.write_scalars(step, stats)
    self._agg_events.write_scalars(step, band)
    # Only names with a finite replica got tags, so the layout names only
    # tags that exist.
    new = [name for name in scalars_S
           if name + MEAN in stats and name not in self._charted]
    if new or (self._charted and not self._layout_written):
      self._charted.update(dict.fromkeys(new))
      self._write_layout(step)

  def _write_layout(self, step: int) -> None:
    tag = layout_metadata.CONFIG_SUMMARY_TAG
    proto = custom_scalars_layout(self._charted)
    self._agg_events.write_summaries(
        step, {tag: np.array(proto.SerializeToString(), dtype=object)},
        {tag: layout_metadata.create_summary_metadata().SerializeToString()})
    self._layout_written = True

  def write_images(self, step: int, images_S: Sequence[np.ndarray],
                   tag: str) -> None:
    """One [H, W, 3] uint8 image per seed, under the same tag."""
    for writer, image in zip(self.per_seed, images_S):
      writer.write_images(step, {tag: image[None]})

  def close(self) -> None:
    for writer in self.all:
      writer.close()


def custom_scalars_layout(names: Iterable[str]) -> layout_pb2.Layout:
  """Custom Scalars layout: a mean ± sd margin chart per aggregated name.

  Categories come in the order Train, Test, attention per layer, attention
  per head (one category per statistic), then any other group; all but Train
  and Test start collapsed.
  """
  charts = {}
  for name in names:
    series = layout_pb2.MarginChartContent.Series(
        value=name + MEAN, lower=name + LOWER, upper=name + UPPER)
    charts.setdefault(_category(name), []).append(layout_pb2.Chart(
        title=name, margin=layout_pb2.MarginChartContent(series=[series])))
  return layout_pb2.Layout(category=[
      layout_pb2.Category(title=title, chart=charts[rank, title],
                          closed=rank > 1)
      for rank, title in sorted(charts)])


def _category(name: str) -> tuple[int, str]:
  """(position of its group in _GROUP_TITLES, category title) of a name."""
  group, _, rest = name.partition('/')
  if group not in _GROUP_TITLES:
    return len(_GROUP_TITLES), group
  title = _GROUP_TITLES[group]
  if group in (LAYER_GROUP, HEAD_GROUP):
    title += ': ' + rest.partition('/')[0]
  return list(_GROUP_TITLES).index(group), title


def _mark_restart(logdir: str, step: int) -> None:
  """Has TensorBoard drop the events in `logdir` at `step` and after.

  Event files of file_version 2 are purged only by SessionLog START events:
  TensorBoard takes the first one it reads as the run's start and, at each
  later one, drops the events it read before from that step on, so a rerun's
  steps show once, not twice. So every process writes one, in a file of its
  own named to sort after the earlier processes' files and before its own
  (TensorBoard reads a run's files in name order): the time in seconds, then
  nothing, where the writers add '.host.pid...'.
  """
  os.makedirs(logdir, exist_ok=True)
  now = time.time()
  path = os.path.join(logdir, f'events.out.tfevents.{int(now):010d}')
  with open(path, 'wb') as f:
    records = record_writer.RecordWriter(f)
    for event in (
        event_pb2.Event(wall_time=now, file_version='brain.Event:2'),
        event_pb2.Event(wall_time=now, step=step, session_log=event_pb2
                        .SessionLog(status=event_pb2.SessionLog.START))):
      records.write(event.SerializeToString())


def _charted_names(logdir: str) -> list[str]:
  """The names charted by the last layout in logdir, if there is one."""
  if not glob.glob(os.path.join(logdir, 'events.out.tfevents.*')):
    return []
  # Read as TensorBoard reads it: the last layout in step order wins.
  events = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.TENSORS: 1})
  events.Reload()
  tag = layout_metadata.CONFIG_SUMMARY_TAG
  if tag not in events.Tags()[event_accumulator.TENSORS]:
    return []
  proto = events.Tensors(tag)[-1].tensor_proto
  last = layout_pb2.Layout.FromString(tensor_util.make_ndarray(proto).item())
  return [series.value.removesuffix(MEAN) for category in last.category
          for chart in category.chart for series in chart.margin.series]


def flatten_layers(stats_S: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """{'entropy': [S, N]} -> {'z_attention_layer/entropy/layer_0': [S], ...}.

  Arrays with a trailing head axis ([S, N, H]) give one tag per layer and
  head, under HEAD_GROUP: 'z_attention_per_head/entropy/layer_0/head_0'.
  """
  flat = {}
  for name, value in stats_S.items():
    value = np.asarray(value)
    if value.ndim == 1:
      flat[f'{LAYER_GROUP}/{name}'] = value
    elif value.ndim == 2:
      for layer in range(value.shape[1]):
        flat[f'{LAYER_GROUP}/{name}/layer_{layer}'] = value[:, layer]
    elif value.ndim == 3:
      for layer in range(value.shape[1]):
        for head in range(value.shape[2]):
          flat[f'{HEAD_GROUP}/{name}/layer_{layer}/head_{head}'] = (
              value[:, layer, head])
  return flat
