"""Statistics over seeds: tidy table, descriptives, contrasts, omnibus tests.

Pure numpy/scipy/statsmodels/pandas; every p-value and distribution comes
from scipy or statsmodels. Array suffix S = seeds.

A contrast is sum_c w_c mean_c over conditions c (w sums to 0), tested in
one of two designs (DESIGNS):

* 'paired': replica i has the same seed in every condition, so seeds are
  blocks. The per-seed contrast sum_c w_c x_{c,i} is taken over the seeds
  live in every condition of the contrast and tested with a one-sample t
  (df n - 1).
* 'independent': conditions are independent samples. Student's t with the
  SD pooled over the contrast's conditions only (df sum_c (n_c - 1)), so a
  contrast never depends on other conditions in the folder.

Its standardised size d = estimate / sigma, sigma the SD of one condition
over seeds, is d = t * sqrt(sum_c w_c^2 / n_c) in both designs; for two
conditions (w = +1, -1) it is Cohen's d with the pooled SD. Paired, sigma is
sd(per-seed contrast) / sqrt(sum w^2): the same d when seeds carry no
variance shared across conditions, and larger by 1 / sqrt(1 - rho) when
they correlate by rho. Its interval inverts the noncentral t exactly.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats
from statsmodels.stats import oneway

DESIGNS = ('paired', 'independent')
CI_LEVEL = 0.95
TIDY_COLUMNS = ('condition', 'seed', 'step', 'metric', 'layer', 'value',
                'source', 'diverged')
_SCALAR_METRICS = ('test_accuracy', 'test_loss')
_CONTRAST_COLUMNS = ('diff', 't', 'df', 'p', 'p_holm', 'd', 'd_ci_low',
                     'd_ci_high')
STAT_COLUMNS = ('metric', 'layer', 'condition', 'n', 'mean', 'sd', 'ci_low',
                'ci_high') + _CONTRAST_COLUMNS
OMNIBUS_COLUMNS = ('metric', 'layer', 'n_conditions', 'test', 'statistic',
                   'df_num', 'df_den', 'p', 'levene_p', 'shapiro_min_p',
                   'reason')
_UNITS = {
    'test_accuracy': 'fraction correct', 'test_loss': 'nats',
    'train_loss': 'nats', 'entropy': 'nats', 'entropy_norm': 'fraction of ln n',
    'head_correlation': 'Pearson r', 'head_specialization': '1 - Pearson r',
    'entropy_all_tokens': 'nats', 'padding_mass': 'fraction of attention',
}
_FAMILY_ORDER = ('test_accuracy', 'test_loss', 'entropy', 'entropy_norm',
                 'sparsity', 'head_correlation', 'head_specialization',
                 'js_adjacent', 'js_adjacent_aligned', 'padding_mass',
                 'entropy_all_tokens')


def unit(metric: str) -> str:
  if metric.startswith('sparsity'):
    return 'fraction of weights'
  if metric.startswith('js_'):
    return 'nats'
  return _UNITS.get(metric, '')


def order_metrics(metrics: Sequence[str]) -> list[str]:
  """Report order: the known families first, then any other metric."""
  def key(m: str) -> tuple[int, str]:
    family = 'sparsity' if m.startswith('sparsity') else m
    rank = (_FAMILY_ORDER.index(family) if family in _FAMILY_ORDER
            else len(_FAMILY_ORDER))
    return rank, m
  return sorted(set(metrics), key=key)


def _is_per_layer(values: Any) -> bool:
  """True for a flat list of numbers/nulls (per layer); False for matrices."""
  return isinstance(values, list) and all(
      v is None or isinstance(v, (int, float)) for v in values)


def _overall(values: Sequence[float | None]) -> float:
  """Mean over layers (or layer pairs); NaN when any entry is null."""
  arr = np.array([np.nan if v is None else v for v in values], dtype=float)
  return float(arr.mean()) if arr.size else math.nan


def _layer_rows(base: dict[str, Any], metric: str,
                values: Sequence[float | None]) -> list[dict[str, Any]]:
  rows = [dict(base, metric=metric, layer=pd.NA, value=_overall(values))]
  for layer, v in enumerate(values):
    rows.append(dict(base, metric=metric, layer=layer,
                     value=math.nan if v is None else float(v)))
  return rows


def tidy_table(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
  """One row per (condition, seed, step, metric, layer) value.

  `layer` is <NA> for the run's overall value (mean over layers); for
  js_adjacent, layer l is the pair (l, l+1). `source` is 'final' for the
  per_seed block and 'history' for evaluations during training.
  """
  rows = []
  for condition, summary in summaries.items():
    step = summary.get('completed_steps', summary.get('num_train_steps'))
    diverged = {r['seed']: bool(r.get('diverged')) for r in summary['per_seed']}
    for rec in summary['per_seed']:
      base = dict(condition=condition, seed=rec['seed'], step=step,
                  source='final', diverged=diverged[rec['seed']])
      for metric in _SCALAR_METRICS:
        v = rec.get(metric)
        rows.append(dict(base, metric=metric, layer=pd.NA,
                         value=math.nan if v is None else float(v)))
      for metric, values in rec.get('attention', {}).items():
        if _is_per_layer(values):
          rows.extend(_layer_rows(base, metric, values))
    for entry in summary.get('history', []):
      for i, seed in enumerate(summary['seeds']):
        base = dict(condition=condition, seed=seed, step=entry['step'],
                    source='history', diverged=diverged.get(seed, False))
        for metric in ('train_loss',) + _SCALAR_METRICS:
          if metric in entry:
            v = entry[metric][i]
            rows.append(dict(base, metric=metric, layer=pd.NA,
                             value=math.nan if v is None else float(v)))
        for metric, per_seed in entry.get('attention', {}).items():
          if _is_per_layer(per_seed[i]):
            rows.extend(_layer_rows(base, metric, per_seed[i]))
  df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
  df['layer'] = df['layer'].astype('Int64')
  df['value'] = df['value'].astype(float)
  return df


def wide(values: pd.DataFrame) -> pd.DataFrame:
  """Seeds x conditions of one metric's tidy rows (NaN where none)."""
  return values.pivot_table(index='seed', columns='condition', values='value',
                            aggfunc='first')


