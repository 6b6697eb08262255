"""Report figures (PNG) and the attention-grid image for TensorBoard.

Uses matplotlib's object API on the Agg canvas, never pyplot: no figure is
registered globally, so none can leak. Suffixes: S seeds, N layers, H heads,
T tokens.
"""

from collections.abc import Mapping, Sequence
import pathlib

import matplotlib
from matplotlib import colors as mpl_colors
from matplotlib import figure as mpl_figure
from matplotlib import ticker
from matplotlib.backends import backend_agg
import numpy as np
import pandas as pd

from jax_attnshare.report import stats

_DPI = 110
# Reviews up to this many tokens label every token; longer ones every k-th.
MAX_LABELLED_TOKENS = 40
# Inches between piece labels, so their 6.5-8 pt text never touches.
_LABEL_SPACING = 0.12
# Attention weights below UNIFORM_FLOOR / T are drawn in the darkest colour.
UNIFORM_FLOOR = 0.1
# IMDB's tfds ClassLabel names ('neg', 'pos'), spelt out; label 0 is 'neg'.
IMDB_CLASS_NAMES = ('negative', 'positive')


def _colors(conditions: Sequence[str]) -> dict[str, tuple[float, ...]]:
  cmap = matplotlib.colormaps['tab10']
  return {c: cmap(i % 10) for i, c in enumerate(conditions)}


_LABELS = {
    'entropy': 'attention entropy', 'entropy_norm': 'normalized entropy',
    'js_adjacent': 'JS divergence, adjacent layers',
    'js_adjacent_aligned': 'JS divergence, adjacent layers (best head)',
}


def metric_label(metric: str, thresholds: Mapping[str, str]) -> str:
  """Readable name, e.g. 'sparsity (weight < 0.01)'."""
  if metric.startswith('sparsity_'):
    key = metric.removeprefix('sparsity_')
    return f'sparsity ({thresholds.get(key, key)})'
  return _LABELS.get(metric, metric.replace('_', ' '))


def _axis_label(metric: str, thresholds: Mapping[str, str]) -> str:
  unit = stats.unit(metric)
  label = metric_label(metric, thresholds)
  return f'{label} [{unit}]' if unit else label


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


