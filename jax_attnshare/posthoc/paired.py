"""Paired comparison of each post-hoc variant with the unshared model.

Every row of a study predicts the same test examples as the unshared model,
so its difference is estimated and tested paired, which cancels the
variation between examples that an unpaired comparison of two accuracies
would carry (the binomial SE of one accuracy, ~1.4 points at 1,000 reviews,
is larger than the ~1-point effects of the papers).

Design:
* Units: the independent pieces of the test set. A review (classifier or
  linear probe) is a unit with one prediction; an LM test sequence is a unit
  with its real next tokens, which share the sequence's topic and style, so
  their errors correlate and a binomial over tokens would understate the
  uncertainty. Every SE and interval here treats units, not tokens, as the
  samples: the SE of a ratio of sums Σy/Σn is the cluster-robust
  (linearized) one, and the intervals resample whole units.
* Intervals: 95% percentile intervals of a paired bootstrap over units: one
  set of `samples` resamples (seeded) is drawn per replica and every row is
  resampled with it, so the base and the variant always see the same units.
* Tests of a difference from the unshared model: for one prediction per unit
  McNemar's exact test (two-sided binomial on the discordant units); for the
  LM the paired bootstrap p of the difference (token accuracy; log
  perplexity), 2·min(P*(Δ* ≤ 0), P*(Δ* ≥ 0)) with the +1 correction.
* Equivalence (only from which "no difference" may be claimed): TOST at
  ±margin on the quality difference, p = max(P*(Δ* ≤ −margin),
  P*(Δ* ≥ margin)) on the same resamples.
* Family: the variant rows of one replica of one study. The difference tests
  are Holm-adjusted over it, the equivalence tests likewise (a separate
  family), and the LM's perplexity tests as a third.
* Detectable effect (before the data): `detectable_difference` gives the
  smallest paired accuracy drop McNemar's test finds with the given power
  for N units and an assumed discordance rate (normal approximation of
  Connor 1987).

Array suffixes: N units, B resamples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize
from scipy import stats

from jax_attnshare.report import stats as report_stats

LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Units:
  """Per-unit sums of one row's test predictions.

  correct_N: correct predictions of each unit; count_N: its predictions (1
  for a review, the real next tokens of an LM sequence); loss_N: its summed
  next-token NLL in nats (the LM only).
  """
  correct_N: np.ndarray
  count_N: np.ndarray
  loss_N: np.ndarray | None = None

  @property
  def single(self) -> bool:
    """One prediction per unit: McNemar's test applies."""
    return bool(np.all(self.count_N == 1))


def ratio_se(y_N: np.ndarray, n_N: np.ndarray) -> float:
  """Cluster-robust SE of R = Σy/Σn over units (linearization).

  SE² = N/(N−1) · Σ(y_i − R·n_i)² / (Σn)². With one prediction per unit it
  is the binomial SE sqrt(R(1−R)/(N−1)).
  """
  y_N, n_N = np.asarray(y_N, np.float64), np.asarray(n_N, np.float64)
  units = len(y_N)
  if units < 2:
    return float('nan')
  r = y_N.sum() / n_N.sum()
  return float(np.sqrt(units / (units - 1) * np.sum((y_N - r * n_N) ** 2))
               / n_N.sum())


def mcnemar(base_correct_N: np.ndarray,
            correct_N: np.ndarray) -> tuple[float, int, int]:
  """(exact two-sided p, b, c); b: only the base right, c: only the row."""
  base, row = np.asarray(base_correct_N, bool), np.asarray(correct_N, bool)
  b, c = int(np.sum(base & ~row)), int(np.sum(~base & row))
  if b + c == 0:
    return 1.0, b, c
  return float(stats.binomtest(b, b + c, 0.5).pvalue), b, c


def resample_counts(units: int, samples: int, seed: int) -> np.ndarray:
  """[B, N] how often each unit is drawn in each bootstrap resample."""
  rng = np.random.default_rng(seed)
  return rng.multinomial(units, np.full(units, 1 / units), size=samples)


