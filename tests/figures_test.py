"""Tests for jax_attnshare.figures: files are written, the image is fast."""

import pathlib
import tempfile
import time

from absl.testing import absltest
from matplotlib import pyplot as plt
import numpy as np
import pandas as pd

from jax_attnshare import figures


def _probs(n, h, t, seed=0):
  x = np.random.default_rng(seed).random((n, h, t, t)).astype(np.float32)
  return x / x.sum(-1, keepdims=True)


def _tidy() -> pd.DataFrame:
  """Two conditions, 4 seeds, 2 layers; history at two steps."""
  rng = np.random.default_rng(0)
  rows = []
  for c, shift in (('none', 0.), ('k', 0.3)):
    for seed in range(4):
      for step, source in ((50, 'history'), (100, 'history'), (100, 'final')):
        base = dict(condition=c, seed=seed, step=step, source=source,
                    diverged=False)
        rows.append(dict(base, metric='test_accuracy', layer=pd.NA,
                         value=0.5 + step / 400 + rng.normal(0, 0.01)))
        for metric in ('entropy', 'sparsity_abs_0.01', 'js_adjacent'):
          layers = rng.normal(2 + shift, 0.05, 2 if metric != 'js_adjacent'
                              else 1)
          rows.append(dict(base, metric=metric, layer=pd.NA,
                           value=layers.mean()))
          rows += [dict(base, metric=metric, layer=i, value=v)
                   for i, v in enumerate(layers)]
  df = pd.DataFrame(rows)
  df['layer'] = df['layer'].astype('Int64')
  return df


class FiguresTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.dir = pathlib.Path(tmp.name)

  def test_heatmap_image_is_rgb_fast_and_leaks_no_figure(self):
    figures.attention_heatmap_image(_probs(1, 1, 4), None, 'warm up')
    start = time.perf_counter()
    img = figures.attention_heatmap_image(_probs(3, 8, 64), None, 'kv')
    self.assertLess(time.perf_counter() - start, 1.0)
    self.assertEqual(img.dtype, np.uint8)
    self.assertEqual(img.ndim, 3)
    self.assertEqual(img.shape[2], 3)
    self.assertGreater(img.shape[1], img.shape[0])  # 8 heads wide, 3 high.
    self.assertGreater(img.std(), 10)  # Not a blank canvas.
    self.assertEqual(plt.get_fignums(), [])

  def test_pieces_label_short_reviews_only(self):
    probs = _probs(2, 2, 8)
    plain = figures.attention_heatmap_image(probs, None, 't')
    labelled = figures.attention_heatmap_image(probs, list('abcdefgh'), 't')
    self.assertNotEqual(plain.shape, labelled.shape)
    long = _probs(1, 2, figures.MAX_LABELLED_TOKENS + 1)
    pieces = [str(i) for i in range(figures.MAX_LABELLED_TOKENS + 1)]
    self.assertEqual(figures.attention_heatmap_image(long, pieces, 't').shape,
                     figures.attention_heatmap_image(long, None, 't').shape)

  def test_report_figures_are_written(self):
    tidy = _tidy()
    final = tidy[tidy['source'] == 'final']
    conditions = ['none', 'k']
    thresholds = {'abs_0.01': 'weight < 0.01'}
    self.assertTrue(figures.accuracy_curves(tidy, conditions,
                                            self.dir / 'acc.png'))
    figures.box_panels(final, conditions, ['test_accuracy', 'entropy'],
                       thresholds, 'boxes', self.dir / 'box.png')
    figures.layer_progression(final, conditions,
                              ['entropy', 'sparsity_abs_0.01', 'js_adjacent'],
                              thresholds, self.dir / 'layers.png')
    figures.attention_heatmaps(_probs(2, 2, 6)[:, :, :5, :5], list('abcde'),
                               'maps', self.dir / 'maps.png')
    figures.js_matrices({'none': np.array([[0, .1], [.1, 0]]),
                         'k': np.array([[0, .2], [.2, 0]])},
                        self.dir / 'js.png')
    for name in ('acc', 'box', 'layers', 'maps', 'js'):
      self.assertGreater((self.dir / f'{name}.png').stat().st_size, 1000)
    self.assertEqual(plt.get_fignums(), [])

  def test_no_history_no_curve(self):
    tidy = _tidy()
    self.assertFalse(figures.accuracy_curves(
        tidy[tidy['source'] == 'final'], ['none'], self.dir / 'acc.png'))
    self.assertFalse((self.dir / 'acc.png').exists())

  def test_sparsity_label_uses_threshold_text(self):
    self.assertEqual(figures.metric_label('sparsity_rel_1',
                                          {'rel_1': 'weight < 1/n'}),
                     'sparsity (weight < 1/n)')


if __name__ == '__main__':
  absltest.main()
