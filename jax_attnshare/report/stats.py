"""Statistics over seeds: tidy table, descriptives, omnibus tests, contrasts.

Pure numpy/scipy/statsmodels/pandas; every p-value and power comes from scipy
or statsmodels. Array suffix S = seeds.
"""

from collections.abc import Mapping, Sequence
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats
from statsmodels.stats import multitest
from statsmodels.stats import oneway
from statsmodels.stats import power as sm_power

CI_LEVEL = 0.95
TARGET_POWER = 0.8
# Below this |d| the seeds needed for TARGET_POWER exceed ~1e7: report inf.
_MIN_EFFECT = 1e-3
TIDY_COLUMNS = ('condition', 'seed', 'step', 'metric', 'layer', 'value',
                'source', 'diverged')
_SCALAR_METRICS = ('test_accuracy', 'test_loss')
_CONTRAST_COLUMNS = ('diff', 't', 'p', 'p_holm', 'd', 'd_ci_low', 'd_ci_high',
                     'g', 'g_ci_low', 'g_ci_high', 'power', 'n_needed')
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


def cohens_d(x_S: np.ndarray, y_S: np.ndarray) -> float:
  """(mean x - mean y) / pooled SD; NaN when the pooled SD is zero."""
  nx, ny = len(x_S), len(y_S)
  pooled = math.sqrt(((nx - 1) * np.var(x_S, ddof=1) +
                      (ny - 1) * np.var(y_S, ddof=1)) / (nx + ny - 2))
  if pooled == 0:
    return math.nan
  return float((np.mean(x_S) - np.mean(y_S)) / pooled)


def hedges_j(df: float) -> float:
  """Exact small-sample correction factor J(df), g = J * d."""
  return math.exp(special.gammaln(df / 2) - math.log(math.sqrt(df / 2)) -
                  special.gammaln((df - 1) / 2))


def d_confint(d: float, n1: int, n2: int) -> tuple[float, float]:
  """Normal-approximation CI of d, SE from Hedges & Olkin (1985)."""
  se = math.sqrt((n1 + n2) / (n1 * n2) + d**2 / (2 * (n1 + n2)))
  z = stats.norm.ppf(0.5 + CI_LEVEL / 2)
  return float(d - z * se), float(d + z * se)


def holm(p: Sequence[float]) -> np.ndarray:
  """Holm-adjusted p-values; NaNs stay NaN and are not in the family."""
  p = np.asarray(p, dtype=float)
  out = np.full_like(p, np.nan)
  ok = np.isfinite(p)
  if ok.any():
    out[ok] = multitest.multipletests(p[ok], method='holm')[1]
  return out


def _power(d: float, n1: float, ratio: float, alpha: float) -> float:
  power_analysis = sm_power.TTestIndPower()
  p = power_analysis.power(effect_size=abs(d), nobs1=n1, ratio=ratio,
                           alpha=alpha)
  if math.isnan(p):
    # statsmodels returns NaN when the lower-tail term fails at large |d|;
    # that term is then negligible, so the upper tail alone is the power.
    p = power_analysis.power(effect_size=abs(d), nobs1=n1, ratio=ratio,
                             alpha=alpha / 2, alternative='larger')
  return float(p)


def achieved_power(d: float, n1: int, n2: int, alpha: float) -> float:
  """Two-sided two-sample t-test power at effect |d| (n1 = condition)."""
  return _power(d, n1, n2 / n1, alpha) if math.isfinite(d) else math.nan


def seeds_for_power(d: float, alpha: float) -> float:
  """Seeds per group (equal groups) for TARGET_POWER at effect |d|."""
  if not math.isfinite(d):
    return math.nan
  if abs(d) < _MIN_EFFECT:
    return math.inf
  # The root finder fails when 2 seeds already suffice; 2 is the minimum.
  if _power(d, 2, 1.0, alpha) >= TARGET_POWER:
    return 2.0
  n = sm_power.TTestIndPower().solve_power(
      effect_size=abs(d), power=TARGET_POWER, alpha=alpha, ratio=1.0)
  return float(math.ceil(n)) if math.isfinite(n) else math.nan


