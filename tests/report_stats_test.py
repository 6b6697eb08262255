"""Tests for jax_attnshare.report.stats: hand formulas, scipy, statsmodels."""

import math

from absl.testing import absltest
import numpy as np
import pandas as pd
from scipy import integrate
from scipy import stats
from statsmodels.formula import api as smf
from statsmodels.stats import anova
from statsmodels.stats import multitest
from statsmodels.stats import oneway
from statsmodels.stats import weightstats

from jax_attnshare.report import stats as report_stats

X = np.array([1., 2., 3., 4.])
Y = np.array([2., 4., 6., 8.])


def _wide(**columns) -> pd.DataFrame:
  return pd.DataFrame(columns)


def _nct_cdf(x: float, df: float, nc: float) -> float:
  """P(T <= x) for T = (Z + nc) / sqrt(V / df), by integration over V.

  The definition of the noncentral t, integrated with quad: independent
  of scipy.stats.nct.
  """
  def given_v(v):
    return stats.norm.cdf(x * math.sqrt(v / df) - nc) * stats.chi2.pdf(v, df)
  return integrate.quad(given_v, 0, np.inf, limit=200)[0]


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


class ContrastTest(absltest.TestCase):

  def test_two_independent_groups_are_students_t_and_cohens_d(self):
    got = report_stats.contrast(_wide(x=X, y=Y), {'x': 1, 'y': -1},
                                'independent')
    ref = stats.ttest_ind(X, Y, equal_var=True)
    self.assertAlmostEqual(got.t, ref.statistic)
    self.assertAlmostEqual(got.p, ref.pvalue)
    self.assertEqual(got.df, 6)
    # Pooled variance (3 * 5/3 + 3 * 20/3) / 6 = 25/6; difference -2.5.
    self.assertAlmostEqual(got.estimate, -2.5)
    self.assertAlmostEqual(got.d, -2.5 / math.sqrt(25 / 6))

  def test_two_paired_conditions_are_the_paired_t(self):
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 9)
    b = a + rng.normal(0.5, 0.3, 9)
    got = report_stats.contrast(_wide(a=a, b=b), {'b': 1, 'a': -1}, 'paired')
    ref = stats.ttest_rel(b, a)
    self.assertAlmostEqual(got.t, ref.statistic)
    self.assertAlmostEqual(got.p, ref.pvalue)
    # d = mean difference / (sd of differences / sqrt 2).
    diff = b - a
    self.assertAlmostEqual(got.d, diff.mean() / (diff.std(ddof=1)
                                                 / math.sqrt(2)))
    self.assertAlmostEqual(got.rho, np.corrcoef(a, b)[0, 1])

  def test_paired_uses_the_seeds_live_in_every_condition(self):
    values = _wide(a=[1., 2., np.nan, 4.], b=[2., 2.5, 9., 5.5])
    got = report_stats.contrast(values, {'b': 1, 'a': -1}, 'paired')
    self.assertEqual(got.n, 3)
    self.assertAlmostEqual(got.estimate, np.mean([1., 0.5, 1.5]))

  def test_a_general_contrast_matches_ols(self):
    rng = np.random.default_rng(2)
    values = _wide(**{c: rng.normal(m, 1, 6) for c, m in
                      (('none', 0), ('k', 1), ('q', 0.5), ('kq', 3))})
    weights = {'kq': 1, 'k': -1, 'q': -1, 'none': 1}
    got = report_stats.contrast(values, weights, 'independent')
    long = values.melt(var_name='condition')
    fit = smf.ols('value ~ C(condition) - 1', data=long).fit()
    # Parameters are named 'C(condition)[k]'.
    ref = fit.t_test(np.array([[weights[name[len('C(condition)['):-1]]
                                for name in fit.params.index]]))
    self.assertAlmostEqual(got.t, float(ref.tvalue[0][0]))
    self.assertAlmostEqual(got.p, float(ref.pvalue))
    self.assertEqual(got.df, fit.df_resid)

  def test_d_interval_is_the_exact_noncentral_t_inversion(self):
    got = report_stats.contrast(_wide(x=X, y=Y), {'x': 1, 'y': -1},
                                'independent')
    lo, hi = got.d_interval(0.95)
    # At the bounds' noncentralities, t sits at the 97.5% and 2.5% points.
    self.assertAlmostEqual(_nct_cdf(got.t, 6, lo / got.scale), 0.975,
                           places=5)
    self.assertAlmostEqual(_nct_cdf(got.t, 6, hi / got.scale), 0.025,
                           places=5)
    self.assertLess(lo, got.d)
    self.assertLess(got.d, hi)

  def test_d_interval_covers_about_95_percent(self):
    rng = np.random.default_rng(3)
    cover = []
    for _ in range(300):
      a, b = rng.normal(0, 1, 6), rng.normal(1.5, 1, 6)
      c = report_stats.contrast(_wide(a=a, b=b), {'b': 1, 'a': -1},
                                'independent')
      lo, hi = c.d_interval(0.95)
      cover.append(lo < 1.5 < hi)
    self.assertBetween(np.mean(cover), 0.92, 0.98)

  def test_raw_interval_and_tost_by_hand(self):
    a = np.array([0.80, 0.81, 0.79, 0.82, 0.80])
    b = np.array([0.805, 0.812, 0.798, 0.815, 0.806])
    got = report_stats.contrast(_wide(a=a, b=b), {'b': 1, 'a': -1}, 'paired')
    diff = b - a
    se = diff.std(ddof=1) / math.sqrt(5)
    lower = stats.t.sf((diff.mean() + 0.01) / se, 4)
    upper = stats.t.cdf((diff.mean() - 0.01) / se, 4)
    self.assertAlmostEqual(got.tost(0.01), max(lower, upper))
    # statsmodels' paired TOST gives the same p.
    self.assertAlmostEqual(got.tost(0.01),
                           weightstats.ttost_paired(b, a, -0.01, 0.01)[0])
    lo, hi = got.interval(0.90)
    half = stats.t.ppf(0.95, 4) * se
    self.assertAlmostEqual(lo, diff.mean() - half)
    self.assertAlmostEqual(hi, diff.mean() + half)
    independent = report_stats.contrast(_wide(a=a, b=b), {'b': 1, 'a': -1},
                                        'independent')
    self.assertAlmostEqual(
        independent.tost(0.01),
        weightstats.ttost_ind(b, a, -0.01, 0.01, usevar='pooled')[0])

  def test_tost_rejects_exactly_when_the_interval_is_inside_the_margin(self):
    rng = np.random.default_rng(4)
    for _ in range(20):
      a = rng.normal(0, 1, 10)
      b = a + rng.normal(rng.uniform(-0.5, 0.5), 0.4, 10)
      c = report_stats.contrast(_wide(a=a, b=b), {'b': 1, 'a': -1}, 'paired')
      lo, hi = c.d_interval(0.90)
      self.assertEqual(c.tost_d(1.0) < 0.05, -1.0 < lo and hi < 1.0)
      lo, hi = c.interval(0.90)
      self.assertEqual(c.tost(0.3) < 0.05, -0.3 < lo and hi < 0.3)

  def test_tost_d_by_the_noncentral_t_definition(self):
    c = report_stats.contrast(_wide(x=X, y=Y + 1.8), {'x': 1, 'y': -1},
                              'independent')
    nc = 1.5 / c.scale
    want = max(1 - _nct_cdf(c.t, 6, -nc), _nct_cdf(c.t, 6, nc))
    self.assertAlmostEqual(c.tost_d(1.5), want, places=6)

  def test_untestable_inputs(self):
    for values, weights, design in (
        (_wide(a=[1.], b=[2.]), {'a': 1, 'b': -1}, 'paired'),
        (_wide(a=[1., 2.], b=[2., np.nan]), {'a': 1, 'b': -1},
         'independent'),
        (_wide(a=[1., 2.], b=[2., 3.]), {'a': 1, 'b': -1}, 'paired'),
        (_wide(a=[1., 1.], b=[2., 2.]), {'a': 1, 'b': -1}, 'independent'),
        (_wide(a=[1., 2.]), {'a': 1, 'b': -1}, 'paired')):
      with self.assertRaises(report_stats.Untestable):
        report_stats.contrast(values, weights, design)

  def test_nct_sf_is_finite_where_scipy_gives_nan(self):
    self.assertTrue(math.isnan(stats.nct.cdf(-7.17, 28, 12.6)))
    self.assertAlmostEqual(report_stats.nct_sf(7.17, 28, -12.6), 0.0)
    self.assertAlmostEqual(report_stats.nct_sf(1.0, 10, 0.5),
                           1 - _nct_cdf(1.0, 10, 0.5), places=6)