def seed_mean_matrix(summary: Mapping[str, Any],
                     key: str) -> np.ndarray | None:
  """Mean over non-diverged seeds of a per-seed attention matrix."""
  mats = [np.array(r['attention'][key], dtype=float)  # None -> NaN
          for r in summary['per_seed']
          if not r.get('diverged') and key in r.get('attention', {})]
  return np.nanmean(np.stack(mats), axis=0) if mats else None


def describe(x_S: np.ndarray) -> dict[str, float]:
  """n, mean, sd (ddof=1) and the t-based CI_LEVEL interval of the mean."""
  x_S = np.asarray(x_S, dtype=float)
  n = x_S.size
  mean = float(x_S.mean()) if n else math.nan
  sd = float(x_S.std(ddof=1)) if n > 1 else math.nan
  half = (stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * sd / math.sqrt(n)
          if n > 1 else math.nan)
  return dict(n=n, mean=mean, sd=sd, ci_low=float(mean - half),
              ci_high=float(mean + half))


def nct_sf(x: float, df: float, nc: float) -> float:
  """P(T >= x) for T noncentral t(df, nc).

  scipy's nct returns NaN far in some tails (e.g. cdf at x << 0 when
  nc >> 0); the mirrored tail P(T' <= -x), T' ~ t(df, -nc), is then finite.
  """
  v = float(stats.nct.sf(x, df, nc))
  return v if math.isfinite(v) else float(stats.nct.cdf(-x, df, -nc))


def _root(f, guess: float, step: float) -> float:
  """The root of f, increasing in x, searched outward from guess."""
  lo, hi = guess - step, guess + step
  while f(lo) > 0:
    lo -= step
    step *= 2
  while f(hi) < 0:
    hi += step
    step *= 2
  return float(optimize.brentq(f, lo, hi, xtol=1e-10))


def ncp_interval(t: float, df: float, level: float) -> tuple[float, float]:
  """Exact interval of a noncentral t's noncentrality, given t observed.

  The bounds are the noncentralities under which t sits at the upper and
  the lower (1 - level) / 2 quantile (Steiger & Fouladi 1997).
  """
  tail = (1 - level) / 2
  step = 2 + abs(t) / math.sqrt(df)
  # P(T >= t | nc) grows with nc.
  lo = _root(lambda nc: nct_sf(t, df, nc) - tail, t, step)
  hi = _root(lambda nc: nct_sf(t, df, nc) - (1 - tail), t, step)
  return lo, hi


