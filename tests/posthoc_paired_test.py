"""Paired comparison with the unshared model: planted data, hand-computed."""

import math

import numpy as np
import pytest
from scipy import stats

from jax_attnshare.posthoc import paired


def _single(correct):
  correct = np.asarray(correct, np.float64)
  return paired.Units(correct, np.ones_like(correct))


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
  # 10 reviews only the base gets right, 2 only the variant, 50 both.
  base = [1] * 10 + [0] * 2 + [1] * 50
  row = [0] * 10 + [1] * 2 + [1] * 50
  p, b, c = paired.mcnemar(base, row)
  assert (b, c) == (10, 2)
  # Two-sided: 2 · P(X <= 2), X ~ Binomial(12, 1/2).
  assert p == pytest.approx(2 * (1 + 12 + 66) / 2**12, rel=1e-12)
  assert paired.mcnemar(base, base) == (1.0, 0, 0)


def test_cluster_se_of_a_ratio_by_hand():
  # Three sequences with 3/4, 1/2 and 0/2 correct next tokens: R = 4/8.
  # Residuals y - R·n = 1, 0, -1; SE² = 3/2 · 2 / 8².
  assert paired.ratio_se([3, 1, 0], [4, 2, 2]) == pytest.approx(
      math.sqrt(3) / 8, rel=1e-12)
  # One prediction per unit: the binomial SE with N - 1.
  correct = np.array([1] * 7 + [0] * 3)
  assert paired.ratio_se(correct, np.ones(10)) == pytest.approx(
      math.sqrt(0.7 * 0.3 / 9), rel=1e-12)


def test_correlated_tokens_widen_the_token_accuracy_se():
  # 200 sequences of 20 tokens, each all right or all wrong (correlation 1
  # within a sequence): the cluster SE is the SE of 200 units, not 4,000.
  correct_N = np.where(np.arange(200) % 4 == 0, 0., 20.)
  count_N = np.full(200, 20.)
  se = paired.ratio_se(correct_N, count_N)
  assert se == pytest.approx(math.sqrt(0.75 * 0.25 / 199), rel=1e-12)
  assert se > 4 * math.sqrt(0.75 * 0.25 / 4000)


def test_paired_bootstrap_interval_is_the_binomial_quantiles():
  # The variant is wrong on k of N units the base gets right: a resample
  # draws Binomial(N, k/N) of them, so Δ* = -Binomial(N, k/N) / N.
  n, k = 100, 10
  base = _single(np.ones(n))
  row = _single(np.r_[np.zeros(k), np.ones(n - k)])
  counts = paired.resample_counts(n, 20_000, seed=0)
  out = paired.compare(base, row, counts, margin=0.01)
  assert out['diff'] == -k / n
  binomial = stats.binom(n, k / n)
  assert out['diff_lo'] == pytest.approx(-binomial.ppf(0.975) / n,
                                         abs=1 / n + 1e-9)
  assert out['diff_hi'] == pytest.approx(-binomial.ppf(0.025) / n,
                                         abs=1 / n + 1e-9)
  assert out['p_test'] == 'mcnemar'
  assert out['p'] == pytest.approx(2 / 2**k)
  assert out['discordance'] == k / n


def test_planted_drop_is_worse_and_an_identical_row_equivalent():
  # 1,000 reviews: the base is right on 800; the variant loses 30 of them
  # and gains 10 others, a paired drop of exactly 2 points.
  n = 1000
  base_correct = np.r_[np.ones(800), np.zeros(200)]
  row_correct = base_correct.copy()
  row_correct[:30] = 0
  row_correct[800:810] = 1
  base, row = _single(base_correct), _single(row_correct)
  counts = paired.resample_counts(n, 2000, seed=0)
  rows = [paired.compare(base, row, counts, 0.01),
          paired.compare(base, base, counts, 0.01)]
  hand_p = 2 * sum(math.comb(40, i) for i in range(11)) / 2**40
  assert rows[0]['diff'] == pytest.approx(-0.02, abs=1e-15)
  assert rows[0]['p'] == pytest.approx(hand_p, rel=1e-9)
  assert rows[0]['diff_lo'] < -0.02 < rows[0]['diff_hi'] < 0
  paired.verdicts(rows, alpha=0.05, margin=0.01)
  # Holm over the two rows: the smaller p doubled.
  assert rows[0]['p_holm'] == pytest.approx(2 * hand_p, rel=1e-9)
  assert rows[0]['verdict'] == 'worse'
  # Every resample of an identical row has Δ* = 0: equivalent within ±1 pt.
  assert rows[1]['p_holm'] == 1 and rows[1]['tost_p'] == 1 / 2001
  assert rows[1]['verdict'] == 'equivalent within ±1 pts'


def test_a_small_unclear_difference_is_unresolved():
  base = _single(np.r_[np.ones(50), np.zeros(50)])
  row_correct = base.correct_N.copy()
  row_correct[:3] = 0
  row_correct[50:52] = 1
  rows = [paired.compare(base, _single(row_correct),
                         paired.resample_counts(100, 2000, 0), 0.01)]
  paired.verdicts(rows, alpha=0.05, margin=0.01)
  assert rows[0]['verdict'] == 'unresolved'


def test_perplexity_ratio_and_interval_of_a_uniform_shift():
  # Every next token costs 0.1 nats more: the perplexity ratio is e^0.1 in
  # every resample, and the shift is significant.
  rng = np.random.default_rng(0)
  count_N = rng.integers(5, 20, 50).astype(np.float64)
  loss_N = count_N * rng.uniform(2, 4, 50)
  correct_N = np.floor(count_N / 3)
  base = paired.Units(correct_N, count_N, loss_N)
  row = paired.Units(correct_N, count_N, loss_N + 0.1 * count_N)
  counts = paired.resample_counts(50, 1000, seed=1)
  described = paired.describe(base, counts)
  assert described['perplexity'] == pytest.approx(
      math.exp(loss_N.sum() / count_N.sum()))
  assert (described['perplexity_lo'] < described['perplexity']
          < described['perplexity_hi'])
  out = paired.compare(base, row, counts, 0.01)
  assert out['perplexity_ratio'] == pytest.approx(math.exp(0.1))
  assert out['perplexity_ratio_lo'] == pytest.approx(math.exp(0.1))
  assert out['perplexity_ratio_hi'] == pytest.approx(math.exp(0.1))
  assert out['perplexity_p'] == 2 / 1001
  # Token accuracy unchanged: the bootstrap test, not McNemar.
  assert out['p_test'] == 'bootstrap' and out['diff'] == 0 and out['p'] == 1


def test_detectable_difference_has_the_stated_power():
  n, discordance = 2000, 0.03
  delta = paired.detectable_difference(n, discordance, 0.05, 0.8)
  z_a, z_b = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
  assert n * delta**2 == pytest.approx(
      (z_a * math.sqrt(discordance)
       + z_b * math.sqrt(discordance - delta**2)) ** 2)
  # Simulated: discordant reviews split into b (only the base right) and c
  # with (b - c) / n = delta; McNemar's test finds it ~80% of the time.
  rng = np.random.default_rng(0)
  found = 0
  for _ in range(1000):
    m = rng.binomial(n, discordance)
    b = rng.binomial(m, (discordance + delta) / (2 * discordance))
    found += paired.mcnemar(np.r_[np.ones(b), np.zeros(m - b)],
                            np.r_[np.zeros(b), np.ones(m - b)])[0] < 0.05
  assert 0.74 < found / 1000 < 0.86
  assert math.isnan(paired.detectable_difference(10, 0.03, 0.05, 0.8))
