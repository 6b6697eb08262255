"""Tests for jax_attnshare.report.figures: files are written, the image is fast."""

import pathlib
import tempfile
import time
from unittest import mock

from absl.testing import absltest
from matplotlib import collections as mpl_collections
from matplotlib import colors as mpl_colors
from matplotlib import container
from matplotlib import figure as mpl_figure
from matplotlib import pyplot as plt
import numpy as np
import pandas as pd

from jax_attnshare.report import figures


def _probs(n, h, t, seed=0):
  x = np.random.default_rng(seed).random((n, h, t, t)).astype(np.float32)
  return x / x.sum(-1, keepdims=True)


def _tidy(history_steps=(50, 100)) -> pd.DataFrame:
  """Two conditions, 4 seeds, 2 layers; history at history_steps."""
  rng = np.random.default_rng(0)
  rows = []
  for c, shift in (('none', 0.), ('k', 0.3)):
    for seed in range(4):
      for step, source in ([(s, 'history') for s in history_steps]
                           + [(100, 'final')]):
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

  def test_short_review_labels_every_token_on_a_log_scale(self):
    pieces = ['▁a', '▁good', '▁film', ',', '▁really', '▁fun']
    title = figures.review_title(1, 'classify', 'imdb_reviews')
    fig = figures.attention_figure(_probs(3, 2, 8), pieces, title)
    ax = fig.axes[0]
    self.assertEqual([x.get_text() for x in ax.get_xticklabels()],
                     pieces * 2)  # Under each head.
    self.assertEqual([y.get_text() for y in ax.get_yticklabels()],
                     pieces * 3)  # Beside each layer.
    (image,) = ax.get_images()
    self.assertIsInstance(image.norm, mpl_colors.LogNorm)
    t = len(pieces)
    self.assertAlmostEqual(image.norm.vmin, figures.UNIFORM_FLOOR / t)
    self.assertEqual(image.norm.vmax, 1.0)
    # A uniform map sits mid-scale, not in the dark end as on a linear one.
    self.assertBetween(float(image.norm(1 / t)), 0.3, 0.7)
    self.assertIn('log scale', fig.axes[1].get_ylabel())
    self.assertEqual(fig.get_suptitle(), 'test review (positive)')

  def test_long_review_labels_every_kth_token(self):
    t = 5 * figures.MAX_LABELLED_TOKENS
    pieces = [f'p{i}' for i in range(t)]
    ax = figures.attention_figure(_probs(1, 2, t), pieces, 't').axes[0]
    labels = [x.get_text() for x in ax.get_xticklabels()]
    every = int(labels[1][1:])
    self.assertGreater(every, 1)
    self.assertEqual(labels, pieces[::every] * 2)
    self.assertIn(f'1 in {every} labelled', ax.get_xlabel())

  def test_unlabelled_without_pieces(self):
    ax = figures.attention_figure(_probs(2, 2, 8), None, 't').axes[0]
    self.assertEmpty(ax.get_xticklabels())
    self.assertEmpty(ax.get_yticklabels())

  def test_review_title_names_the_class(self):
    self.assertEqual(figures.review_title(0, 'classify', 'imdb_reviews'),
                     'test review (negative)')
    self.assertEqual(figures.review_title(np.int32(1), 'classify',
                                          'imdb_reviews'),
                     'test review (positive)')
    self.assertEqual(figures.review_title(3, 'classify', 'other'),
                     'test review (label 3)')
    self.assertEqual(figures.review_title(1, 'lm', 'imdb_reviews'),
                     'test review')

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

  def _accuracy_axes(self, tidy: pd.DataFrame):
    """The Axes accuracy_curves draws, caught at savefig."""
    with mock.patch.object(mpl_figure.Figure, 'savefig',
                           autospec=True) as save:
      self.assertTrue(figures.accuracy_curves(tidy, ['none', 'k'],
                                              self.dir / 'acc.png'))
    (ax,) = save.call_args.args[0].axes
    return ax

  def test_curves_have_bands(self):
    ax = self._accuracy_axes(_tidy())
    bands = [c for c in ax.collections
             if isinstance(c, mpl_collections.PolyCollection)]
    self.assertLen(bands, 2)
    self.assertEmpty(ax.containers)
    self.assertEqual(ax.get_xlabel(), 'training step')

  def test_one_evaluation_draws_points_with_error_bars(self):
    ax = self._accuracy_axes(_tidy(history_steps=(100,)))
    bars = [c for c in ax.containers
            if isinstance(c, container.ErrorbarContainer)]
    self.assertLen(bars, 2)
    self.assertFalse([c for c in ax.collections
                      if isinstance(c, mpl_collections.PolyCollection)])
    for bar in bars:  # A visible interval: 4 seeds give a finite CI.
      (segments,) = [c.get_segments() for c in bar.lines[2]]
      (low, high) = segments[0][:, 1]
      self.assertLess(low, high)
    self.assertEqual([x.get_text() for x in ax.get_xticklabels()],
                     ['none', 'k'])
    self.assertIn('the only evaluation', ax.get_title())

  def test_a_condition_evaluated_once_among_curves_is_a_point(self):
    tidy = _tidy()
    ax = self._accuracy_axes(tidy[(tidy['condition'] == 'none')
                                  | (tidy['step'] == 100)])
    self.assertLen([c for c in ax.collections
                    if isinstance(c, mpl_collections.PolyCollection)], 1)
    (bar,) = ax.containers
    self.assertIsInstance(bar, container.ErrorbarContainer)
    self.assertEqual(bar.get_label(), 'k')

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