# An SD below this fraction of the values' size is rounding error: the
# values do not vary, and t would be meaningless.
_FLAT = 1e-9


class Untestable(ValueError):
  """A contrast the data cannot test (too few seeds, no variation)."""


@dataclasses.dataclass(frozen=True)
class Contrast:
  """A tested contrast (see the module docstring).

  n: seeds per condition (paired: seeds live in every condition; else the
  smallest condition's). estimate and se in the metric's units; t, df and p
  (two-sided, H0: contrast 0) of its t-test; scale: d = t * scale;
  rho: paired, the correlation of two conditions' values over seeds (NaN
  for other contrasts and designs).
  """
  n: int
  estimate: float
  se: float
  df: float
  t: float
  p: float
  scale: float
  rho: float = math.nan

  @property
  def d(self) -> float:
    return self.t * self.scale

  def interval(self, level: float) -> tuple[float, float]:
    """The estimate's t interval at `level`, in the metric's units."""
    half = stats.t.ppf(0.5 + level / 2, self.df) * self.se
    return self.estimate - half, self.estimate + half

  def d_interval(self, level: float) -> tuple[float, float]:
    """d's exact (noncentral t) interval at `level`."""
    lo, hi = ncp_interval(self.t, self.df, level)
    return lo * self.scale, hi * self.scale

  def tost(self, margin: float) -> float:
    """TOST p for |contrast| < margin (metric units): the larger one-sided p."""
    return float(max(stats.t.sf((self.estimate + margin) / self.se, self.df),
                     stats.t.cdf((self.estimate - margin) / self.se,
                                 self.df)))

  def tost_d(self, margin: float) -> float:
    """TOST p for |d| < margin, exact by the noncentral t."""
    nc = margin / self.scale
    return max(nct_sf(self.t, self.df, -nc), nct_sf(-self.t, self.df, -nc))


def contrast(values: pd.DataFrame, weights: Mapping[str, float],
             design: str) -> Contrast:
  """Tests sum_c weights[c] * mean_c; values: seeds x conditions (wide()).

  Raises Untestable when a condition is missing, when fewer than 2 seeds
  are usable (per condition, or paired in all of them) or when the values
  do not vary.
  """
  missing = [c for c in weights if c not in values.columns]
  if missing:
    raise Untestable(f'no values for {", ".join(missing)}')
  w = pd.Series(weights, dtype=float)
  if design == 'paired':
    complete = values[list(weights)].dropna()
    n = len(complete)
    if n < 2:
      raise Untestable(f'{n} seed(s) live in every condition; 2 needed')
    c_S = complete.to_numpy() @ w.to_numpy()
    sd = float(np.std(c_S, ddof=1))
    if sd <= _FLAT * np.abs(complete.to_numpy()).max():
      raise Untestable('the per-seed contrast does not vary')
    res = stats.ttest_1samp(c_S, 0.0)
    rho = (float(np.corrcoef(complete.to_numpy().T)[0, 1])
           if len(weights) == 2 else math.nan)
    return Contrast(n=n, estimate=float(c_S.mean()), se=sd / math.sqrt(n),
                    df=n - 1, t=float(res.statistic), p=float(res.pvalue),
                    scale=math.sqrt(float((w**2).sum()) / n), rho=rho)
  if design != 'independent':
    raise ValueError(f'design must be one of {DESIGNS}, got {design!r}')
  groups = {c: values[c].dropna().to_numpy() for c in weights}
  sizes = {c: len(x) for c, x in groups.items()}
  if min(sizes.values()) < 2:
    few = ', '.join(f'{c}: {k}' for c, k in sizes.items() if k < 2)
    raise Untestable(f'fewer than 2 live seeds ({few})')
  df = sum(k - 1 for k in sizes.values())
  pooled = math.sqrt(sum((k - 1) * np.var(groups[c], ddof=1)
                         for c, k in sizes.items()) / df)
  if pooled <= _FLAT * max(np.abs(x).max() for x in groups.values()):
    raise Untestable('the values do not vary within conditions')
  scale = math.sqrt(sum(w[c]**2 / k for c, k in sizes.items()))
  estimate = float(sum(w[c] * groups[c].mean() for c in groups))
  t = estimate / (pooled * scale)
  return Contrast(n=min(sizes.values()), estimate=estimate,
                  se=pooled * scale, df=df, t=t,
                  p=float(2 * stats.t.sf(abs(t), df)), scale=scale)


