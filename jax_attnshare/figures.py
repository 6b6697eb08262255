"""Report figures (PNG) and the attention-grid image for TensorBoard.

Uses matplotlib's object API on the Agg canvas, never pyplot: no figure is
registered globally, so none can leak. Suffixes: S seeds, N layers, H heads,
T tokens.
"""

from collections.abc import Mapping, Sequence
import pathlib

import matplotlib
from matplotlib import figure as mpl_figure
from matplotlib.backends import backend_agg
import numpy as np
import pandas as pd

from jax_attnshare import analysis

_DPI = 110
# Above this many tokens the piece labels overlap and are left out.
MAX_LABELLED_TOKENS = 40


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
  unit = analysis.unit(metric)
  label = metric_label(metric, thresholds)
  return f'{label} [{unit}]' if unit else label


def _panels(n: int, ncols: int, inches: tuple[float, float]):
  ncols = min(n, ncols)
  nrows = -(-n // ncols)
  fig = mpl_figure.Figure(figsize=(inches[0] * ncols, inches[1] * nrows),
                          layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in axes[n:]:
    ax.set_visible(False)
  return fig, axes[:n]


def accuracy_curves(tidy: pd.DataFrame, conditions: Sequence[str],
                    path: pathlib.Path) -> bool:
  """Test accuracy over steps, mean and 95% CI band; False if no history."""
  df = tidy[(tidy['source'] == 'history') & (tidy['metric'] == 'test_accuracy')
            & tidy['layer'].isna() & ~tidy['diverged']].dropna(subset='value')
  if df.empty:
    return False
  fig, (ax,) = _panels(1, 1, (7, 4.5))
  for c, color in _colors(conditions).items():
    stats = [dict(step=s, **analysis.describe(g['value'].to_numpy()))
             for s, g in df[df['condition'] == c].groupby('step')]
    if not stats:
      continue
    st = pd.DataFrame(stats)
    ax.plot(st['step'], st['mean'], color=color, marker='.', label=c)
    ax.fill_between(st['step'], st['ci_low'], st['ci_high'], color=color,
                    alpha=0.2, linewidth=0)
  ax.set(xlabel='training step', ylabel='test accuracy [fraction correct]',
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
          [dict(layer=layer, **analysis.describe(g['value'].to_numpy()))
           for layer, g in df[df['condition'] == c].groupby('layer')])
      if st.empty:
        continue
      err = np.stack([st['mean'] - st['ci_low'], st['ci_high'] - st['mean']])
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

  `pieces` are the valid tokens' pieces (T' <= T); the maps are cut to them.
  One tiled image in one axes: ~10x faster to draw than N x H subplots,
  which matters for the TensorBoard image written during training.
  """
  if pieces:
    probs_NHTT = probs_NHTT[..., :len(pieces), :len(pieces)]
  n, h, t = probs_NHTT.shape[:3]
  labelled = bool(pieces) and t <= MAX_LABELLED_TOKENS
  if labelled:
    panel_inches = max(panel_inches, 0.1 * t)
  gap = max(1, round(0.08 * t))
  # Margins in inches: left/bottom hold the token pieces when labelled.
  left = bottom = 0.9 if labelled else 0.3
  top, right = 0.75, 1.5
  width = panel_inches * h * (t + gap) / t
  height = panel_inches * n * (t + gap) / t
  fig = mpl_figure.Figure(figsize=(width + left + right,
                                   height + top + bottom))
  fw, fh = fig.get_size_inches()
  ax = fig.add_axes((left / fw, bottom / fh, width / fw, height / fh))
  cmap = matplotlib.colormaps['viridis'].with_extremes(bad='white')
  vmax = float(np.nanmax(probs_NHTT)) if probs_NHTT.size else 1.0
  image = ax.imshow(_tile(probs_NHTT, gap), cmap=cmap, vmin=0, vmax=vmax,
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
  if labelled:
    # Font follows the token spacing, in points, so labels never overlap.
    size = float(np.clip(0.75 * 72 * panel_inches / t, 4, 8))
    ax.set_xticks((starts[:h, None] + np.arange(t)).ravel(), list(pieces) * h,
                  rotation=90, fontsize=size)
    ax.set_yticks((starts[:n, None] + np.arange(t)).ravel(), list(pieces) * n,
                  fontsize=size)
  else:
    ax.set_xticks([])
    ax.set_yticks([])
  ax.set_xlabel('key token', fontsize=9)
  ax.set_ylabel('query token', fontsize=9)
  for spine in ax.spines.values():
    spine.set_visible(False)
  cax = fig.add_axes(((left + width + 0.45) / fw, bottom / fh, 0.15 / fw,
                      height / fh))
  fig.colorbar(image, cax=cax, label='attention weight')
  fig.suptitle(title, y=1 - 0.12 / fh, va='top')
  return fig


def attention_heatmap_image(probs_NHTT: np.ndarray, pieces: list[str] | None,
                            title: str) -> np.ndarray:
  """The layers x heads grid as an RGB uint8 [height, width, 3] array."""
  fig = attention_figure(np.asarray(probs_NHTT, np.float32), pieces, title,
                         panel_inches=1.6)
  canvas = backend_agg.FigureCanvasAgg(fig)
  fig.set_dpi(72)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def attention_heatmaps(probs_NHTT: np.ndarray, pieces: Sequence[str] | None,
                       title: str, path: pathlib.Path) -> None:
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
