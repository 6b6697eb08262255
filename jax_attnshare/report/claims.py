"""The blog's claims: one declared family, tested together.

The claims and the blog's figures are methods.md §1.1 and the post's text
(SacredFisher.github.io, _posts/ai-ml/2025-05-29-Dissecting-Attention.md:
exp. 1 accuracy "p=0.7952", "whenever keys were shared", "Query sharing
alone had no significant effects", "the head similarity effect emerges only
when multiple components are shared"). Every claim of both experiments is
in CLAIMS, fixed here before any data: a contrast of conditions (always
against `none`, whatever --baseline says), the quantity it is about, and
what the blog claims: a direction (+1 raises, -1 lowers) or no effect (0,
tested for equivalence within a margin).

The family (see docs/statistics.md):
* Each claim has one p-value: the two-sided t-test's for a direction, the
  TOST's for no effect (accuracy: |difference| < Margins.accuracy; the rest:
  |d| < Margins.d). Bonferroni corrects them together over all FAMILY_SIZE
  claims (p_family = min(1, m p)), which keeps the familywise error rate at
  alpha whatever the folder holds. Not Holm: Holm's adjusted p of a claim
  depends on the other claims' p-values, so adding the runs of one claim
  could change another's verdict, and Holm can reject where the claim's
  simultaneous interval still touches 0. With Bonferroni a verdict depends
  only on the claim's own conditions, and agrees with its interval.
* Intervals are Bonferroni-adjusted, the simultaneous intervals that go
  with a familywise alpha: 1 - alpha/m for directions, 1 - 2 alpha/m for
  no-effect claims (the TOST's interval; 90% when m = 1 and alpha = 0.05).
* Verdict: supported / opposite effect (p_family < alpha, by the sign) /
  not shown, or equivalent (p_family < alpha) / differs (the interval lies
  beyond the margin) / inconclusive.
* Against the blog: its d on this scale (BlogEffect). Inconsistent with the
  blog when the interval lies below the blog's d in the claimed direction
  (or, no effect claimed, when the claim `differs`); replicated when the
  claim is supported (equivalent) and not inconsistent; else inconclusive.
"""

from collections.abc import Sequence
import dataclasses
import math
from typing import Any

import pandas as pd
from scipy import stats as scipy_stats

from jax_attnshare.report import stats

# The declared metric of each quantity. Both attention metrics are
# length-invariant, so regimes of different lengths compare: entropy over
# the real tokens divided by ln of their number, and sparsity as the
# fraction of real weights below a tenth of the uniform weight 1/n ("near
# zero": the blog states no threshold). Chosen here before the full-size
# runs; the absolute 0.01 threshold the report used before was picked after
# seeing the :cpu runs (and a uniform 1/n is below it once n > 100).
PRIMARY_METRICS = {
    'entropy': 'entropy_norm', 'sparsity': 'sparsity_rel_0.1',
    'head correlation': 'head_correlation', 'accuracy': 'test_accuracy'}
# Their absolute counterparts, reported beside them (exploratory).
ABSOLUTE_METRICS = {'entropy': 'entropy', 'sparsity': 'sparsity_abs_0.01'}
BASELINE = 'none'
# The blog: 15 seeds per condition, two-sample t-tests (df 28), about 0.82
# test accuracy in every condition (its figures).
BLOG_SEEDS = 15
BLOG_ACCURACY = 0.82

SUPPORTED = 'supported'
OPPOSITE = 'opposite effect'
NOT_SHOWN = 'not shown'
EQUIVALENT = 'equivalent'
DIFFERS = 'differs'
INCONCLUSIVE = 'inconclusive'
NOT_RUN = 'not run'
TOO_FEW = 'too few seeds'
REPLICATED = 'replicated'
INCONSISTENT = 'inconsistent with the blog'


@dataclasses.dataclass(frozen=True)
class Margins:
  """Equivalence margins of the no-effect claims.

  accuracy: in accuracy (1 point). d: in standardised units; the blog's
  "no effect" is a non-significant test at 15 seeds per group, which has
  80% power only from d = 1.06, so it cannot mean more than |d| < 1.
  """
  accuracy: float = 0.01
  d: float = 1.0


