"""SeedWriters: events and Custom Scalars layout, read back as TensorBoard does.

Every test runs with CLU's writers and with event_writers' (no TensorFlow).
"""

import glob
import time

from google.protobuf import json_format
import numpy as np
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar import custom_scalars_plugin
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata

from jax_attnshare import event_writers
from jax_attnshare import writers as writers_lib

_SEEDS = [4, 5, 6]
_LOSS = np.array([0.5, 0.7, np.nan])  # seed 6 diverged
_ACC = np.array([0.6, 0.8, 0.9])


@pytest.fixture(autouse=True, params=['clu', 'event_writers'])
def writer_library(request, monkeypatch):
  if request.param == 'event_writers':
    monkeypatch.setattr(writers_lib, 'writer_library', lambda: event_writers)
  return request.param


class _Served:
  """What TensorBoard serves for a logdir."""

  def __init__(self, logdir: str):
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    self.provider = data_provider.MultiplexerDataProvider(multiplexer,
                                                          logdir)
    plugin = custom_scalars_plugin.CustomScalarsPlugin(base_plugin.TBContext(
        logdir=logdir, data_provider=self.provider,
        plugin_name_to_instance={}))
    self.layout = json_format.Parse(
        plugin.layout_impl(context.RequestContext(), ''), layout_pb2.Layout())

  def scalars(self) -> dict[str, dict[str, dict[int, float]]]:
    """run -> tag -> step -> value."""
    data = self.provider.read_scalars(
        context.RequestContext(), experiment_id='', plugin_name='scalars',
        downsample=1000)
    return {run: {tag: {d.step: d.value for d in points}
                  for tag, points in tags.items()}
            for run, tags in data.items()}

  def layout_steps(self) -> list[int]:
    data = self.provider.read_tensors(
        context.RequestContext(), experiment_id='',
        plugin_name=layout_metadata.PLUGIN_NAME, downsample=100)
    return [d.step for d in data['agg'][layout_metadata.CONFIG_SUMMARY_TAG]]

  def image_tags(self) -> dict[str, list[str]]:
    data = self.provider.list_blob_sequences(
        context.RequestContext(), experiment_id='', plugin_name='images')
    return {run: sorted(tags) for run, tags in data.items()}


def _write_run(workdir: str) -> None:
  """Two evaluations of a 3-seed run, attention written before test."""
  writers = writers_lib.SeedWriters(workdir, _SEEDS)
  rng = np.random.default_rng(0)
  for step in (3, 6):
    writers.write_scalars(step, {'train/loss': _LOSS + step,
                                 'train/accuracy': _ACC})
    writers.write_scalars(step, writers_lib.flatten_layers({
        'entropy': rng.random((3, 2)),  # [S, N]
        'js_adjacent_per_head': rng.random((3, 1, 2)),  # [S, N - 1, H]
        'never_finite': np.full((3, 1), np.nan)}))
    writers.write_scalars(step, writers_lib.flatten_layers(
        {'entropy': rng.random((3, 2, 2))}), aggregate=False)
    writers.write_scalars(step, {'test/accuracy': _ACC - 0.1})
    writers.write_images(step, [np.zeros((4, 4, 3), np.uint8)] * 3,
                         writers_lib.HEATMAP_TAG)
  writers.close()


def test_per_seed_runs_hold_each_replica(tmp_path):
  _write_run(str(tmp_path))
  served = _Served(str(tmp_path / 'tb'))
  scalars = served.scalars()
  assert sorted(scalars) == ['agg', 'seed_00', 'seed_01', 'seed_02']
  for i in range(3):
    run = scalars[f'seed_{i:02d}']
    assert run['train/accuracy'][6] == pytest.approx(_ACC[i])
    assert 'z_attention_per_head/entropy/layer_1/head_1' in run
  assert scalars['seed_01']['train/loss'][3] == pytest.approx(3.7)
  assert np.isnan(scalars['seed_02']['train/loss'][3])
  # Per-head statistics outside '*_per_head' are per seed only.
  assert not any('per_head/entropy' in tag for tag in scalars['agg'])
  assert served.image_tags() == {
      f'seed_{i:02d}': [writers_lib.HEATMAP_TAG] for i in range(3)}