class HolmTest(absltest.TestCase):

  def test_holm_by_hand(self):
    np.testing.assert_allclose(report_stats.holm([0.01, 0.04, 0.03]),
                               [0.03, 0.06, 0.06])

  def test_holm_skips_nan(self):
    got = report_stats.holm([0.01, np.nan, 0.04])
    np.testing.assert_allclose(got, [0.02, np.nan, 0.04])

  def test_holm_matches_statsmodels(self):
    p = np.random.default_rng(0).random(12)**3
    np.testing.assert_allclose(report_stats.holm(p),
                               multitest.multipletests(p, method='holm')[1])


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
    # One seed in one condition leaves a single testable condition.
    self.assertEqual(report_stats.omnibus({'a': X, 'b': X[:1]}, 0.05)['test'],
                     'none')

  def test_block_anova_matches_statsmodels(self):
    values = pd.DataFrame(
        self.rng.normal(size=(12, 4)) + np.arange(4) * 0.4
        + self.rng.normal(size=(12, 1)), columns=list('abcd'))
    got = report_stats.block_anova(values)
    long = values.rename_axis(index='seed', columns='condition').stack(
    ).rename('value').reset_index()
    ref = anova.anova_lm(smf.ols('value ~ C(condition) + C(seed)',
                                 data=long).fit(), typ=2)
    self.assertAlmostEqual(got['statistic'], ref.loc['C(condition)', 'F'])
    self.assertAlmostEqual(got['p'], ref.loc['C(condition)', 'PR(>F)'])
    self.assertEqual((got['df_num'], got['df_den']), (3, 33))

  def test_block_anova_drops_dead_conditions_before_counting(self):
    values = pd.DataFrame({'a': [1., 2., 3.], 'b': [np.nan] * 3,
                           'c': [2., 2.5, 4.]})
    got = report_stats.block_anova(values)
    self.assertEqual(got['df_num'], 1)
    self.assertEqual(report_stats.block_anova(values[['a', 'b']])['test'],
                     'none')


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

  def test_no_power_at_the_observed_effect(self):
    # Power at an observed effect restates its p: planning.py computes
    # power before the data instead.
    self.assertFalse({'power', 'n_needed'} & set(report_stats.STAT_COLUMNS))

  def test_analyze_holm_per_metric_and_baseline_first(self):
    rng = np.random.default_rng(0)
    tidy = report_stats.tidy_table({
        c: _summary(c, rng.normal(m, 0.1, 5))
        for c, m in (('none', 1), ('a', 1), ('b', 2))})
    final = tidy[tidy['source'] == 'final'].dropna(subset='value')
    for design in report_stats.DESIGNS:
      table, omni = report_stats.analyze(final, ['none', 'a', 'b'], 'none',
                                         0.05, design)
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