@dataclasses.dataclass(frozen=True)
class BlogEffect:
  """The blog's statistic for a claim: t, p, an upper bound on p, or none.

  Converted to d = t sqrt(2 / 15), this report's scale (stats.Contrast.d
  of two conditions of 15 seeds). The blog's own d is t sqrt(2 / 14)
  (Cohen's d with ddof-0 SDs: 5.374 -> 2.031 as it reports). A p is
  two-sided at df 28.
  """
  t: float = math.nan
  p: float = math.nan
  p_below: float = math.nan

  def _d_of_p(self, p: float) -> float:
    return float(scipy_stats.t.isf(p / 2, 2 * BLOG_SEEDS - 2)
                 * math.sqrt(2 / BLOG_SEEDS))

  @property
  def d(self) -> float:
    """The blog's effect on this report's scale (NaN if it gives none)."""
    if math.isfinite(self.t):
      return abs(self.t) * math.sqrt(2 / BLOG_SEEDS)
    return self._d_of_p(self.p) if math.isfinite(self.p) else math.nan

  @property
  def d_min(self) -> float:
    """The smallest effect the blog's statement implies (0: a direction)."""
    if math.isfinite(self.p_below):
      return self._d_of_p(self.p_below)
    return self.d if math.isfinite(self.d) else 0.0


@dataclasses.dataclass(frozen=True)
class Claim:
  """What the blog claims about one contrast of conditions.

  weights: ((condition, weight), ...) summing to 0; direction: +1, -1, or
  0 for no effect.
  """
  key: str
  text: str
  experiments: tuple[int, ...]
  weights: tuple[tuple[str, float], ...]
  quantity: str
  direction: int
  blog: str
  blog_effect: BlogEffect = BlogEffect()

  @property
  def metric(self) -> str:
    return PRIMARY_METRICS[self.quantity]

  @property
  def sum_w2(self) -> float:
    return float(sum(w**2 for _, w in self.weights))

  @property
  def contrast_text(self) -> str:
    terms = []
    for c, w in self.weights:
      sign = '-' if w < 0 else '+'
      size = '' if abs(w) == 1 else f'{abs(w):g} '
      terms.append(f'{sign} {size}{c}')
    return ' '.join(terms).removeprefix('+ ')


def _vs_none(condition: str) -> tuple[tuple[str, float], ...]:
  return ((condition, 1.0), (BASELINE, -1.0))


_NO_STAT = BlogEffect()
_Q_TEXT = '"Query sharing alone had no significant effects"'
_HEAD_TEXT = ('"Individual components (K, Q, V) showed no significant '
              'effects on head diversity"')
_KEYS_TEXT = ('text: "whenever keys were shared (K-only, KV, KQ, KQV), '
              'attention became more distributed"; no statistic')