def holm(p: Sequence[float]) -> np.ndarray:
  """Holm-adjusted p-values; NaNs stay NaN and are not in the family.

  The i-th smallest of m p-values becomes max_{j <= i} (m - j + 1) p_(j),
  capped at 1 (statsmodels' multipletests gives the same, but runs a full
  garbage collection per call).
  """
  p = np.asarray(p, dtype=float)
  out = np.full_like(p, np.nan)
  ok = np.flatnonzero(np.isfinite(p))
  order = ok[np.argsort(p[ok], kind='stable')]
  m = len(order)
  out[order] = np.minimum(1.0, np.maximum.accumulate(
      (m - np.arange(m)) * p[order]))
  return out


def _no_test(reason: str) -> dict[str, Any]:
  return dict(test='none', statistic=math.nan, df_num=math.nan,
              df_den=math.nan, p=math.nan, levene_p=math.nan,
              shapiro_min_p=math.nan, reason=reason)


def omnibus(groups: Mapping[str, np.ndarray], alpha: float) -> dict[str, Any]:
  """One-way test across independent groups, chosen by assumption checks.

  Groups with fewer than 2 values are left out. Shapiro-Wilk (n >= 3, Holm
  across groups) rejects normality in a group: Kruskal-Wallis; else Levene
  (median) rejects equal variances: Welch's ANOVA; else the classic F test.
  `reason` says why.
  """
  groups = {k: np.asarray(v, float) for k, v in groups.items() if len(v) >= 2}
  if len(groups) < 2:
    return _no_test('fewer than two conditions with >= 2 live seeds')
  values = np.concatenate(list(groups.values()))
  if np.ptp(values) == 0:
    return _no_test('all values identical')
  out = _no_test('')
  shapiro = {k: stats.shapiro(v).pvalue for k, v in groups.items()
             if len(v) >= 3 and np.ptp(v) > 0}
  out['levene_p'] = float(
      stats.levene(*groups.values(), center='median').pvalue)
  samples = list(groups.values())
  worst = min(shapiro, key=shapiro.get, default=None)
  out['shapiro_min_p'] = float(shapiro[worst]) if shapiro else math.nan
  # Holm across groups (its smallest adjusted p is k * min p): unadjusted,
  # 5 groups would reject normality by chance for about 1 metric in 4.
  shapiro_adj = min(1.0, len(shapiro) * out['shapiro_min_p'])
  if shapiro_adj < alpha:
    res = stats.kruskal(*samples)
    out.update(test='Kruskal-Wallis H', statistic=float(res.statistic),
               df_num=len(samples) - 1, p=float(res.pvalue),
               reason=f'Shapiro-Wilk rejects normality in {worst} '
               f'(p = {shapiro[worst]:.3g}, Holm-adjusted {shapiro_adj:.3g})')
  elif out['levene_p'] < alpha:
    res = oneway.anova_oneway(samples, use_var='unequal')
    out.update(test="Welch's ANOVA F", statistic=float(res.statistic),
               df_num=float(res.df_num), df_den=float(res.df_denom),
               p=float(res.pvalue),
               reason=f'Levene rejects equal variances '
               f'(p = {out["levene_p"]:.3g})')
  else:
    res = stats.f_oneway(*samples)
    checked = (f'min Shapiro-Wilk p = {out["shapiro_min_p"]:.3g}'
               if shapiro else 'normality untested (n < 3)')
    out.update(test='ANOVA F', statistic=float(res.statistic),
               df_num=len(samples) - 1, df_den=len(values) - len(samples),
               p=float(res.pvalue),
               reason=f'assumptions not rejected ({checked}, '
               f'Levene p = {out["levene_p"]:.3g})')
  return out


