"""main trains on a machine without TensorFlow, tensorflow-datasets and clu.

JAX GPU and TPU machines often lack all three. main then reads a prepared
entry with numpy and writes TensorBoard events through tensorboard's own
writer: the tags, plugins, steps and values CLU's writers give the same run.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from jax_attnshare import configs
from jax_attnshare import data_cache
from jax_attnshare import train
import tiny_tfds

# Tiny models: compile time dominates, so let XLA skip most optimizations
# (the subprocess gets it through JAX_DISABLE_MOST_OPTIMIZATIONS).
jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/kv_share.py:tiny'

# main, in an interpreter where the three packages cannot be found, as if
# they were not installed: every finder answers None for them (so
# importlib.util.find_spec, which etils asks, says None too).
_WITHOUT_TENSORFLOW = '''
import importlib.abc, runpy, sys
HIDDEN = ('tensorflow', 'tensorflow_datasets', 'clu')

class Hide(importlib.abc.MetaPathFinder):
  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.partition('.')[0] in HIDDEN:
      return None
    return self.finder.find_spec(name, path, target)

  def invalidate_caches(self):
    getattr(self.finder, 'invalidate_caches', lambda: None)()

  # importlib.metadata asks the finders for distributions (main checks the
  # versions of jax, flax, ...): those stay visible.
  def find_distributions(self, *args, **kwargs):
    find = getattr(self.finder, 'find_distributions', None)
    return find(*args, **kwargs) if find else iter(())

sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
sys.argv = ['main', *sys.argv[1:]]
try:
  runpy.run_module('jax_attnshare.main', run_name='__main__', alter_sys=True)
finally:
  print('imported:', sorted({m.partition('.')[0] for m in sys.modules}
                             & set(HIDDEN)))
'''


def _events(logdir: str) -> dict:
  """{tag: (plugin, steps, values)} as TensorBoard serves the run."""
  events = plugin_event_accumulator.EventAccumulator(
      logdir, size_guidance={plugin_event_accumulator.TENSORS: 0})
  events.Reload()
  out = {}
  for tag in events.Tags()['tensors']:
    plugin = events.SummaryMetadata(tag).plugin_data.plugin_name
    tensors = events.Tensors(tag)
    values = [tensor_util.make_ndarray(t.tensor_proto) for t in tensors]
    out[tag] = (plugin, [t.step for t in tensors], values)
  return out


# Scalars that measure time, not the run.
_TIMINGS = ('train/examples_per_sec', 'train/tokens_per_sec')


def _same_values(tag, plugin, ours, theirs):
  for a, b in zip(ours, theirs):
    if plugin == 'scalars' and tag not in _TIMINGS:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    elif plugin == 'images':
      # Width and height; the PNGs' bytes depend on the encoder.
      assert list(a[:2]) == list(b[:2]) and len(a) == len(b)
    elif plugin == 'custom_scalars':
      assert a.item() == b.item()


@pytest.mark.slow
def test_tiny_main_without_tensorflow_writes_what_clu_writes(tmp_path):
  data_dir = tiny_tfds.write_tiny_imdb(str(tmp_path / 'tfds'))
  cache = str(tmp_path / 'prepared')
  config = configs.load_config(os.path.join(ROOT, CONFIG))
  config.data.update(data_dir=data_dir, cache_dir=cache)
  data_cache.load_or_prepare(config.data)  # Here, with tensorflow-datasets.
  train.train_and_evaluate(config, str(tmp_path / 'clu'))  # CLU's writers.

  workdir = tmp_path / 'bare'
  result = subprocess.run(
      [sys.executable, '-c', _WITHOUT_TENSORFLOW, f'--config={CONFIG}',
       f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
       f'--config.data.cache_dir={cache}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
      env=dict(os.environ, JAX_PLATFORMS='cpu',
               JAX_DISABLE_MOST_OPTIMIZATIONS='1'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'imported: []' in result.stdout
  assert "written by tensorboard's event writer" in result.stderr
  assert 'Finished 6 steps' in result.stderr.splitlines()[-1]

  runs = sorted(os.listdir(tmp_path / 'clu' / 'tb'))
  assert runs == ['agg', 'seed_00', 'seed_01']
  assert sorted(os.listdir(workdir / 'tb')) == runs
  for run in runs:
    ours = _events(str(workdir / 'tb' / run))
    theirs = _events(str(tmp_path / 'clu' / 'tb' / run))
    assert ({tag: value[:2] for tag, value in ours.items()}
            == {tag: value[:2] for tag, value in theirs.items()}), run
    for tag, (plugin, _, values) in ours.items():
      _same_values(tag, plugin, values, theirs[tag][2])
  # The hparams and the layout are in tb/agg, the heatmaps per seed.
  agg = _events(str(workdir / 'tb' / 'agg'))
  assert agg['_hparams_/session_start_info'][0] == 'hparams'
  assert agg['custom_scalars__config__'][0] == 'custom_scalars'
  seed = _events(str(workdir / 'tb' / 'seed_00'))
  assert seed['z_attention_map/heatmap'][:2] == ('images', [3, 6])
