"""The blog's 8 conditions as the K x Q x V 2x2x2 factorial they are.

Exploratory (not in the claims' family). Each condition shares a subset of
K, Q, V; coded -1/2 (not shared) and +1/2 (shared), the OLS coefficient of
a factor is its main effect (shared minus not shared, averaged over the
other two factors) and that of a product its interaction (K x Q: the K
effect with Q shared minus without; K x Q x V: the K x Q interaction with
V shared minus without). Paired, seeds are blocks: `value ~ K * Q * V +
C(seed)` over the seeds live in all 8 conditions.
"""

from collections.abc import Sequence

import pandas as pd
from statsmodels.formula import api as smf

from jax_attnshare.report import stats

# condition: (K, Q, V) shared.
FACTORS = {
    'none': (0, 0, 0), 'k': (1, 0, 0), 'q': (0, 1, 0), 'v': (0, 0, 1),
    'kq': (1, 1, 0), 'kv': (1, 0, 1), 'qv': (0, 1, 1), 'kqv': (1, 1, 1)}
TERMS = {'K': 'K', 'Q': 'Q', 'V': 'V', 'K:Q': 'K x Q', 'K:V': 'K x V',
         'Q:V': 'Q x V', 'K:Q:V': 'K x Q x V'}
EFFECT_COLUMNS = ('metric', 'term', 'estimate', 'ci_low', 'ci_high', 't',
                  'df', 'p')
CI_LEVEL = 0.95


def missing(conditions: Sequence[str]) -> list[str]:
  """The factorial's conditions that are not among `conditions`."""
  return [c for c in FACTORS if c not in conditions]


def effects(values: pd.DataFrame, metric: str,
            design: str) -> pd.DataFrame:
  """Main effects and interactions of one metric (EFFECT_COLUMNS).

  values: seeds x conditions (stats.wide), holding all of FACTORS. Empty
  when the design leaves fewer than 2 seeds per condition.
  """
  values = values[list(FACTORS)]
  if design == 'paired':
    values = values.dropna()
  if values.notna().sum().min() < 2:
    return pd.DataFrame(columns=EFFECT_COLUMNS)
  long = values.rename_axis(index='seed', columns='condition').stack(
  ).rename('value').reset_index()
  for i, factor in enumerate('KQV'):
    long[factor] = long['condition'].map(lambda c: FACTORS[c][i] - 0.5)
  formula = 'value ~ K * Q * V' + (' + C(seed)' if design == 'paired' else '')
  fit = smf.ols(formula, data=long).fit()
  ci = fit.conf_int(1 - CI_LEVEL)
  return pd.DataFrame(
      [dict(metric=metric, term=label, estimate=float(fit.params[term]),
            ci_low=float(ci.loc[term, 0]), ci_high=float(ci.loc[term, 1]),
            t=float(fit.tvalues[term]), df=float(fit.df_resid),
            p=float(fit.pvalues[term]))
       for term, label in TERMS.items()], columns=EFFECT_COLUMNS)


def analyze(final: pd.DataFrame, metrics: Sequence[str],
            design: str) -> pd.DataFrame:
  """effects() of each metric present in `final` (overall values)."""
  frames = []
  for metric in metrics:
    rows = final[(final['metric'] == metric) & final['layer'].isna()]
    if rows.empty:
      continue
    values = stats.wide(rows)
    if not missing(list(values.columns)):
      frames.append(effects(values, metric, design))
  frames = [f for f in frames if not f.empty]
  return (pd.concat(frames, ignore_index=True) if frames
          else pd.DataFrame(columns=EFFECT_COLUMNS))
