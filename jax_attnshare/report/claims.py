"""The blog's claims, and whether a set of runs supports each one.

The claims and the blog's own figures are methods.md §1.1 (the live post's
statistics; values read off its figures, experiments 1 and 2). Each claim
is one condition against the baseline on one metric, in one direction, or
(accuracy) no difference across all conditions. A verdict uses the report's
own tests: Welch's t-test Holm-corrected across the conditions compared
(`p_holm`), and the omnibus test for accuracy.
"""

from collections.abc import Sequence
import dataclasses
import math

import pandas as pd

# The blog's "percentage of near-zero values" states no threshold; the
# absolute 0.01 gives fractions in the blog's range at its sequence length.
SPARSITY_METRIC = 'sparsity_abs_0.01'
ACCURACY_METRIC = 'test_accuracy'
SUPPORTED = 'supported'
CONTRADICTED = 'opposite effect'
NOT_SUPPORTED = 'no evidence'
NOT_RUN = 'not run'


@dataclasses.dataclass(frozen=True)
class Claim:
  """`condition` changes `metric` vs the baseline in `direction`.

  direction: +1 raises, -1 lowers; 0 claims no difference across every
  condition (condition is then '*').
  """
  text: str
  condition: str
  metric: str
  direction: int
  blog: str


CLAIMS = (
    Claim('Sharing K raises entropy', 'k', 'entropy', +1,
          '2.80 vs 2.69; t = -5.374, d = 2.031'),
    Claim('Sharing K lowers sparsity', 'k', SPARSITY_METRIC, -1,
          '0.117 vs 0.167; t = 5.330, d = 2.014'),
    Claim('Sharing V lowers entropy (weaker)', 'v', 'entropy', -1,
          '2.62 vs 2.69; p = 0.0315'),
    Claim('Sharing V raises sparsity (weaker)', 'v', SPARSITY_METRIC, +1,
          '0.195 vs 0.167; p = 0.0395'),
    Claim('Sharing KV raises entropy', 'kv', 'entropy', +1,
          '2.77 vs 2.69; p = 0.0015'),
    Claim('Sharing KV lowers sparsity', 'kv', SPARSITY_METRIC, -1,
          '0.130 vs 0.167; p = 0.0024'),
    Claim('Sharing QV lowers entropy', 'qv', 'entropy', -1,
          '2.59 vs 2.69; p = 0.0042'),
    Claim('Sharing QV raises sparsity', 'qv', SPARSITY_METRIC, +1,
          '0.206 vs 0.167; p = 0.0052'),
    Claim('Sharing KQ raises head correlation', 'kq', 'head_correlation', +1,
          '0.116 vs 0.068; p < 0.0001'),
    Claim('Sharing KQV raises head correlation', 'kqv', 'head_correlation',
          +1, '0.113 vs 0.068 (exp. 2: 0.108 vs 0.072; t = -7.494, '
          'd = 2.833)'),
    Claim('Accuracy is the same in every condition', '*', ACCURACY_METRIC, 0,
          'about 0.82 in all; ANOVA F = 0.262, p = 0.9016'),
)


def _verdict(p: float, diff: float, direction: int, alpha: float) -> str:
  if not (math.isfinite(p) and math.isfinite(diff)):
    return NOT_SUPPORTED
  if p >= alpha:
    return NOT_SUPPORTED
  return SUPPORTED if diff * direction > 0 else CONTRADICTED


def evaluate(table: pd.DataFrame, omni: pd.DataFrame, baseline: str,
             alpha: float, claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
  """One row per claim: the effect these runs show and the verdict.

  table and omni are stats.analyze's outputs (overall rows are used).
  Columns: claim, blog, condition, metric, n, diff, d, d_ci_low, d_ci_high,
  p (p_holm for contrasts, the omnibus p for accuracy), test, verdict.
  """
  overall = table[table['layer'].isna()]
  omni_overall = omni[omni['layer'].isna()]
  rows = []
  for claim in claims:
    row = dict(claim=claim.text, blog=claim.blog, condition=claim.condition,
               metric=claim.metric, n=math.nan, diff=math.nan, d=math.nan,
               d_ci_low=math.nan, d_ci_high=math.nan, p=math.nan, test='',
               verdict=NOT_RUN)
    if claim.direction == 0:
      found = omni_overall[omni_overall['metric'] == claim.metric]
      acc = overall[overall['metric'] == claim.metric]
      if len(found) and found.iloc[0]['n_conditions'] >= 2:
        o = found.iloc[0]
        row.update(n=int(o['n_conditions']), p=float(o['p']), test=o['test'],
                   diff=float(acc['mean'].max() - acc['mean'].min()))
        # "The same" is all one can say from a test that finds nothing.
        row['verdict'] = (NOT_SUPPORTED if float(o['p']) < alpha
                          else SUPPORTED)
    else:
      found = overall[(overall['metric'] == claim.metric)
                      & (overall['condition'] == claim.condition)]
      if len(found) and claim.condition != baseline:
        r = found.iloc[0]
        row.update(n=int(r['n']), diff=float(r['diff']), d=float(r['d']),
                   d_ci_low=float(r['d_ci_low']),
                   d_ci_high=float(r['d_ci_high']), p=float(r['p_holm']),
                   test="Welch's t, Holm")
        row['verdict'] = _verdict(row['p'], row['diff'], claim.direction,
                                  alpha)
    rows.append(row)
  return pd.DataFrame(rows)
