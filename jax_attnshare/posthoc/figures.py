"""Figures of the post-hoc study: similarity heatmaps and the sweep.

matplotlib's object API on the Agg canvas (see jax_attnshare.plotting), so
no figure is registered globally. Suffixes: N layers, H heads.
"""

from __future__ import annotations

from typing import Mapping

from matplotlib import figure as mpl_figure
import numpy as np
import pandas as pd

from jax_attnshare import plotting


_LAYER_TITLES = {
    'js_same': 'JS divergence, same head [nats]',
    'js_aligned': 'JS divergence, best head of column layer [nats]',
    'cosine_same': 'cosine, same head',
    'cosine_aligned': 'cosine, best head of column layer',
}


def layer_matrices(tables: Mapping[str, np.ndarray],
                   title: str) -> mpl_figure.Figure:
  """One [N, N] panel per table, values written in the cells."""
  fig, axes = plotting.panels(len(tables), 2, (4.2, 3.6))
  for ax, (name, m_NN) in zip(axes, tables.items()):
    cmap = 'magma' if name.startswith('js') else 'viridis'
    image = ax.imshow(m_NN, cmap=cmap)
    lo, hi = float(np.min(m_NN)), float(np.max(m_NN))
    for (i, j), v in np.ndenumerate(m_NN):
      ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=7,
              color='white' if v < (lo + hi) / 2 else 'black')
    ticks = range(m_NN.shape[0])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set(xlabel='layer', ylabel='layer',
           title=_LAYER_TITLES.get(name, name))
    fig.colorbar(image, ax=ax, shrink=0.8)
  fig.suptitle(title)
  return fig


def head_pair_matrices(mats: Mapping[str, np.ndarray],
                       title: str) -> mpl_figure.Figure:
  """[N·H, N·H] heatmaps, one per matrix, with lines between layers.

  The diagonal (a head against itself) is left blank.
  """
  fig, axes = plotting.panels(len(mats), 3 if len(mats) > 4 else 2,
                              (4.6, 4.0))
  for ax, (name, m_NHNH) in zip(axes, mats.items()):
    n, h = m_NHNH.shape[:2]
    # Each head against itself would set the colour scale; left blank.
    m_XX = m_NHNH.reshape(n * h, n * h).astype(np.float64)
    np.fill_diagonal(m_XX, np.nan)
    image = ax.imshow(m_XX, cmap='magma' if 'JS' in name else 'viridis',
                      interpolation='nearest')
    for edge in np.arange(1, n) * h - 0.5:
      ax.axhline(edge, color='white', linewidth=0.6)
      ax.axvline(edge, color='white', linewidth=0.6)
    ticks = np.arange(n) * h + (h - 1) / 2
    ax.set_xticks(ticks, [f'L{l}' for l in range(n)])
    ax.set_yticks(ticks, [f'L{l}' for l in range(n)])
    ax.set(title=name, xlabel='layer, heads 0..H-1',
           ylabel='layer, heads 0..H-1')
    fig.colorbar(image, ax=ax, shrink=0.8)
  fig.suptitle(title)
  return fig


def _label(row: pd.Series) -> str:
  """The variant, with the heads it actually links where it links any."""
  linked = row.get('linked_heads')
  if linked is None or pd.isna(linked):
    return row['variant']
  return f'{row["variant"]}: {linked:g} linked'


def sweep(points: pd.DataFrame, title: str,
          spread: str) -> mpl_figure.Figure:
  """Quality kept vs the bytes actually saved (left) and vs latency (right).

  `points` has columns method, variant, kept_pct with kept_lo and kept_hi
  (the error bars, described by `spread`), bytes_saved_pct, latency_ms and,
  for DirectShare and PostShare, linked_heads, which labels the points: the
  x-axis is the realized sharing, not the nominal ratio. DirectShare's
  ratios are joined by a line.
  """
  fig, (left, right) = plotting.panels(2, 2, (5.2, 4.0))
  for method, group in points.groupby('method', sort=False):
    group = group.sort_values('bytes_saved_pct')
    yerr = np.stack([group['kept_pct'] - group['kept_lo'],
                     group['kept_hi'] - group['kept_pct']])
    for ax, x in ((left, 'bytes_saved_pct'), (right, 'latency_ms')):
      ax.errorbar(group[x], group['kept_pct'], yerr=yerr, capsize=2,
                  fmt='-o' if method == 'direct_share' and ax is left
                  else 'o', markersize=4, label=method)
      for _, row in group.iterrows():
        ax.annotate(_label(row), (row[x], row['kept_pct']), fontsize=6,
                    xytext=(3, 3), textcoords='offset points')
  left.set(xlabel='parameter bytes actually saved [%]',
           ylabel=f'quality kept [% of unshared; bars: {spread}]')
  right.set(xlabel='latency of a jitted forward [ms, median]',
            ylabel=f'quality kept [% of unshared; bars: {spread}]')
  for ax in (left, right):
    ax.axhline(100, color='grey', linewidth=0.6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title)
  return fig
