"""Tests for jax_attnshare.report.figures: the files are written."""

import pathlib
import tempfile
from unittest import mock

from absl.testing import absltest
from matplotlib import collections as mpl_collections
from matplotlib import container
from matplotlib import figure as mpl_figure
from matplotlib import pyplot as plt
import numpy as np
import pandas as pd

from jax_attnshare.report import claims
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
    self.assertEqual(
        figures.metric_label('sparsity_all_tokens_rel_1',
                             {'rel_1': 'weight < 1/n'}),
        'sparsity over all tokens (weight < 1/n, n = T)')


  def test_forest_marks_the_blog_and_the_margins(self):
    frame = pd.DataFrame([dict(key=c.key, d=np.nan, d_ci_low=np.nan,
                               d_ci_high=np.nan, estimate=np.nan,
                               ci_low=np.nan, ci_high=np.nan)
                          for c in claims.CLAIMS]).set_index('key')
    frame.loc['k_entropy', ['d', 'd_ci_low', 'd_ci_high']] = 1.0, 0.2, 1.8
    frame.loc['accuracy_q', ['estimate', 'ci_low', 'ci_high']] = (
        0.002, -0.004, 0.008)
    sets = [('blog', frame.reset_index()), ('clean', frame.reset_index())]
    with mock.patch.object(mpl_figure.Figure, 'savefig',
                           autospec=True) as save:
      figures.forest(sets, claims.Margins(), self.dir / 'forest.png')
    left, right = save.call_args.args[0].axes
    n_attention = sum(c.quantity != 'accuracy' for c in claims.CLAIMS)
    self.assertLen(left.get_yticklabels(), n_attention)
    # One interval per set for the one tested claim on each side.
    self.assertLen(left.containers, 2)
    self.assertLen(right.containers, 2)
    (bar, _) = right.containers
    self.assertAlmostEqual(bar.lines[0].get_xdata()[0], 0.2)  # points
    blog_k = claims.BlogEffect(t=5.374).d
    marks = [o for c in left.collections
             if not isinstance(c, mpl_collections.PolyCollection)
             for o in c.get_offsets()]
    self.assertTrue(any(abs(x - blog_k) < 1e-9 for x, _ in marks))
    # The margins: a band per no-effect claim (+/-1 d; +/-1 point).
    bands = [c for c in left.collections
             if isinstance(c, mpl_collections.PolyCollection)]
    self.assertLen(bands, sum(not c.direction and c.quantity != 'accuracy'
                              for c in claims.CLAIMS))
    xs = bands[0].get_paths()[0].vertices[:, 0]
    self.assertEqual((xs.min(), xs.max()), (-1.0, 1.0))
    (band, *_) = [c for c in right.collections
                  if isinstance(c, mpl_collections.PolyCollection)]
    xs = band.get_paths()[0].vertices[:, 0]
    self.assertEqual((xs.min(), xs.max()), (-1.0, 1.0))


if __name__ == '__main__':
  absltest.main()
