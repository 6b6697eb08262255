"""Tests for jax_attnshare.plotting: the attention heatmap and its image."""

import time

from absl.testing import absltest
from matplotlib import colors as mpl_colors
from matplotlib import pyplot as plt
import numpy as np

from jax_attnshare import plotting


def _probs(n, h, t, seed=0):
  x = np.random.default_rng(seed).random((n, h, t, t)).astype(np.float32)
  return x / x.sum(-1, keepdims=True)


class PlottingTest(absltest.TestCase):

  def test_heatmap_image_is_rgb_fast_and_leaks_no_figure(self):
    plotting.attention_heatmap_image(_probs(1, 1, 4), None, 'warm up')
    start = time.perf_counter()
    img = plotting.attention_heatmap_image(_probs(3, 8, 64), None, 'kv')
    self.assertLess(time.perf_counter() - start, 1.0)
    self.assertEqual(img.dtype, np.uint8)
    self.assertEqual(img.ndim, 3)
    self.assertEqual(img.shape[2], 3)
    self.assertGreater(img.shape[1], img.shape[0])  # 8 heads wide, 3 high.
    self.assertGreater(img.std(), 10)  # Not a blank canvas.
    self.assertEqual(plt.get_fignums(), [])

  def test_short_review_labels_every_token_on_a_log_scale(self):
    pieces = ['▁a', '▁good', '▁film', ',', '▁really', '▁fun']
    title = plotting.review_title(1, 'classify', 'imdb_reviews')
    fig = plotting.attention_figure(_probs(3, 2, 8), pieces, title)
    ax = fig.axes[0]
    self.assertEqual([x.get_text() for x in ax.get_xticklabels()],
                     pieces * 2)  # Under each head.
    self.assertEqual([y.get_text() for y in ax.get_yticklabels()],
                     pieces * 3)  # Beside each layer.
    (image,) = ax.get_images()
    self.assertIsInstance(image.norm, mpl_colors.LogNorm)
    t = len(pieces)
    self.assertAlmostEqual(image.norm.vmin, plotting.UNIFORM_FLOOR / t)
    self.assertEqual(image.norm.vmax, 1.0)
    # A uniform map sits mid-scale, not in the dark end as on a linear one.
    self.assertBetween(float(image.norm(1 / t)), 0.3, 0.7)
    self.assertIn('log scale', fig.axes[1].get_ylabel())
    self.assertEqual(fig.get_suptitle(), 'test review (positive)')

  def test_long_review_labels_every_kth_token(self):
    t = 5 * plotting.MAX_LABELLED_TOKENS
    pieces = [f'p{i}' for i in range(t)]
    ax = plotting.attention_figure(_probs(1, 2, t), pieces, 't').axes[0]
    labels = [x.get_text() for x in ax.get_xticklabels()]
    every = int(labels[1][1:])
    self.assertGreater(every, 1)
    self.assertEqual(labels, pieces[::every] * 2)
    self.assertIn(f'1 in {every} labelled', ax.get_xlabel())

  def test_unlabelled_without_pieces(self):
    ax = plotting.attention_figure(_probs(2, 2, 8), None, 't').axes[0]
    self.assertEmpty(ax.get_xticklabels())
    self.assertEmpty(ax.get_yticklabels())

  def test_review_title_names_the_class(self):
    self.assertEqual(plotting.review_title(0, 'classify', 'imdb_reviews'),
                     'test review (negative)')
    self.assertEqual(plotting.review_title(np.int32(1), 'classify',
                                          'imdb_reviews'),
                     'test review (positive)')
    self.assertEqual(plotting.review_title(3, 'classify', 'other'),
                     'test review (label 3)')
    self.assertEqual(plotting.review_title(1, 'lm', 'imdb_reviews'),
                     'test review')

  def test_panels_hides_the_unused_axes(self):
    fig, axes = plotting.panels(5, 3, (2.0, 1.5))
    self.assertLen(axes, 5)
    self.assertEqual(sum(ax.get_visible() for ax in fig.axes), 5)
    self.assertSequenceAlmostEqual(fig.get_size_inches(), (6.0, 3.0))

  def test_to_image_is_rgb_at_the_given_dpi(self):
    fig, _ = plotting.panels(1, 1, (2.0, 1.0))
    self.assertEqual(plotting.to_image(fig).shape, (72, 144, 3))
    self.assertEqual(plotting.to_image(fig, dpi=100).shape, (100, 200, 3))


if __name__ == '__main__':
  absltest.main()
