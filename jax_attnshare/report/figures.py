"""Report figures (PNG) of the statistics and the attention maps.

Uses matplotlib's object API on the Agg canvas, never pyplot (see
jax_attnshare.plotting). Suffixes: S seeds, N layers, H heads, T tokens.
"""

from collections.abc import Mapping, Sequence
import pathlib
import textwrap

import matplotlib
from matplotlib import figure as mpl_figure
import numpy as np
import pandas as pd

from jax_attnshare import plotting
from jax_attnshare.report import claims as claims_lib
from jax_attnshare.report import stats


def _colors(conditions: Sequence[str]) -> dict[str, tuple[float, ...]]:
  cmap = matplotlib.colormaps['tab10']
  return {c: cmap(i % 10) for i, c in enumerate(conditions)}


_LABELS = {
    'entropy': 'attention entropy', 'entropy_norm': 'normalized entropy',
    'js_adjacent': 'JS divergence, adjacent layers',
    'js_adjacent_aligned': 'JS divergence, adjacent layers (best head)',
    'entropy_all_tokens': 'attention entropy over all tokens',
    'padding_mass': 'attention mass on padding',
}


def metric_label(metric: str, thresholds: Mapping[str, str]) -> str:
  """Readable name, e.g. 'sparsity (weight < 0.01)'."""
  if metric.startswith('sparsity_all_tokens_'):
    key = metric.removeprefix('sparsity_all_tokens_')
    return f'sparsity over all tokens ({thresholds.get(key, key)}, n = T)'
  if metric.startswith('sparsity_'):
    key = metric.removeprefix('sparsity_')
    return f'sparsity ({thresholds.get(key, key)})'
  return _LABELS.get(metric, metric.replace('_', ' '))


def _axis_label(metric: str, thresholds: Mapping[str, str]) -> str:
  unit = stats.unit(metric)
  label = metric_label(metric, thresholds)
  return f'{label} [{unit}]' if unit else label


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
  fig, (ax,) = plotting.panels(1, 1, (7, 4.5))
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
    fig.savefig(path, dpi=plotting.DPI)
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
  fig.savefig(path, dpi=plotting.DPI)
  return True


def box_panels(final: pd.DataFrame, conditions: Sequence[str],
               metrics: Sequence[str], thresholds: Mapping[str, str],
               title: str, path: pathlib.Path) -> None:
  """Per metric: a box per condition with the seeds jittered on top."""
  fig, axes = plotting.panels(len(metrics), 3, (4.2, 3.6))
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
  fig.savefig(path, dpi=plotting.DPI)


def layer_progression(final: pd.DataFrame, conditions: Sequence[str],
                      metrics: Sequence[str], thresholds: Mapping[str, str],
                      path: pathlib.Path) -> None:
  """Per metric: mean and 95% CI per layer, one line per condition."""
  fig, axes = plotting.panels(len(metrics), 3, (4.2, 3.4))
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
  fig.savefig(path, dpi=plotting.DPI)


def attention_heatmaps(probs_NHTT: np.ndarray, pieces: Sequence[str] | None,
                       title: str, path: pathlib.Path) -> None:
  """The layers x heads grid as a PNG for the report."""
  plotting.attention_figure(probs_NHTT, pieces, title).savefig(
      path, dpi=plotting.DPI)


def js_matrices(mats: Mapping[str, np.ndarray], path: pathlib.Path) -> None:
  """Layer-by-layer JS divergence per condition, values written in cells."""
  fig, axes = plotting.panels(len(mats), 4, (3.4, 3.2))
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
  fig.savefig(path, dpi=plotting.DPI)


def _forest_panel(ax, claims: Sequence[claims_lib.Claim],
                  evaluated: Sequence[tuple[str, pd.DataFrame]],
                  columns: tuple[str, str, str], margin: float,
                  scale: float) -> None:
  """One row per claim, one dodged interval per set of runs."""
  y = np.arange(len(claims))[::-1]
  colors = _colors([label for label, _ in evaluated])
  for yi, claim in zip(y, claims):
    if not claim.direction:
      ax.fill_betweenx([yi - 0.4, yi + 0.4], -margin * scale, margin * scale,
                       color='0.88', linewidth=0, zorder=0)
    elif claim.blog_effect.d_min > 0:
      point = np.isfinite(claim.blog_effect.d)
      ax.scatter([claim.direction * claim.blog_effect.d_min], [yi],
                 marker='x' if point else ('>' if claim.direction > 0
                                           else '<'),
                 color='black', zorder=4, s=40,
                 label="the blog's d" if point else "the blog's bound on d")
  for i, (label, frame) in enumerate(evaluated):
    rows = frame.set_index('key')
    dodge = 0.3 * (i - (len(evaluated) - 1) / 2) / max(len(evaluated), 1)
    for yi, claim in zip(y, claims):
      mid, lo, hi = (rows.loc[claim.key, c] for c in columns)
      if not np.isfinite(mid):
        continue
      ax.errorbar([mid * scale], [yi + dodge],
                  xerr=[[(mid - lo) * scale], [(hi - mid) * scale]],
                  color=colors[label], marker='o', capsize=3, label=label)
  ax.axvline(0, color='0.3', linewidth=0.8)
  ax.set_yticks(y, [textwrap.shorten(c.text, 60, placeholder='...')
                    for c in claims])
  ax.set_ylim(-0.6, len(claims) - 0.4)
  ax.grid(axis='x', alpha=0.3)


def forest(evaluated: Sequence[tuple[str, pd.DataFrame]],
           margins: claims_lib.Margins, path: pathlib.Path) -> None:
  """The claims' effects with their adjusted intervals, sets side by side.

  evaluated: [(label, claims.evaluate(...))]. Left: d for the attention
  claims, the blog's d (x; a triangle where it gives only a bound) and the
  no-effect margin (grey). Right: the accuracy differences in points
  against the accuracy margin.
  """
  attention = [c for c in claims_lib.CLAIMS if c.quantity != 'accuracy']
  accuracy = [c for c in claims_lib.CLAIMS if c.quantity == 'accuracy']
  fig = mpl_figure.Figure(figsize=(14, 0.42 * len(attention) + 1.5),
                          layout='constrained')
  left, right = fig.subplots(1, 2, width_ratios=(3, 2))
  _forest_panel(left, attention, evaluated, ('d', 'd_ci_low', 'd_ci_high'),
                margins.d, 1.0)
  left.set(xlabel="standardised effect d (paired: per-seed SD), adjusted "
           "interval", title='Attention claims vs none')
  _forest_panel(right, accuracy, evaluated,
                ('estimate', 'ci_low', 'ci_high'), margins.accuracy, 100.0)
  right.set(xlabel='accuracy difference [points], TOST interval',
            title=f'Accuracy vs none: margin +/-{margins.accuracy * 100:g} '
            'points (grey)')
  handles = {}
  for ax in (left, right):
    handles.update(zip(*reversed(ax.get_legend_handles_labels())))
  fig.legend(handles.values(), handles.keys(), loc='outside lower center',
             ncols=len(handles))
  fig.suptitle('The blog\'s claims: effects with Bonferroni-adjusted '
               'intervals')
  fig.savefig(path, dpi=plotting.DPI)
