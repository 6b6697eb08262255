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


def sweep(results: pd.DataFrame, title: str) -> mpl_figure.Figure:
  """Quality kept vs memory saved (left) and vs latency (right) per method.

  `results` has columns method, variant, kept_pct, bytes_saved_pct and
  latency_ms; DirectShare's ratios are joined by a line.
  """
  fig, (left, right) = plotting.panels(2, 2, (5.2, 4.0))
  for method, group in results.groupby('method', sort=False):
    group = group.sort_values('bytes_saved_pct')
    style = '-o' if method == 'direct_share' else 'o'
    left.plot(group['bytes_saved_pct'], group['kept_pct'], style,
              label=method)
    right.plot(group['latency_ms'], group['kept_pct'], 'o', label=method)
    for _, row in group.iterrows():
      for ax, x in ((left, row['bytes_saved_pct']),
                    (right, row['latency_ms'])):
        ax.annotate(row['variant'], (x, row['kept_pct']), fontsize=6,
                    xytext=(3, 3), textcoords='offset points')
  left.set(xlabel='parameter bytes saved [%]',
           ylabel='quality kept [% of unshared]')
  right.set(xlabel='latency of a jitted forward [ms, median]',
            ylabel='quality kept [% of unshared]')
  for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title)
  return fig