def test_aggregate_is_over_finite_seeds(tmp_path):
  _write_run(str(tmp_path))
  agg = _Served(str(tmp_path / 'tb')).scalars()['agg']
  finite = _LOSS[:2] + 6
  mean, sd = finite.mean(), finite.std(ddof=1)
  expected = {'mean': mean, 'std': sd, 'mean-sd': mean - sd,
              'mean+sd': mean + sd}
  for suffix, value in expected.items():
    assert agg[f'train/loss/{suffix}'][6] == pytest.approx(value, rel=1e-6)
  assert agg['train/accuracy/mean+sd'][3] == pytest.approx(
      _ACC.mean() + _ACC.std(ddof=1), rel=1e-6)
  assert not any('never_finite' in tag for tag in agg)


def test_one_finite_seed_gives_a_zero_width_band(tmp_path):
  writers = writers_lib.SeedWriters(str(tmp_path), _SEEDS)
  writers.write_scalars(1, {'train/loss': np.array([np.nan, 2., np.inf])})
  writers.close()
  agg = _Served(str(tmp_path / 'tb')).scalars()['agg']
  assert {tag: points[1] for tag, points in agg.items()} == {
      'train/loss/mean': 2., 'train/loss/std': 0.,
      'train/loss/mean-sd': 2., 'train/loss/mean+sd': 2.}


def test_layout_charts_mean_and_band_of_every_aggregate(tmp_path):
  _write_run(str(tmp_path))
  served = _Served(str(tmp_path / 'tb'))
  assert [c.title for c in served.layout.category] == [
      'Train', 'Test', 'Attention per layer: entropy',
      'Attention per head: js_adjacent_per_head']
  assert [c.closed for c in served.layout.category] == [
      False, False, True, True]
  agg = served.scalars()['agg']
  series = [s for c in served.layout.category for chart in c.chart
            for s in chart.margin.series]
  for s in series:
    assert {s.value, s.lower, s.upper} <= set(agg)
  assert sorted(s.value for s in series) == sorted(
      tag for tag in agg if tag.endswith('/mean'))
  assert served.layout.category[1].chart[0] == layout_pb2.Chart(
      title='test/accuracy', margin=layout_pb2.MarginChartContent(series=[
          layout_pb2.MarginChartContent.Series(
              value='test/accuracy/mean', lower='test/accuracy/mean-sd',
              upper='test/accuracy/mean+sd')]))


def test_dashboard_groups_put_train_and_test_first(tmp_path):
  _write_run(str(tmp_path))
  served = _Served(str(tmp_path / 'tb'))
  tags = {tag for run in served.scalars().values() for tag in run}
  tags |= {tag for run in served.image_tags().values() for tag in run}
  groups = sorted({tag.split('/', 1)[0] for tag in tags})
  assert groups == ['test', 'train', writers_lib.LAYER_GROUP,
                    'z_attention_map', writers_lib.HEAD_GROUP]


def test_resume_keeps_the_whole_layout(tmp_path):
  _write_run(str(tmp_path))
  before = _Served(str(tmp_path / 'tb')).layout
  # Event files sort by the second they were opened in, then by a counter
  # that does not sort numerically; a real resume comes seconds later.
  time.sleep(1.1)
  # A resumed process writes train scalars before its first evaluation.
  writers = writers_lib.SeedWriters(str(tmp_path), _SEEDS, first_step=8)
  writers.write_scalars(9, {'train/loss': _LOSS})
  writers.close()
  served = _Served(str(tmp_path / 'tb'))
  assert served.layout == before
  assert served.layout_steps()[-1] == 9
  # One writer's file per process (besides their SessionLog START files).
  assert len(glob.glob(str(tmp_path / 'tb' / 'agg' / '*.v2'))) == 2

