"""Plotting shared by training, the report and the post-hoc study.

The attention heatmap (a PNG in the report, an image in TensorBoard during
training), the panel grid and the figure-to-image conversion. Uses
matplotlib's object API on the Agg canvas, never pyplot: no figure is
registered globally, so none can leak. Imports neither pandas nor SciPy, so
training pays only for matplotlib, and only when it draws. Suffixes: N
layers, H heads, T tokens.
"""

from collections.abc import Sequence

import matplotlib
from matplotlib import colors as mpl_colors
from matplotlib import figure as mpl_figure
from matplotlib import ticker
from matplotlib.backends import backend_agg
import numpy as np

# Resolution of the PNG files.
DPI = 110
# Reviews up to this many tokens label every token; longer ones every k-th.
MAX_LABELLED_TOKENS = 40
# Inches between piece labels, so their 6.5-8 pt text never touches.
_LABEL_SPACING = 0.12
# Attention weights below UNIFORM_FLOOR / T are drawn in the darkest colour.
UNIFORM_FLOOR = 0.1
# IMDB's tfds ClassLabel names ('neg', 'pos'), spelt out; label 0 is 'neg'.
IMDB_CLASS_NAMES = ('negative', 'positive')


def panels(n: int, ncols: int, inches: tuple[float, float]):
  """(figure, n axes) in rows of ncols panels of `inches` each."""
  ncols = min(n, ncols)
  nrows = -(-n // ncols)
  fig = mpl_figure.Figure(figsize=(inches[0] * ncols, inches[1] * nrows),
                          layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in axes[n:]:
    ax.set_visible(False)
  return fig, axes[:n]


def to_image(fig: mpl_figure.Figure, dpi: float = 72) -> np.ndarray:
  """The figure as an RGB uint8 [height, width, 3] array (for TensorBoard).

  At the default 72 dpi a point is a pixel.
  """
  canvas = backend_agg.FigureCanvasAgg(fig)
  fig.set_dpi(dpi)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def review_title(label: int, task: str, dataset: str | None) -> str:
  """'test review (negative)': the class named where the task has classes.

  IMDB's labels are named; another classification dataset's read 'label N'.
  The LM trains on the text alone, so its title names no class.
  """
  if task != 'classify':
    return 'test review'
  label = int(label)
  name = (IMDB_CLASS_NAMES[label] if dataset == 'imdb_reviews'
          else f'label {label}')
  return f'test review ({name})'


def _tile(probs_NHTT: np.ndarray, gap: int) -> np.ndarray:
  """All maps in one array, NaN (drawn white) between them."""
  n, h, t = probs_NHTT.shape[:3]
  out = np.full((n * (t + gap) - gap, h * (t + gap) - gap), np.nan, np.float32)
  for (layer, head), _ in np.ndenumerate(probs_NHTT[..., 0, 0]):
    row, col = layer * (t + gap), head * (t + gap)
    out[row:row + t, col:col + t] = probs_NHTT[layer, head]
  return out


def attention_figure(probs_NHTT: np.ndarray, pieces: Sequence[str] | None,
                     title: str,
                     panel_inches: float = 2.2) -> mpl_figure.Figure:
  """Grid of attention maps: rows = layers, columns = heads.

  `pieces` are the valid tokens' pieces (T' <= T); the maps are cut to them
  and labelled: every token up to MAX_LABELLED_TOKENS (panels grow to fit
  them), else every k-th token, as many as fit the panel. The colour scale
  is logarithmic from UNIFORM_FLOOR / T to 1: a softmax weight's log is its
  logit up to a constant, so a near-uniform map shows its structure as
  clearly as a peaked one, and every map of a T-token review shares one
  scale. One tiled image in one axes: ~10x faster to draw than N x H
  subplots, which matters for the TensorBoard image written during training.
  """
  if pieces:
    probs_NHTT = probs_NHTT[..., :len(pieces), :len(pieces)]
  n, h, t = probs_NHTT.shape[:3]
  if t <= MAX_LABELLED_TOKENS:
    every = 1
    if pieces:
      panel_inches = max(panel_inches, _LABEL_SPACING * t)
  else:
    # As many evenly spaced labels as fit the panel at _LABEL_SPACING.
    every = -(-t // max(1, int(panel_inches / _LABEL_SPACING)))
  ticks = np.arange(0, t, every)
  labels = [pieces[i] for i in ticks] if pieces else []
  # Margins in inches: left/bottom hold the token pieces when labelled.
  left = bottom = 0.3
  if labels:
    size = float(np.clip(0.75 * 72 * panel_inches / len(ticks), 6, 8))
    # About 0.6 em per character, plus the axis title.
    left = bottom = 0.35 + 0.6 * size / 72 * max(map(len, labels))
  gap = max(1, round(0.08 * t))
  top, right = 0.75, 1.6
  width = panel_inches * h * (t + gap) / t
  height = panel_inches * n * (t + gap) / t
  fig = mpl_figure.Figure(figsize=(width + left + right,
                                   height + top + bottom))
  fw, fh = fig.get_size_inches()
  ax = fig.add_axes((left / fw, bottom / fh, width / fw, height / fh))
  cmap = matplotlib.colormaps['viridis'].with_extremes(bad='white')
  floor = UNIFORM_FLOOR / t
  # Clipped up to the floor: LogNorm would draw zeros (masked keys) as gaps.
  image = ax.imshow(_tile(np.maximum(probs_NHTT, floor), gap), cmap=cmap,
                    norm=mpl_colors.LogNorm(vmin=floor, vmax=1.0),
                    interpolation='nearest', aspect='auto')
  starts = np.arange(max(n, h)) * (t + gap)
  for head in range(h):
    ax.text(starts[head] + t / 2, -gap, f'head {head}', ha='center',
            va='bottom', fontsize=9)
  for layer in range(n):
    ax.annotate(f'layer {layer}', xy=(1, starts[layer] + t / 2),
                xycoords=('axes fraction', 'data'), xytext=(4, 0),
                textcoords='offset points', rotation=270, ha='left',
                va='center', fontsize=9)
  which = ''
  if labels:
    ax.set_xticks((starts[:h, None] + ticks).ravel(), labels * h,
                  rotation=90, fontsize=size)
    ax.set_yticks((starts[:n, None] + ticks).ravel(), labels * n,
                  fontsize=size)
    which = f' (1 in {every} labelled)' if every > 1 else ''
  else:
    ax.set_xticks([])
    ax.set_yticks([])
  ax.set_xlabel('key token' + which, fontsize=9)
  ax.set_ylabel('query token' + which, fontsize=9)
  for spine in ax.spines.values():
    spine.set_visible(False)
  cax = fig.add_axes(((left + width + 0.45) / fw, bottom / fh, 0.15 / fw,
                      height / fh))
  bar = fig.colorbar(image, cax=cax, extend='min')
  bar.locator = ticker.LogLocator(subs=(1, 2, 5))
  bar.formatter = ticker.FormatStrFormatter('%g')
  bar.update_ticks()
  bar.minorticks_off()
  bar.set_label('attention weight, log scale (white: uniform 1/T)',
                fontsize=8)
  cax.axhline(1 / t, color='white', linewidth=1.5)
  fig.suptitle(title, y=1 - 0.12 / fh, va='top')
  return fig


def attention_heatmap_image(probs_NHTT: np.ndarray, pieces: list[str] | None,
                            title: str) -> np.ndarray:
  """The layers x heads grid as an RGB uint8 [height, width, 3] array."""
  fig = attention_figure(np.asarray(probs_NHTT, np.float32), pieces, title,
                         panel_inches=1.6)
  # TensorBoard shows pixels 1:1; at 72 dpi 6 pt piece labels are 6 px.
  return to_image(fig, dpi=100)