def block_anova(values: pd.DataFrame) -> dict[str, Any]:
  """Randomised-block F test of condition, seeds as blocks.

  values: seeds x conditions (wide()). Conditions with fewer than 2 live
  seeds are left out, then the seeds live in every remaining condition are
  used: a complete block design, whose two-way additive ANOVA has closed
  sums of squares (df: k - 1 and (k - 1)(n - 1)).
  """
  values = values.loc[:, values.notna().sum() >= 2].dropna()
  n, k = values.shape
  if k < 2 or n < 2:
    return _no_test('fewer than two conditions with >= 2 seeds live in all')
  x_SC = values.to_numpy()
  grand = x_SC.mean()
  ss_condition = n * np.sum((x_SC.mean(axis=0) - grand)**2)
  ss_seed = k * np.sum((x_SC.mean(axis=1) - grand)**2)
  ss_error = np.sum((x_SC - grand)**2) - ss_condition - ss_seed
  df_num, df_den = k - 1, (k - 1) * (n - 1)
  if ss_error <= 1e-12 * max(np.sum((x_SC - grand)**2), 1e-300):
    return _no_test('no variation left within seeds')
  f = (ss_condition / df_num) / (ss_error / df_den)
  return dict(_no_test(''), test='block ANOVA F (seeds as blocks)',
              statistic=float(f), df_num=df_num, df_den=df_den,
              p=float(stats.f.sf(f, df_num, df_den)),
              reason=f'{n} seeds live in all {k} conditions')


def _compare(values: pd.DataFrame, condition: str, baseline: str,
             design: str) -> dict[str, float]:
  """Exploratory contrast condition - baseline with its 95% d interval."""
  out = {k: math.nan for k in _CONTRAST_COLUMNS if k != 'p_holm'}
  if condition in values and baseline in values:
    out['diff'] = float(values[condition].mean() - values[baseline].mean())
  try:
    c = contrast(values, {condition: 1.0, baseline: -1.0}, design)
  except Untestable:
    return out
  lo, hi = c.d_interval(CI_LEVEL)
  out.update(diff=c.estimate, t=c.t, df=c.df, p=c.p, d=c.d, d_ci_low=lo,
             d_ci_high=hi)
  return out


def analyze(final: pd.DataFrame, conditions: Sequence[str], baseline: str,
            alpha: float,
            design: str = 'paired') -> tuple[pd.DataFrame, pd.DataFrame]:
  """Exploratory: per (metric, layer) descriptives, contrasts, omnibus test.

  `final` holds the values to use (diverged replicas and nulls removed);
  `conditions` gives the row order. Each condition is compared with the
  baseline in `design`; Holm corrects across the conditions compared,
  separately for each (metric, layer): these are not the claims' family.
  The omnibus test is block_anova (paired) or omnibus (independent).
  """
  stat_rows, omni_rows = [], []
  for metric in order_metrics(final['metric'].unique()):
    m_df = final[final['metric'] == metric]
    for layer in [pd.NA] + sorted(m_df['layer'].dropna().unique()):
      df = m_df[m_df['layer'].isna() if layer is pd.NA
                else m_df['layer'] == layer]
      values = wide(df)
      present = [c for c in conditions if c in values]
      values = values[present]
      live = [c for c in present if values[c].notna().sum() >= 2]
      if design == 'paired':
        test = block_anova(values)
      else:
        test = omnibus({c: values[c].dropna().to_numpy() for c in present},
                       alpha)
      omni_rows.append(dict(metric=metric, layer=layer,
                            n_conditions=len(live), **test))
      rows = []
      for c in present:
        row = dict(metric=metric, layer=layer, condition=c,
                   **describe(values[c].dropna().to_numpy()))
        if c != baseline:
          row.update(_compare(values, c, baseline, design))
        rows.append(row)
      for r, p_holm in zip(rows, holm([r.get('p', math.nan) for r in rows])):
        r['p_holm'] = p_holm
      stat_rows.extend(rows)
  table = pd.DataFrame(stat_rows, columns=STAT_COLUMNS)
  omni = pd.DataFrame(omni_rows, columns=OMNIBUS_COLUMNS)
  for df in (table, omni):
    df['layer'] = df['layer'].astype('Int64')
  return table, omni