CLAIMS = (
    # Experiment 2: none, k, q, v, kqv.
    Claim('k_entropy', 'Sharing K raises entropy', (2,), _vs_none('k'),
          'entropy', +1, '2.80 vs 2.69 nats; t = -5.374, d = 2.031',
          BlogEffect(t=5.374)),
    Claim('k_sparsity', 'Sharing K lowers sparsity', (2,), _vs_none('k'),
          'sparsity', -1, '0.117 vs 0.167; t = 5.330, d = 2.014',
          BlogEffect(t=5.330)),
    Claim('v_entropy', 'Sharing V lowers entropy (weaker)', (2,),
          _vs_none('v'), 'entropy', -1, '2.62 vs 2.69 nats; p = 0.0315',
          BlogEffect(p=0.0315)),
    Claim('v_sparsity', 'Sharing V raises sparsity (weaker)', (2,),
          _vs_none('v'), 'sparsity', +1, '0.195 vs 0.167; p = 0.0395',
          BlogEffect(p=0.0395)),
    Claim('q_entropy', 'Sharing Q alone leaves entropy unchanged', (2,),
          _vs_none('q'), 'entropy', 0, f'2.64 vs 2.69 nats; {_Q_TEXT}'),
    Claim('q_sparsity', 'Sharing Q alone leaves sparsity unchanged', (2,),
          _vs_none('q'), 'sparsity', 0, f'0.186 vs 0.167; {_Q_TEXT}'),
    Claim('k_head', 'Sharing K alone leaves head correlation unchanged',
          (2,), _vs_none('k'), 'head correlation', 0,
          f'0.075 vs 0.072; {_HEAD_TEXT}'),
    Claim('q_head', 'Sharing Q alone leaves head correlation unchanged',
          (2,), _vs_none('q'), 'head correlation', 0,
          f'0.064 vs 0.072; {_HEAD_TEXT}'),
    Claim('v_head', 'Sharing V alone leaves head correlation unchanged',
          (2,), _vs_none('v'), 'head correlation', 0,
          f'0.068 vs 0.072; {_HEAD_TEXT}'),
    Claim('kqv_head', 'Sharing KQV raises head correlation', (1, 2),
          _vs_none('kqv'), 'head correlation', +1,
          'exp. 2: 0.108 vs 0.072; t = -7.494, d = 2.833 (exp. 1: 0.113 vs '
          '0.068; p < 0.0001)', BlogEffect(t=7.494)),
    Claim('head_needs_several', 'The head effect needs several components '
          'shared: KQV raises head correlation by more than K, Q and V '
          'alone add up to', (2,),
          (('kqv', 1.0), ('k', -1.0), ('q', -1.0), ('v', -1.0),
           (BASELINE, 2.0)), 'head correlation', +1,
          'text: "the head similarity effect emerges only when multiple '
          'components are shared"; no statistic'),
    Claim('kqv_entropy', 'Sharing KQV spreads attention (raises entropy)',
          (1, 2), _vs_none('kqv'), 'entropy', +1,
          f'{_KEYS_TEXT}; its figures: 2.65 vs 2.69 nats'),
    # Experiment 1: none, kv, kq, qv, kqv.
    Claim('kv_entropy', 'Sharing KV raises entropy', (1,), _vs_none('kv'),
          'entropy', +1, '2.77 vs 2.69 nats; p = 0.0015',
          BlogEffect(p=0.0015)),
    Claim('kv_sparsity', 'Sharing KV lowers sparsity', (1,), _vs_none('kv'),
          'sparsity', -1, '0.130 vs 0.167; p = 0.0024', BlogEffect(p=0.0024)),
    Claim('qv_entropy', 'Sharing QV lowers entropy', (1,), _vs_none('qv'),
          'entropy', -1, '2.59 vs 2.69 nats; p = 0.0042',
          BlogEffect(p=0.0042)),
    Claim('qv_sparsity', 'Sharing QV raises sparsity', (1,), _vs_none('qv'),
          'sparsity', +1, '0.206 vs 0.167; p = 0.0052', BlogEffect(p=0.0052)),
    Claim('kq_head', 'Sharing KQ raises head correlation', (1,),
          _vs_none('kq'), 'head correlation', +1,
          '0.116 vs 0.068; p < 0.0001', BlogEffect(p_below=0.0001)),
    Claim('kq_entropy', 'Sharing KQ spreads attention (raises entropy)', (1,),
          _vs_none('kq'), 'entropy', +1,
          f'{_KEYS_TEXT}; its figures: 2.64 vs 2.69 nats'),
    # Accuracy, one claim per condition: kqv's runs serve both experiments.
    *(Claim(f'accuracy_{c}', f'Sharing {c.upper()} leaves accuracy '
            'unchanged', experiments, _vs_none(c), 'accuracy', 0,
            'about 0.82 in every condition (its figures)')
      for c, experiments in (('k', (2,)), ('q', (2,)), ('v', (2,)),
                             ('kv', (1,)), ('kq', (1,)), ('qv', (1,)),
                             ('kqv', (1, 2)))),
)
FAMILY_SIZE = len(CLAIMS)

# The blog's "accuracy is the same in every condition", per experiment:
# equivalent when every condition's accuracy claim is (an
# intersection-union test, which needs no further correction).
EVERY_CONDITION = (
    (1, ('kv', 'kq', 'qv', 'kqv'), 'about 0.82 in all; ANOVA p = 0.7952'),
    (2, ('k', 'q', 'v', 'kqv'), 'about 0.82 in all; ANOVA F = 0.262, '
     'p = 0.9016'),
)