def _panels(n: int, ncols: int, inches: tuple[float, float]):
  ncols = min(n, ncols)
  nrows = -(-n // ncols)
  fig = mpl_figure.Figure(figsize=(inches[0] * ncols, inches[1] * nrows),
                          layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in axes[n:]:
    ax.set_visible(False)
  return fig, axes[:n]


def _ci_err(st: pd.DataFrame) -> np.ndarray:
  """[2, n] error bar lengths of describe()'s CI around the mean."""
  return np.stack([st['mean'] - st['ci_low'], st['ci_high'] - st['mean']])


def accuracy_curves(tidy: pd.DataFrame, conditions: Sequence[str],
                    path: pathlib.Path) -> bool:
  """Test accuracy over steps, mean and 95% CI; False if no history.

  A band over a single step has no width, so a condition evaluated once is
  a point with an error bar; when every condition was evaluated at the same
  single step, the conditions are the x axis.
  """
  df = tidy[(tidy['source'] == 'history') & (tidy['metric'] == 'test_accuracy')
            & tidy['layer'].isna() & ~tidy['diverged']].dropna(subset='value')
  if df.empty:
    return False
  fig, (ax,) = _panels(1, 1, (7, 4.5))
  colors = _colors(conditions)
  ylabel = 'test accuracy [fraction correct]'
  steps = df['step'].unique()
  if len(steps) == 1:
    present = [c for c in conditions if (df['condition'] == c).any()]
    for i, c in enumerate(present):
      st = pd.DataFrame([stats.describe(
          df.loc[df['condition'] == c, 'value'].to_numpy())])
      ax.errorbar([i], st['mean'], yerr=_ci_err(st), color=colors[c],
                  marker='o', capsize=4)
    ax.set_xticks(range(len(present)), present)
    ax.set_xlim(-0.5, len(present) - 0.5)
    ax.set(xlabel='condition', ylabel=ylabel,
           title=f'Test accuracy at step {steps[0]}, the only evaluation '
           '(mean and 95% CI over seeds)')
    ax.grid(axis='y', alpha=0.3)
    fig.savefig(path, dpi=_DPI)
    return True
  for c, color in colors.items():
    described = [dict(step=s, **stats.describe(g['value'].to_numpy()))
                 for s, g in df[df["condition"] == c].groupby("step")]
    if not described:
      continue
    st = pd.DataFrame(described)
    if len(st) == 1:
      ax.errorbar(st['step'], st['mean'], yerr=_ci_err(st), color=color,
                  marker='o', capsize=4, label=c)
      continue
    ax.plot(st['step'], st['mean'], color=color, marker='.', label=c)
    ax.fill_between(st['step'], st['ci_low'], st['ci_high'], color=color,
                    alpha=0.2, linewidth=0)
  ax.set(xlabel='training step', ylabel=ylabel,
         title='Test accuracy during training (mean and 95% CI over seeds)')
  ax.grid(alpha=0.3)
  ax.legend(title='condition')
  fig.savefig(path, dpi=_DPI)
  return True


def box_panels(final: pd.DataFrame, conditions: Sequence[str],
               metrics: Sequence[str], thresholds: Mapping[str, str],
               title: str, path: pathlib.Path) -> None:
  """Per metric: a box per condition with the seeds jittered on top."""
  fig, axes = _panels(len(metrics), 3, (4.2, 3.6))
  colors = _colors(conditions)
  rng = np.random.default_rng(0)  # Fixed jitter: same figure every time.
  overall = final[final['layer'].isna()]
  for ax, metric in zip(axes, metrics):
    df = overall[overall['metric'] == metric]
    present = [c for c in conditions if (df['condition'] == c).any()]
    data = [df.loc[df['condition'] == c, 'value'].to_numpy() for c in present]
    ax.boxplot(data, tick_labels=present, showfliers=False, widths=0.6)
    for i, (c, x_S) in enumerate(zip(present, data), start=1):
      ax.scatter(i + rng.uniform(-0.15, 0.15, len(x_S)), x_S, s=14,
                 color=colors[c], alpha=0.8, zorder=3)
    ax.set(xlabel='condition', ylabel=_axis_label(metric, thresholds),
           title=metric_label(metric, thresholds))
    ax.grid(axis='y', alpha=0.3)
  fig.suptitle(title)
  fig.savefig(path, dpi=_DPI)


def layer_progression(final: pd.DataFrame, conditions: Sequence[str],
                      metrics: Sequence[str], thresholds: Mapping[str, str],
                      path: pathlib.Path) -> None:
  """Per metric: mean and 95% CI per layer, one line per condition."""
  fig, axes = _panels(len(metrics), 3, (4.2, 3.4))
  per_layer = final[final['layer'].notna()]
  for ax, metric in zip(axes, metrics):
    df = per_layer[per_layer['metric'] == metric]
    colors = _colors(conditions)
    for i, (c, color) in enumerate(colors.items()):
      st = pd.DataFrame(
          [dict(layer=layer, **stats.describe(g['value'].to_numpy()))
           for layer, g in df[df['condition'] == c].groupby('layer')])
      if st.empty:
        continue
      err = _ci_err(st)
      # Dodge sideways so the conditions' error bars do not hide each other.
      dodge = 0.05 * (i - (len(colors) - 1) / 2)
      ax.errorbar(st['layer'] + dodge, st['mean'], yerr=err, color=color,
                  marker='o', capsize=3, label=c)
    layers = sorted(df['layer'].unique())
    pairs = metric.startswith('js_')
    ax.set_xticks(layers, [f'{x}-{x + 1}' if pairs else str(x)
                           for x in layers])
    ax.set(xlabel='adjacent layer pair' if pairs else 'layer',
           ylabel=_axis_label(metric, thresholds),
           title=metric_label(metric, thresholds))
    ax.grid(alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, title='condition', loc='outside right upper')
  fig.suptitle('Attention progression across layers (mean and 95% CI over '
               'seeds)')
  fig.savefig(path, dpi=_DPI)


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
  canvas = backend_agg.FigureCanvasAgg(fig)
  # TensorBoard shows pixels 1:1; at 72 dpi 6 pt piece labels are 6 px.
  fig.set_dpi(100)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def attention_heatmaps(probs_NHTT: np.ndarray, pieces: Sequence[str] | None,
                       title: str, path: pathlib.Path) -> None:
  """The layers x heads grid as a PNG for the report."""
  attention_figure(probs_NHTT, pieces, title).savefig(path, dpi=_DPI)


def js_matrices(mats: Mapping[str, np.ndarray], path: pathlib.Path) -> None:
  """Layer-by-layer JS divergence per condition, values written in cells."""
  fig, axes = _panels(len(mats), 4, (3.4, 3.2))
  vmax = max(float(np.nanmax(m)) for m in mats.values()) or 1.0
  for ax, (c, m_NN) in zip(axes, mats.items()):
    image = ax.imshow(m_NN, cmap='magma', vmin=0, vmax=vmax)
    for (i, j), v in np.ndenumerate(m_NN):
      ax.text(j, i, f'{v:.3f}', ha='center', va='center', fontsize=8,
              color='white' if v < 0.6 * vmax else 'black')
    ticks = range(m_NN.shape[0])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set(xlabel='layer', ylabel='layer', title=c)
  fig.colorbar(image, ax=list(axes), shrink=0.8,
               label='JS divergence [nats]')
  fig.suptitle('Attention JS divergence between layers (mean over seeds)')
  fig.savefig(path, dpi=_DPI)
