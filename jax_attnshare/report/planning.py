"""What a design can detect, computed before any data: power and MDE.

Everything here depends on the number of seeds, the design, the level and
the contrast's weights, never on observed values (power at an observed
effect is a function of its p-value and says nothing more). Effects are on
the scale of stats.Contrast.d: the noncentrality of a contrast with weights
w over n seeds per condition is d * sqrt(n / sum w^2), its df is n - 1
(paired) or k (n - 1) for k conditions (independent). Paired figures
assume seeds share no variance across conditions; a correlation rho > 0
makes the paired design more sensitive by a factor 1 / sqrt(1 - rho).
mde_table applies them to the claims' family at its Bonferroni level
alpha / m, the level at which the report decides each claim.
"""

from collections.abc import Sequence
import functools
import math

import pandas as pd

from scipy import integrate
from scipy import optimize
from scipy import stats

from jax_attnshare.report import claims as claims_lib
from jax_attnshare.report import stats as report_stats

TARGET_POWER = 0.8
# Planning value of the SD of test accuracy over seeds: the 5-seed :cpu
# study of the blog regime at 32 words had 0.008-0.014 per condition
# (docs/studies/blog32_cpu.md); issue 18's simulations use 0.012.
ACCURACY_SD = 0.012


def df_of(n: int, k: int, design: str) -> int:
  """Error df of a k-condition contrast over n seeds per condition."""
  return n - 1 if design == 'paired' else k * (n - 1)


def power(d: float, n: int, sum_w2: float, k: int, design: str,
          alpha: float) -> float:
  """Two-sided t-test power at standardised contrast d."""
  if n < 2:
    return 0.0
  df = df_of(n, k, design)
  nc = abs(d) * math.sqrt(n / sum_w2)
  crit = stats.t.isf(alpha / 2, df)
  return (report_stats.nct_sf(crit, df, nc)
          + report_stats.nct_sf(crit, df, -nc))


# The searches below are cached: a table asks each of them once per kind of
# contrast, not once per claim.
def _smallest(f, target: float) -> float:
  """Smallest x > 0 with f(x) >= target, f increasing from below it."""
  hi = 1.0
  while f(hi) < target:
    hi *= 2
    if hi > 1e4:
      return math.inf
  return float(optimize.brentq(lambda x: f(x) - target, 1e-9, hi, xtol=1e-6))


@functools.cache
def mde(n: int, sum_w2: float, k: int, design: str, alpha: float,
        target: float = TARGET_POWER) -> float:
  """Smallest |d| a two-sided test at alpha detects with power `target`."""
  if n < 2:
    return math.inf
  return _smallest(lambda d: power(d, n, sum_w2, k, design, alpha), target)


def equivalence_power(margin_d: float, n: int, sum_w2: float, k: int,
                      design: str, alpha: float) -> float:
  """Power of the exact TOST for |d| < margin_d when the truth is d = 0.

  Contrast.tost_d rejects when the t statistic lies between the alpha and
  1 - alpha quantiles of the noncentral t at -/+ the margin's
  noncentrality; under d = 0 the statistic is central t.
  """
  if n < 2:
    return 0.0
  df = df_of(n, k, design)
  nc = margin_d * math.sqrt(n / sum_w2)
  upper = stats.nct.ppf(alpha, df, nc)
  return float(max(0.0, stats.t.cdf(upper, df) - stats.t.cdf(-upper, df)))


@functools.cache
def equivalence_mde(n: int, sum_w2: float, k: int, design: str, alpha: float,
                    target: float = TARGET_POWER) -> float:
  """Smallest d margin the TOST proves with power `target` when d = 0."""
  if n < 2:
    return math.inf
  return _smallest(lambda m: equivalence_power(m, n, sum_w2, k, design,
                                               alpha), target)


def raw_equivalence_power(margin_sd: float, n: int, sum_w2: float, k: int,
                          design: str, alpha: float) -> float:
  """Power of Contrast.tost (margin in units) when the truth is 0.

  margin_sd: the margin over the SD sigma of one condition over seeds.
  The test rejects when |estimate| + t_(1 - alpha) * se < margin, with
  estimate ~ N(0, (s sigma)^2), se = s * sigma * u, s = sqrt(sum w^2 / n)
  and u^2 df ~ chi^2(df): integrated over u.
  """
  if n < 2:
    return 0.0
  df = df_of(n, k, design)
  s = math.sqrt(sum_w2 / n)
  crit = stats.t.ppf(1 - alpha, df)

  def given_u(u):
    half = margin_sd / s - crit * u
    return max(0.0, 2 * stats.norm.cdf(half) - 1) * stats.chi.pdf(
        u * math.sqrt(df), df) * math.sqrt(df)
  # The integrand is zero once crit * u exceeds margin / s.
  top = margin_sd / (s * crit)
  return float(integrate.quad(given_u, 0, top, limit=200, epsabs=1e-7)[0])


@functools.cache
def raw_equivalence_mde(n: int, sum_w2: float, k: int, design: str,
                        alpha: float, target: float = TARGET_POWER) -> float:
  """Smallest margin (in SDs) Contrast.tost proves with power `target`."""
  if n < 2:
    return math.inf
  return _smallest(lambda m: raw_equivalence_power(m, n, sum_w2, k, design,
                                                   alpha), target)



def mde_table(seeds: Sequence[int], design: str, alpha: float,
              margins: 'claims_lib.Margins',
              accuracy_sd: float = ACCURACY_SD) -> pd.DataFrame:
  """Per claim and number of seeds n: what the family can confirm.

  Columns: key, claim, kind, blog_d, blog_d_min, then per n `mde_<n>` and
  `power_<n>`. A direction: the smallest d detected with TARGET_POWER, and
  the power at the blog's d (its lower bound for "p < ..."; NaN when the
  blog gives no statistic). No effect: the smallest margin proved with
  TARGET_POWER when the truth is 0 (accuracy: in accuracy at accuracy_sd),
  and the power at the declared margin.
  """
  level = alpha / claims_lib.FAMILY_SIZE
  rows = []
  for claim in claims_lib.CLAIMS:
    k, w2 = len(claim.weights), claim.sum_w2
    accuracy = claim.quantity == 'accuracy'
    row = dict(key=claim.key, claim=claim.text,
               kind=('direction' if claim.direction else
                     'no effect (accuracy)' if accuracy else 'no effect (d)'),
               blog_d=claim.blog_effect.d if claim.direction else math.nan,
               blog_d_min=(claim.blog_effect.d_min if claim.direction
                           else math.nan))
    for n in seeds:
      if claim.direction:
        blog = row['blog_d_min']
        row[f'mde_{n}'] = mde(n, w2, k, design, level)
        row[f'power_{n}'] = (power(blog, n, w2, k, design, level) if blog > 0
                             else math.nan)
      elif accuracy:
        row[f'mde_{n}'] = accuracy_sd * raw_equivalence_mde(n, w2, k, design,
                                                            level)
        row[f'power_{n}'] = raw_equivalence_power(
            margins.accuracy / accuracy_sd, n, w2, k, design, level)
      else:
        row[f'mde_{n}'] = equivalence_mde(n, w2, k, design, level)
        row[f'power_{n}'] = equivalence_power(margins.d, n, w2, k, design,
                                              level)
    rows.append(row)
  return pd.DataFrame(rows)