CLAIM_COLUMNS = (
    'key', 'claim', 'experiments', 'contrast', 'metric', 'direction', 'blog',
    'blog_d', 'blog_d_min', 'n', 'estimate', 'ci_level', 'ci_low', 'ci_high',
    'd', 'd_ci_low', 'd_ci_high', 'margin', 'rho', 'p', 'p_family', 'verdict',
    'vs_blog', 'note')


def interval_level(claim: Claim, alpha: float) -> float:
  """The Bonferroni-adjusted level of the claim's interval."""
  return 1 - (2 if claim.direction == 0 else 1) * alpha / FAMILY_SIZE


def _margin(claim: Claim, margins: Margins) -> float:
  if claim.direction:
    return math.nan
  return margins.accuracy if claim.quantity == 'accuracy' else margins.d


def _values(final: pd.DataFrame, metric: str) -> pd.DataFrame:
  """Seeds x conditions of a metric's overall (all-layer) values."""
  return stats.wide(final[(final['metric'] == metric)
                          & final['layer'].isna()])


def _test(claim: Claim, final: pd.DataFrame, conditions: Sequence[str],
          design: str, alpha: float, margins: Margins) -> dict[str, Any]:
  """The claim's test on these runs; p is NaN when it cannot be tested."""
  absent = [c for c, _ in claim.weights if c not in conditions]
  if absent:
    return dict(verdict=NOT_RUN, p=math.nan,
                note=f'no run of {", ".join(absent)}')
  values = _values(final, claim.metric)
  if values.empty:
    return dict(verdict=NOT_RUN, p=math.nan,
                note=f'these runs record no {claim.metric}')
  dead = [c for c, _ in claim.weights if c not in values]
  if dead:
    return dict(verdict=TOO_FEW, p=math.nan,
                note=f'no live {claim.metric} value of {", ".join(dead)}')
  try:
    c = stats.contrast(values, dict(claim.weights), design)
  except stats.Untestable as e:
    return dict(verdict=TOO_FEW, p=math.nan, note=str(e))
  level = interval_level(claim, alpha)
  margin = _margin(claim, margins)
  if claim.direction:
    p = c.p
  elif claim.quantity == 'accuracy':
    p = c.tost(margin)
  else:
    p = c.tost_d(margin)
  (lo, hi), (d_lo, d_hi) = c.interval(level), c.d_interval(level)
  return dict(verdict='', note='', n=c.n, estimate=c.estimate, ci_low=lo,
              ci_high=hi, d=c.d, d_ci_low=d_lo, d_ci_high=d_hi, rho=c.rho,
              p=p)


def _verdicts(row: dict[str, Any], claim: Claim, alpha: float) -> None:
  """Fills verdict and vs_blog of a tested row from p_family and intervals."""
  significant = row['p_family'] < alpha
  if claim.direction:
    if significant:
      same = math.copysign(1, row['estimate']) == claim.direction
      row['verdict'] = SUPPORTED if same else OPPOSITE
    else:
      row['verdict'] = NOT_SHOWN
    # The interval's end in the claimed direction.
    reach = max(claim.direction * row['d_ci_low'],
                claim.direction * row['d_ci_high'])
    if reach < claim.blog_effect.d_min:
      row['vs_blog'] = INCONSISTENT
    else:
      row['vs_blog'] = (REPLICATED if row['verdict'] == SUPPORTED
                        else INCONCLUSIVE)
    return
  lo, hi = ((row['ci_low'], row['ci_high']) if claim.quantity == 'accuracy'
            else (row['d_ci_low'], row['d_ci_high']))
  if significant:
    row['verdict'] = EQUIVALENT
  elif lo >= row['margin'] or hi <= -row['margin']:
    row['verdict'] = DIFFERS
  else:
    row['verdict'] = INCONCLUSIVE
  row['vs_blog'] = {EQUIVALENT: REPLICATED, DIFFERS: INCONSISTENT}.get(
      row['verdict'], INCONCLUSIVE)