def compare(x_S: np.ndarray, base_S: np.ndarray,
            alpha: float) -> dict[str, float]:
  """Welch t-test, Cohen's d / Hedges' g with CIs, power: x vs baseline."""
  x_S, base_S = np.asarray(x_S, float), np.asarray(base_S, float)
  n1, n2 = len(x_S), len(base_S)
  # p_holm needs the whole family; analyze() adds it.
  out = {k: math.nan for k in _CONTRAST_COLUMNS if k != 'p_holm'}
  if n1 and n2:
    out['diff'] = float(np.mean(x_S) - np.mean(base_S))
  if n1 < 2 or n2 < 2:
    return out
  d = cohens_d(x_S, base_S)
  if math.isfinite(d):
    res = stats.ttest_ind(x_S, base_S, equal_var=False)
    j = hedges_j(n1 + n2 - 2)
    lo, hi = d_confint(d, n1, n2)
    out.update(t=float(res.statistic), p=float(res.pvalue), d=d,
               d_ci_low=lo, d_ci_high=hi, g=j * d, g_ci_low=j * lo,
               g_ci_high=j * hi, power=achieved_power(d, n1, n2, alpha),
               n_needed=seeds_for_power(d, alpha))
  return out


def omnibus(groups: Mapping[str, np.ndarray], alpha: float) -> dict[str, Any]:
  """One-way test across groups, chosen by assumption checks.

  Shapiro-Wilk (n >= 3, Holm across groups) rejects normality in a group:
  Kruskal-Wallis; else Levene (median) rejects equal variances: Welch's
  ANOVA; else the classic F test. `reason` says why.
  """
  groups = {k: np.asarray(v, float) for k, v in groups.items() if len(v) >= 2}
  out = dict(test='none', statistic=math.nan, df_num=math.nan,
             df_den=math.nan, p=math.nan, levene_p=math.nan,
             shapiro_min_p=math.nan, reason='')
  if len(groups) < 2:
    out['reason'] = 'fewer than two conditions with >= 2 seeds'
    return out
  values = np.concatenate(list(groups.values()))
  if np.ptp(values) == 0:
    out['reason'] = 'all values identical'
    return out
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


def analyze(final: pd.DataFrame, conditions: Sequence[str], baseline: str,
            alpha: float) -> tuple[pd.DataFrame, pd.DataFrame]:
  """Per (metric, layer): descriptives + contrasts table and omnibus table.

  `final` holds the values to use (diverged replicas and nulls removed);
  `conditions` gives the row order. Holm corrects across the conditions
  compared with the baseline, separately for each (metric, layer).
  """
  stat_rows, omni_rows = [], []
  for metric in order_metrics(final['metric'].unique()):
    m_df = final[final['metric'] == metric]
    for layer in [pd.NA] + sorted(m_df['layer'].dropna().unique()):
      df = m_df[m_df['layer'].isna() if layer is pd.NA
                else m_df['layer'] == layer]
      groups = {c: df.loc[df['condition'] == c, 'value'].to_numpy()
                for c in conditions if (df['condition'] == c).any()}
      omni_rows.append(dict(metric=metric, layer=layer,
                            n_conditions=len(groups),
                            **omnibus(groups, alpha)))
      rows = []
      for c, x_S in groups.items():
        row = dict(metric=metric, layer=layer, condition=c, **describe(x_S))
        if c != baseline and baseline in groups:
          row.update(compare(x_S, groups[baseline], alpha))
        rows.append(row)
      for r, p_holm in zip(rows, holm([r.get('p', math.nan) for r in rows])):
        r['p_holm'] = p_holm
      stat_rows.extend(rows)
  table = pd.DataFrame(stat_rows, columns=STAT_COLUMNS)
  omni = pd.DataFrame(omni_rows, columns=OMNIBUS_COLUMNS)
  for df in (table, omni):
    df['layer'] = df['layer'].astype('Int64')
  return table, omni