def interval(x_B: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
  """Percentile interval of the bootstrap values x_B."""
  lo, hi = np.quantile(x_B, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


def bootstrap_p(delta_B: np.ndarray) -> float:
  """Two-sided p of 'no difference' from paired bootstrap differences."""
  samples = len(delta_B)
  below = (1 + np.sum(delta_B <= 0)) / (samples + 1)
  above = (1 + np.sum(delta_B >= 0)) / (samples + 1)
  return float(min(1., 2 * min(below, above)))


def tost_p(delta_B: np.ndarray, margin: float) -> float:
  """Equivalence p within ±margin: max of the two one-sided bootstrap p."""
  samples = len(delta_B)
  below = (1 + np.sum(delta_B <= -margin)) / (samples + 1)
  above = (1 + np.sum(delta_B >= margin)) / (samples + 1)
  return float(min(1., max(below, above)))


def _ratio_B(counts_BN: np.ndarray, y_N: np.ndarray,
             n_N: np.ndarray) -> np.ndarray:
  return (counts_BN @ np.asarray(y_N, np.float64)) / (
      counts_BN @ np.asarray(n_N, np.float64))


def describe(units: Units, counts_BN: np.ndarray) -> dict[str, float]:
  """quality (Σcorrect/Σcount), its SE and interval; perplexity (LM)."""
  q = float(units.correct_N.sum() / units.count_N.sum())
  row = {'quality': q, 'quality_se': ratio_se(units.correct_N,
                                              units.count_N)}
  row['quality_lo'], row['quality_hi'] = interval(
      _ratio_B(counts_BN, units.correct_N, units.count_N))
  if units.loss_N is not None:
    row['perplexity'] = float(np.exp(units.loss_N.sum()
                                     / units.count_N.sum()))
    row['perplexity_lo'], row['perplexity_hi'] = interval(
        np.exp(_ratio_B(counts_BN, units.loss_N, units.count_N)))
  return row


def compare(base: Units, units: Units, counts_BN: np.ndarray,
            margin: float) -> dict[str, float]:
  """The row's difference from the unshared model, paired over units.

  diff = quality − the base's, with its interval, test p (p_test names the
  test) and equivalence p at ±margin; kept_pct's interval; the LM's
  perplexity ratio with its interval and p; the discordance (fraction of
  units whose correctness differs) where units hold one prediction.
  """
  if not np.array_equal(base.count_N, units.count_N):
    raise ValueError('paired rows must count the same predictions per unit.')
  count = base.count_N
  q_base_B = _ratio_B(counts_BN, base.correct_N, count)
  q_B = _ratio_B(counts_BN, units.correct_N, count)
  delta_B = q_B - q_base_B
  diff = float((units.correct_N.sum() - base.correct_N.sum()) / count.sum())
  row = {'diff': diff, 'tost_p': tost_p(delta_B, margin)}
  row['diff_lo'], row['diff_hi'] = interval(delta_B)
  with np.errstate(divide='ignore', invalid='ignore'):
    row['kept_pct_lo'], row['kept_pct_hi'] = interval(100 * q_B / q_base_B)
  if units.single:
    row['p'], b, c = mcnemar(base.correct_N, units.correct_N)
    row.update(p_test='mcnemar', discordance=(b + c) / len(count))
  else:
    row.update(p=bootstrap_p(delta_B), p_test='bootstrap')
  if units.loss_N is not None:
    log_ratio_B = (_ratio_B(counts_BN, units.loss_N, count)
                   - _ratio_B(counts_BN, base.loss_N, count))
    row['perplexity_ratio'] = float(np.exp(
        (units.loss_N.sum() - base.loss_N.sum()) / count.sum()))
    row['perplexity_ratio_lo'], row['perplexity_ratio_hi'] = np.exp(
        interval(log_ratio_B))
    row['perplexity_p'] = bootstrap_p(log_ratio_B)
  return row


def verdicts(rows: list[dict], alpha: float, margin: float) -> None:
  """Adds p_holm, tost_p_holm (and perplexity_p_holm) and a verdict.

  `rows` are the variant rows of one replica (the family). The verdict is
  'worse' or 'better' where the Holm-adjusted difference test rejects at
  alpha (', within ±margin' added where equivalence holds as well),
  'equivalent' where only the equivalence test does, else 'unresolved'.
  """
  keys = ['p', 'tost_p'] + (['perplexity_p'] if rows and
                            'perplexity_p' in rows[0] else [])
  adjusted = {k: report_stats.holm([r[k] for r in rows]) for k in keys}
  for i, row in enumerate(rows):
    for k in keys:
      row[f'{k}_holm'] = float(adjusted[k][i])
    equivalent = row['tost_p_holm'] < alpha
    if row['p_holm'] < alpha:
      verdict = 'worse' if row['diff'] < 0 else 'better'
      if equivalent:
        verdict += f', within ±{100 * margin:g} pts'
    else:
      verdict = (f'equivalent within ±{100 * margin:g} pts' if equivalent
                 else 'unresolved')
    row['verdict'] = verdict


def detectable_difference(units: int, discordance: float, alpha: float,
                          power: float) -> float:
  """Smallest paired difference McNemar's test detects, before the data.

  For `units` paired predictions of which a fraction `discordance` differ,
  two-sided level alpha, the given power (normal approximation, Connor
  1987): N·δ² = (z_{1−α/2}·sqrt(ψ) + z_power·sqrt(ψ − δ²))², ψ the
  discordance. Returns δ as a fraction (0.01 = one point).
  """
  if not (units > 0 and 0 < discordance <= 1 and 0 < alpha < 1
          and 0 < power < 1):
    raise ValueError(f'detectable_difference: units={units}, discordance='
                     f'{discordance}, alpha={alpha}, power={power} out of '
                     'range.')
  z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)

  def gap(delta):
    return units * delta**2 - (z_a * np.sqrt(discordance) + z_b * np.sqrt(
        max(discordance - delta**2, 0.))) ** 2

  if gap(discordance) < 0:  # Even δ = ψ (all discordance one way) is not.
    return float('nan')
  return float(optimize.brentq(gap, 1e-12, discordance))