def evaluate(final: pd.DataFrame, conditions: Sequence[str], design: str,
             alpha: float, margins: Margins = Margins()) -> pd.DataFrame:
  """One row per claim of CLAIMS (CLAIM_COLUMNS), the family corrected.

  final: stats.tidy_table rows to use (final values, diverged replicas and
  nulls removed); conditions: those of the runs compared (a condition
  among them without live values has 0 live seeds). estimate and ci_* are
  in the metric's units, d and d_ci_* standardised (stats.Contrast), both
  intervals at ci_level.
  """
  rows = []
  for claim in CLAIMS:
    row = dict(
        key=claim.key, claim=claim.text,
        experiments=', '.join(map(str, claim.experiments)),
        contrast=claim.contrast_text, metric=claim.metric,
        direction=claim.direction, blog=claim.blog,
        blog_d=claim.blog_effect.d if claim.direction else math.nan,
        blog_d_min=claim.blog_effect.d_min if claim.direction else math.nan,
        ci_level=interval_level(claim, alpha),
        margin=_margin(claim, margins), vs_blog='')
    row.update(_test(claim, final, conditions, design, alpha, margins))
    rows.append(row)
  for claim, row in zip(CLAIMS, rows):
    row['p_family'] = (min(1.0, FAMILY_SIZE * row['p'])
                       if math.isfinite(row['p']) else math.nan)
    if not row['verdict']:
      _verdicts(row, claim, alpha)
  return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def every_condition(frame: pd.DataFrame) -> list[dict[str, Any]]:
  """The blog's "accuracy is the same in every condition", per experiment.

  frame: evaluate()'s. Equivalent when each condition's accuracy claim is,
  differs when one differs, not run when none was tested, else
  inconclusive (naming the conditions that could not be tested).
  """
  verdicts = frame.set_index('key')['verdict']
  out = []
  for experiment, conditions, blog in EVERY_CONDITION:
    got = {c: verdicts[f'accuracy_{c}'] for c in conditions}
    untested = [c for c, v in got.items() if v in (NOT_RUN, TOO_FEW)]
    if len(untested) == len(got):
      verdict = NOT_RUN
    elif any(v == DIFFERS for v in got.values()):
      verdict = DIFFERS
    elif all(v == EQUIVALENT for v in got.values()):
      verdict = EQUIVALENT
    else:
      verdict = INCONCLUSIVE
    out.append(dict(
        experiment=experiment, conditions=conditions, blog=blog,
        verdict=verdict, untested=untested,
        vs_blog={EQUIVALENT: REPLICATED, DIFFERS: INCONSISTENT,
                 NOT_RUN: ''}.get(verdict, INCONCLUSIVE)))
  return out


def accuracy_gate(final: pd.DataFrame) -> dict[str, float] | None:
  """`none`'s test accuracy against the blog's 0.82 (None if not run).

  Mean, 95% t interval over live seeds and the distance mean - 0.82.
  """
  acc = final[(final['metric'] == PRIMARY_METRICS['accuracy'])
              & final['layer'].isna() & (final['condition'] == BASELINE)]
  if acc.empty:
    return None
  got = stats.describe(acc['value'].to_numpy())
  return dict(got, gap=got['mean'] - BLOG_ACCURACY)


def absolute_contrasts(final: pd.DataFrame, design: str) -> pd.DataFrame:
  """Exploratory: the entropy and sparsity claims on ABSOLUTE_METRICS.

  Columns: key, claim, metric, estimate, d, d_ci_low, d_ci_high (95%) and
  p (unadjusted); claims that cannot be tested are left out.
  """
  rows = []
  for claim in CLAIMS:
    metric = ABSOLUTE_METRICS.get(claim.quantity)
    if metric is None:
      continue
    try:
      c = stats.contrast(_values(final, metric), dict(claim.weights), design)
    except stats.Untestable:
      continue
    lo, hi = c.d_interval(stats.CI_LEVEL)
    rows.append(dict(key=claim.key, claim=claim.text, metric=metric,
                     estimate=c.estimate, d=c.d, d_ci_low=lo, d_ci_high=hi,
                     p=c.p))
  return pd.DataFrame(rows, columns=('key', 'claim', 'metric', 'estimate', 'd',
                                     'd_ci_low', 'd_ci_high', 'p'))
