"""Tests for jax_attnshare.report.stats: hand formulas, scipy, statsmodels."""

import math

from absl.testing import absltest
import numpy as np
from scipy import stats
from statsmodels.stats import multitest
from statsmodels.stats import oneway

from jax_attnshare.report import stats as report_stats

X = np.array([1., 2., 3., 4.])
Y = np.array([2., 4., 6., 8.])


class DescribeTest(absltest.TestCase):

  def test_matches_scipy_t_interval(self):
    x = np.random.default_rng(0).normal(3, 2, 7)
    got = report_stats.describe(x)
    lo, hi = stats.t.interval(0.95, 6, loc=x.mean(), scale=stats.sem(x))
    self.assertEqual(got['n'], 7)
    self.assertAlmostEqual(got['mean'], x.mean())
    self.assertAlmostEqual(got['sd'], np.std(x, ddof=1))
    self.assertAlmostEqual(got['ci_low'], lo)
    self.assertAlmostEqual(got['ci_high'], hi)

  def test_ci_covers_the_truth_about_95_percent(self):
    rng = np.random.default_rng(1)
    cover = [(d := report_stats.describe(rng.normal(5, 1, 5)))['ci_low'] < 5
             < d['ci_high'] for _ in range(400)]
    self.assertBetween(np.mean(cover), 0.92, 0.98)

  def test_one_value_has_no_sd(self):
    self.assertTrue(math.isnan(report_stats.describe(np.array([1.]))['sd']))


class EffectSizeTest(absltest.TestCase):

  def test_cohens_d_by_hand(self):
    # Pooled variance (3 * 5/3 + 3 * 20/3) / 6 = 25/6; mean difference -2.5.
    self.assertAlmostEqual(report_stats.cohens_d(X, Y), -2.5 / math.sqrt(25 / 6))

  def test_hedges_j_exact_and_close_to_approximation(self):
    self.assertAlmostEqual(report_stats.hedges_j(6),
                           math.gamma(3) / (math.sqrt(3) * math.gamma(2.5)))
    self.assertAlmostEqual(report_stats.hedges_j(6), 1 - 3 / (4 * 6 - 1),
                           places=2)

  def test_compare_matches_welch_and_hand_formulas(self):
    got = report_stats.compare(X, Y, alpha=0.05)
    welch = stats.ttest_ind(X, Y, equal_var=False)
    self.assertAlmostEqual(got['t'], welch.statistic)
    self.assertAlmostEqual(got['p'], welch.pvalue)
    d = -2.5 / math.sqrt(25 / 6)
    se = math.sqrt(8 / 16 + d**2 / 16)
    self.assertAlmostEqual(got['d'], d)
    self.assertAlmostEqual(got['d_ci_low'], d - 1.959964 * se, places=5)
    self.assertAlmostEqual(got['d_ci_high'], d + 1.959964 * se, places=5)
    j = report_stats.hedges_j(6)
    self.assertAlmostEqual(got['g'], j * d)
    self.assertAlmostEqual(got['g_ci_high'], j * got['d_ci_high'])
    self.assertAlmostEqual(got['diff'], -2.5)

  def test_constant_groups_give_nan_not_errors(self):
    got = report_stats.compare(np.ones(4), np.ones(4), alpha=0.05)
    self.assertTrue(math.isnan(got['d']) and math.isnan(got['p']))


class HolmAndPowerTest(absltest.TestCase):

  def test_holm_by_hand(self):
    np.testing.assert_allclose(report_stats.holm([0.01, 0.04, 0.03]),
                               [0.03, 0.06, 0.06])

  def test_holm_skips_nan(self):
    got = report_stats.holm([0.01, np.nan, 0.04])
    np.testing.assert_allclose(got, [0.02, np.nan, 0.04])

  def test_power_textbook_values(self):
    # d = 1, 20 per group: 0.869 (G*Power); d = 0.5 needs 64 per group.
    self.assertAlmostEqual(report_stats.achieved_power(1.0, 20, 20, 0.05), 0.869,
                           places=3)
    self.assertEqual(report_stats.seeds_for_power(0.5, 0.05), 64)

  def test_power_edge_cases(self):
    self.assertEqual(report_stats.seeds_for_power(0.0, 0.05), math.inf)
    self.assertEqual(report_stats.seeds_for_power(-20.0, 0.05), 2)
    self.assertAlmostEqual(report_stats.achieved_power(14.0, 2, 2, 0.05), 1.0,
                           places=3)


class OmnibusTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.rng = np.random.default_rng(0)

  def test_classic_anova_when_assumptions_hold(self):
    groups = {k: self.rng.normal(m, 1, 15) for k, m in (('a', 0), ('b', 1))}
    got = report_stats.omnibus(groups, 0.05)
    self.assertEqual(got['test'], 'ANOVA F')
    ref = stats.f_oneway(*groups.values())
    self.assertAlmostEqual(got['statistic'], ref.statistic)
    self.assertAlmostEqual(got['p'], ref.pvalue)
    self.assertIn('assumptions not rejected', got['reason'])

  def test_welch_when_variances_differ(self):
    groups = {'a': self.rng.normal(0, 0.1, 30), 'b': self.rng.normal(0, 10, 30)}
    got = report_stats.omnibus(groups, 0.05)
    self.assertEqual(got['test'], "Welch's ANOVA F")
    ref = oneway.anova_oneway(list(groups.values()), use_var='unequal')
    self.assertAlmostEqual(got['p'], ref.pvalue)
    self.assertIn('Levene', got['reason'])

  def test_kruskal_when_not_normal(self):
    groups = {'a': self.rng.lognormal(0, 2, 30), 'b': self.rng.normal(0, 1, 30)}
    got = report_stats.omnibus(groups, 0.05)
    self.assertEqual(got['test'], 'Kruskal-Wallis H')
    self.assertAlmostEqual(got['p'], stats.kruskal(*groups.values()).pvalue)
    self.assertIn('Shapiro-Wilk rejects normality in a', got['reason'])

  def test_degenerate_inputs(self):
    self.assertEqual(report_stats.omnibus({'a': np.ones(3), 'b': np.ones(3)},
                                          0.05)['reason'], 'all values identical')
    self.assertEqual(report_stats.omnibus({'a': X}, 0.05)['test'], 'none')


def _summary(condition, entropy_S):
  per_seed = [dict(seed=i, diverged=False, test_accuracy=0.8, test_loss=None,
                   attention=dict(entropy=[e, e + 0.2], js_adjacent=[0.1],
                                  js_layers=[[0, 0.1], [0.1, 0]]))
              for i, e in enumerate(entropy_S)]
  history = [dict(step=10, test_accuracy=[0.5] * len(entropy_S),
                  attention=dict(entropy=[[1., None]] * len(entropy_S)))]
  return dict(condition=condition, completed_steps=20,
              seeds=list(range(len(entropy_S))), per_seed=per_seed,
              history=history)


class TableTest(absltest.TestCase):

  def test_tidy_rows(self):
    tidy = report_stats.tidy_table({'none': _summary('none', [1., 2.])})
    self.assertEqual(list(tidy.columns), list(report_stats.TIDY_COLUMNS))
    final = tidy[tidy['source'] == 'final']
    ent = final[final['metric'] == 'entropy']
    self.assertEqual(ent['layer'].isna().sum(), 2)
    np.testing.assert_allclose(ent.loc[ent['layer'].isna(), 'value'],
                               [1.1, 2.1])
    self.assertNotIn('js_layers', set(tidy['metric']))
    self.assertTrue(final.loc[final['metric'] == 'test_loss',
                              'value'].isna().all())
    hist = tidy[(tidy['source'] == 'history') & (tidy['metric'] == 'entropy')]
    self.assertTrue((hist['step'] == 10).all())
    self.assertTrue(hist.loc[hist['layer'].isna(), 'value'].isna().all())
    self.assertEqual(set(final['step']), {20})

  def test_analyze_holm_per_metric_and_baseline_first(self):
    rng = np.random.default_rng(0)
    tidy = report_stats.tidy_table({
        c: _summary(c, rng.normal(m, 0.1, 5))
        for c, m in (('none', 1), ('a', 1), ('b', 2))})
    final = tidy[tidy['source'] == 'final'].dropna(subset='value')
    table, omni = report_stats.analyze(final, ['none', 'a', 'b'], 'none', 0.05)
    ent = table[(table['metric'] == 'entropy') & table['layer'].isna()]
    self.assertEqual(list(ent['condition']), ['none', 'a', 'b'])
    self.assertTrue(math.isnan(ent.iloc[0]['p']))
    ref = multitest.multipletests(ent['p'].iloc[1:], method='holm')[1]
    np.testing.assert_allclose(ent['p_holm'].iloc[1:], ref)
    self.assertLess(ent.iloc[2]['p_holm'], 0.001)
    self.assertEqual(set(omni['metric']), {'entropy', 'js_adjacent',
                                            'test_accuracy'})


if __name__ == '__main__':
  absltest.main()
