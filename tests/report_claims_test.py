"""The claims' family: verdicts on planted data, the blog, and planning."""

import math
import pathlib
import tempfile

from absl.testing import absltest
import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats import power as sm_power

from jax_attnshare import attn_stats
from jax_attnshare.report import build
from jax_attnshare.report import claims
from jax_attnshare.report import planning
from jax_attnshare.report import stats as report_stats

from report_test import write_run

ALL = ('none', 'k', 'q', 'v', 'kv', 'kq', 'qv', 'kqv')
EXP1 = ('none', 'kv', 'kq', 'qv', 'kqv')
ENTROPY = claims.PRIMARY_METRICS['entropy']
ACCURACY = claims.PRIMARY_METRICS['accuracy']
HEAD = claims.PRIMARY_METRICS['head correlation']
# Mean and SD over seeds of every declared metric in a condition without
# planted effects.
_BASE = {ENTROPY: (0.8, 0.01), claims.PRIMARY_METRICS['sparsity']: (0.2, 0.01),
         HEAD: (0.1, 0.01), ACCURACY: (0.8, 0.012)}


def _final(conditions=ALL, n=15, shift=None, sd=None, seed=0,
           seed_sd=0.0) -> pd.DataFrame:
  """Tidy final rows: per condition and declared metric, n seeds drawn
  from N(mean + shift[(condition, metric)], sd[metric]), plus an offset per
  seed and metric shared by every condition (sd seed_sd)."""
  rng = np.random.default_rng(seed)
  shift, sd = shift or {}, sd or {}
  offsets = {m: rng.normal(0, seed_sd, n) for m in _BASE}
  rows = []
  for c in conditions:
    for metric, (mean, base_sd) in _BASE.items():
      values = (mean + shift.get((c, metric), 0.0) + offsets[metric]
                + rng.normal(0, sd.get(metric, base_sd), n))
      rows += [dict(condition=c, seed=i, step=100, metric=metric, layer=pd.NA,
                    value=v, source='final', diverged=False)
               for i, v in enumerate(values)]
  frame = pd.DataFrame(rows)
  frame['layer'] = frame['layer'].astype('Int64')
  return frame


def _evaluate(final, conditions=None, design='paired', **kwargs):
  conditions = sorted(set(final['condition'])) if conditions is None else (
      conditions)
  frame = claims.evaluate(final, conditions, design, 0.05, **kwargs)
  return frame.set_index('key')


class FamilyTest(absltest.TestCase):

  def test_declared_family(self):
    keys = [c.key for c in claims.CLAIMS]
    self.assertLen(set(keys), len(keys))
    self.assertEqual(claims.FAMILY_SIZE, 25)
    # The missing claims of issue 18, defect 6, are in it.
    for key in ('kq_entropy', 'kqv_entropy', 'q_entropy', 'q_sparsity',
                'k_head', 'q_head', 'v_head', 'head_needs_several'):
      self.assertIn(key, keys)
    # kqv's runs serve both experiments: one accuracy claim, not two.
    kqv = [c for c in claims.CLAIMS if c.key.startswith('accuracy_kqv')]
    self.assertLen(kqv, 1)
    self.assertEqual(kqv[0].experiments, (1, 2))
    for claim in claims.CLAIMS:
      self.assertAlmostEqual(sum(w for _, w in claim.weights), 0.0)

  def test_declared_metrics_are_length_invariant_and_recorded(self):
    self.assertEqual({c.metric for c in claims.CLAIMS},
                     {'entropy_norm', 'sparsity_rel_0.1', 'head_correlation',
                      'test_accuracy'})
    # Training records the declared sparsity: weight < 0.1 / n.
    self.assertIn(('rel_0.1', 'relative', 0.1),
                  attn_stats.SPARSITY_THRESHOLDS)

  def test_each_experiments_accuracy_quote_is_its_own(self):
    (one, _, text1), (two, _, text2) = claims.EVERY_CONDITION
    self.assertEqual((one, two), (1, 2))
    self.assertIn('p = 0.7952', text1)
    self.assertNotIn('0.9016', text1)
    self.assertIn('F = 0.262, p = 0.9016', text2)

  def test_blog_d_on_this_reports_scale(self):
    k = claims.BlogEffect(t=5.374)
    self.assertAlmostEqual(k.d, 5.374 * math.sqrt(2 / 15))
    # The blog's own d is t sqrt(2/14): 2.031 for K, 2.833 for KQV.
    self.assertAlmostEqual(5.374 * math.sqrt(2 / 14), 2.031, delta=1e-3)
    self.assertAlmostEqual(7.494 * math.sqrt(2 / 14), 2.833, delta=1e-3)
    v = claims.BlogEffect(p=0.0315)
    self.assertAlmostEqual(v.d, stats.t.isf(0.0315 / 2, 28)
                           * math.sqrt(2 / 15))
    # The post's text gives V's t = 2.268: the p-derived d agrees.
    self.assertAlmostEqual(v.d, 2.268 * math.sqrt(2 / 15), places=2)
    self.assertAlmostEqual(v.d, 0.83, places=2)
    bound = claims.BlogEffect(p_below=0.0001)
    self.assertTrue(math.isnan(bound.d))
    self.assertAlmostEqual(bound.d_min, claims.BlogEffect(p=0.0001).d)
    self.assertEqual(claims.BlogEffect().d_min, 0.0)


class VerdictTest(absltest.TestCase):

  def test_a_planted_effect_is_supported_and_replicates_the_blog(self):
    # d = 3 (0.03 over a per-condition SD of 0.01).
    got = _evaluate(_final(shift={('k', ENTROPY): 0.03}))
    row = got.loc['k_entropy']
    self.assertEqual(row['verdict'], claims.SUPPORTED)
    self.assertEqual(row['vs_blog'], claims.REPLICATED)
    self.assertLess(row['d_ci_low'], 3.0)
    self.assertLess(3.0, row['d_ci_high'])
    # Nothing planted in V: not shown, and V's blog d fits the interval.
    self.assertEqual(got.loc['v_entropy', 'verdict'], claims.NOT_SHOWN)
    self.assertEqual(got.loc['v_entropy', 'vs_blog'], claims.INCONCLUSIVE)

  def test_an_opposite_effect_is_named_and_inconsistent(self):
    got = _evaluate(_final(shift={('k', ENTROPY): -0.03}))
    self.assertEqual(got.loc['k_entropy', 'verdict'], claims.OPPOSITE)
    self.assertEqual(got.loc['k_entropy', 'vs_blog'], claims.INCONSISTENT)

  def test_an_effect_far_smaller_than_the_blogs_is_inconsistent(self):
    # d = 0.3 over 80 seeds: the interval ends below the blog's 1.96.
    got = _evaluate(_final(n=80, shift={('k', ENTROPY): 0.003}))
    row = got.loc['k_entropy']
    self.assertLess(row['d_ci_high'], claims.BlogEffect(t=5.374).d)
    self.assertEqual(row['vs_blog'], claims.INCONSISTENT)

  def test_accuracy_equivalence_within_and_outside_the_margin(self):
    tight = {ACCURACY: 0.002}
    got = _evaluate(_final(sd=tight, shift={('q', ACCURACY): 0.003,
                                            ('k', ACCURACY): -0.03}))
    self.assertEqual(got.loc['accuracy_q', 'verdict'], claims.EQUIVALENT)
    self.assertEqual(got.loc['accuracy_q', 'vs_blog'], claims.REPLICATED)
    self.assertEqual(got.loc['accuracy_k', 'verdict'], claims.DIFFERS)
    self.assertEqual(got.loc['accuracy_k', 'vs_blog'], claims.INCONSISTENT)
    row = got.loc['accuracy_q']
    self.assertLess(-0.01, row['ci_low'])
    self.assertLess(row['ci_high'], 0.01)
    # The blog regime's seed SD, 1 point lower, 5 seeds: no verdict.
    got = _evaluate(_final(n=5, shift={('v', ACCURACY): -0.01}))
    self.assertEqual(got.loc['accuracy_v', 'verdict'], claims.INCONCLUSIVE)
    every = claims.every_condition(got.reset_index())
    self.assertEqual([e['verdict'] for e in every], [claims.INCONCLUSIVE] * 2)

  def test_the_margin_is_a_parameter(self):
    final = _final(sd={ACCURACY: 0.002}, shift={('k', ACCURACY): -0.03})
    wide = _evaluate(final, margins=claims.Margins(accuracy=0.05))
    self.assertEqual(wide.loc['accuracy_k', 'verdict'], claims.EQUIVALENT)
    self.assertEqual(wide.loc['accuracy_k', 'margin'], 0.05)

  def test_standardised_equivalence(self):
    got = _evaluate(_final(n=60))
    self.assertEqual(got.loc['q_entropy', 'verdict'], claims.EQUIVALENT)
    got = _evaluate(_final(n=60, shift={('q', ENTROPY): 0.04}))
    self.assertEqual(got.loc['q_entropy', 'verdict'], claims.DIFFERS)

  def test_one_seed_supports_nothing(self):
    got = _evaluate(_final(n=1, shift={('k', ENTROPY): 0.05}))
    self.assertEqual(set(got['verdict']), {claims.TOO_FEW})
    self.assertTrue(got['p_family'].isna().all())
    every = claims.every_condition(got.reset_index())
    self.assertEqual([e['verdict'] for e in every], [claims.NOT_RUN] * 2)

  def test_a_dead_condition_supports_nothing(self):
    final = _final(shift={('k', ENTROPY): 0.05})
    final = final[final['condition'] != 'k']  # all its replicas diverged
    got = _evaluate(final, conditions=ALL)
    for key in ('k_entropy', 'k_sparsity', 'k_head', 'accuracy_k',
                'head_needs_several'):
      self.assertEqual(got.loc[key, 'verdict'], claims.TOO_FEW, key)
      self.assertIn('no live', got.loc[key, 'note'])
    every = claims.every_condition(got.reset_index())
    self.assertEqual(every[1]['verdict'], claims.INCONCLUSIVE)
    self.assertEqual(every[1]['untested'], ['k'])

  def test_absent_conditions_are_not_run(self):
    got = _evaluate(_final(conditions=EXP1))
    self.assertEqual(got.loc['k_entropy', 'verdict'], claims.NOT_RUN)
    self.assertEqual(got.loc['k_entropy', 'note'], 'no run of k')

  def test_runs_without_a_declared_metric_do_not_test_its_claims(self):
    final = _final()
    got = _evaluate(final[final['metric'] != ENTROPY])
    self.assertEqual(got.loc['k_entropy', 'verdict'], claims.NOT_RUN)
    self.assertEqual(got.loc['k_entropy', 'note'],
                     'these runs record no entropy_norm')
    self.assertNotEqual(got.loc['k_sparsity', 'verdict'], claims.NOT_RUN)

  def test_extra_runs_change_no_verdict(self):
    final = _final(shift={('k', ENTROPY): 0.03, ('kq', HEAD): 0.02})
    extra = _final(conditions=('albert', 'x'), seed=9,
                   shift={('x', ENTROPY): 1.0})
    pd.testing.assert_frame_equal(
        _evaluate(final), _evaluate(pd.concat([final, extra])))

  def test_a_partial_folder_gives_the_same_verdicts_on_what_it_tests(self):
    final = _final(shift={('k', ENTROPY): 0.02, ('kq', HEAD): 0.03,
                          ('kv', ENTROPY): 0.017})
    full = _evaluate(final)
    part = _evaluate(final[final['condition'].isin(EXP1)])
    tested = part['p'].notna()
    self.assertTrue(tested.any() and (~tested).any())
    decided = part['verdict'].isin([claims.SUPPORTED, claims.OPPOSITE,
                                    claims.EQUIVALENT])
    self.assertTrue(decided.any())
    pd.testing.assert_frame_equal(part[tested], full[tested],
                                  check_dtype=False)

  def test_the_correction_runs_over_the_whole_declared_family(self):
    final = _final(conditions=('none', 'k'), shift={('k', ENTROPY): 0.03})
    got = _evaluate(final)
    tested = got[got['p'].notna()]
    self.assertEqual(set(tested.index), {'k_entropy', 'k_sparsity', 'k_head',
                                         'accuracy_k'})
    # Four claims tested, 25 in the family: each p is multiplied by 25.
    np.testing.assert_allclose(tested['p_family'],
                               np.minimum(1.0, 25 * tested['p']))

  def test_intervals_are_bonferroni_adjusted(self):
    final = _final(shift={('k', ENTROPY): 0.03})
    got = _evaluate(final)
    contrast = report_stats.contrast(
        report_stats.wide(final[final['metric'] == ENTROPY]),
        {'k': 1, 'none': -1}, 'paired')
    lo, hi = contrast.d_interval(1 - 0.05 / 25)
    self.assertAlmostEqual(got.loc['k_entropy', 'd_ci_low'], lo)
    self.assertAlmostEqual(got.loc['k_entropy', 'd_ci_high'], hi)
    self.assertAlmostEqual(got.loc['accuracy_k', 'ci_level'], 1 - 0.1 / 25)

  def test_paired_seeds_are_blocks(self):
    # A seed offset shared by all conditions (SD 0.05) hides a 0.01 effect
    # from the independent analysis, not from the paired one.
    final = _final(seed_sd=0.05, sd={ENTROPY: 0.002},
                   shift={('k', ENTROPY): 0.01})
    paired = _evaluate(final, design='paired')
    independent = _evaluate(final, design='independent')
    self.assertEqual(paired.loc['k_entropy', 'verdict'], claims.SUPPORTED)
    self.assertGreater(paired.loc['k_entropy', 'rho'], 0.9)
    self.assertEqual(independent.loc['k_entropy', 'verdict'],
                     claims.NOT_SHOWN)

  def test_the_head_interaction_claim(self):
    # KQV raises head correlation by 0.05, K, Q, V alone do nothing.
    got = _evaluate(_final(shift={('kqv', HEAD): 0.05}))
    self.assertEqual(got.loc['kqv_head', 'verdict'], claims.SUPPORTED)
    self.assertEqual(got.loc['head_needs_several', 'verdict'],
                     claims.SUPPORTED)
    self.assertEqual(got.loc['head_needs_several', 'contrast'],
                     'kqv - k - q - v + 2 none')
    # The same rise with each of K, Q, V alone is additive: no interaction.
    additive = {(c, HEAD): 0.05 / 3 for c in ('k', 'q', 'v')}
    got = _evaluate(_final(shift={('kqv', HEAD): 0.05, **additive}))
    self.assertEqual(got.loc['head_needs_several', 'verdict'],
                     claims.NOT_SHOWN)


class PlanningTest(absltest.TestCase):

  def test_power_textbook_values(self):
    # d = 1, 20 per group, two-sided 0.05: 0.869 (G*Power).
    self.assertAlmostEqual(planning.power(1.0, 20, 2, 2, 'independent', 0.05),
                           0.869, places=3)
    # The blog's design (15 per group, 0.05) detects d = 1.06 with 80%.
    blog = planning.mde(15, 2.0, 2, 'independent', 0.05)
    self.assertAlmostEqual(blog, sm_power.TTestIndPower().solve_power(
        nobs1=15, alpha=0.05, power=0.8), places=4)
    self.assertAlmostEqual(blog, 1.06, places=2)

  def test_the_v_claims_cannot_be_confirmed_with_15_seeds(self):
    table = planning.mde_table([5, 15], 'paired', 0.05,
                               claims.Margins()).set_index('key')
    for key in ('v_entropy', 'v_sparsity'):
      row = table.loc[key]
      self.assertAlmostEqual(row['blog_d'], 0.8, delta=0.05)
      self.assertGreater(row['mde_15'], 1.5)
      self.assertLess(row['power_15'], 0.2)
    # The K claims can; nothing can at 5 seeds.
    self.assertGreater(table.loc['k_entropy', 'power_15'], 0.8)
    self.assertLess(table.loc['k_entropy', 'power_5'], 0.2)
    # Two-condition contrast, paired, alpha 0.05/25, df 14.
    self.assertAlmostEqual(table.loc['k_entropy', 'mde_15'],
                           planning.mde(15, 2.0, 2, 'paired', 0.002))
    # 1 point of accuracy cannot be proved equivalent with 15 seeds at the
    # blog regime's seed SD.
    self.assertGreater(table.loc['accuracy_k', 'mde_15'], 0.01)
    self.assertLess(table.loc['accuracy_k', 'power_15'], 0.1)

  def test_equivalence_power_matches_simulation(self):
    rng = np.random.default_rng(0)
    n, alpha = 10, 0.05
    # Paired, two conditions, truth 0: diffs ~ N(0, 2 sigma^2), sigma = 1.
    diffs = rng.normal(0, math.sqrt(2), (4000, n))
    mean, sd = diffs.mean(1), diffs.std(1, ddof=1)
    t = mean / (sd / math.sqrt(n))
    nc = 1.5 / math.sqrt(2 / n)
    p = np.maximum(stats.nct.sf(t, n - 1, -nc), stats.nct.cdf(t, n - 1, nc))
    self.assertAlmostEqual(
        np.mean(p < alpha),
        planning.equivalence_power(1.5, n, 2, 2, 'paired', alpha), delta=0.03)
    se = sd / math.sqrt(n)
    crit = stats.t.ppf(1 - alpha, n - 1)
    proved = np.abs(mean) + crit * se < 1.2
    self.assertAlmostEqual(
        np.mean(proved),
        planning.raw_equivalence_power(1.2, n, 2, 2, 'paired', alpha),
        delta=0.03)


class ReportClaimsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.root = pathlib.Path(tmp.name)

  def _runs(self, name: str, k_entropy: float, seed: int,
            regime: str = 'clean') -> pathlib.Path:
    folder = self.root / name
    write_run(folder, 'none', sample_seed=seed, maps=False, regime=regime)
    write_run(folder, 'k', entropy=k_entropy, sample_seed=seed + 1,
              sharing='key@all', maps=False, regime=regime)
    write_run(folder, 'kqv', sample_seed=seed + 2, sharing='key,query,'
              'value@all', maps=False, regime=regime)
    return folder

  def test_regimes_side_by_side(self):
    planted = self._runs('planted', k_entropy=3.0, seed=1, regime='blog')
    null = self._runs('null', k_entropy=2.7, seed=1, regime='clean')
    out = self.root / 'report'
    with self.assertLogs(level='WARNING') as logs:
      build.run_analysis(planted, out, compare_runs=[null])
    frame = pd.read_csv(out / 'claims.csv')
    verdicts = {(r.runs, r.key): r.verdict for r in frame.itertuples()}
    self.assertEqual(verdicts[('blog', 'k_entropy')], claims.SUPPORTED)
    self.assertEqual(verdicts[('clean', 'k_entropy')], claims.NOT_SHOWN)
    self.assertEqual(verdicts[('blog', 'qv_entropy')], claims.NOT_RUN)
    # 5 seeds at 1 SD of accuracy: "the same" is not established.
    self.assertEqual(verdicts[('blog', 'accuracy_k')], claims.INCONCLUSIVE)
    report = (out / 'report.md').read_text()
    self.assertIn('## Claims of the blog (confirmatory)', report)
    self.assertIn('blog: verdict | blog: vs the blog | clean: effect', report)
    self.assertIn('2.80 vs 2.69 nats; t = -5.374, d = 2.031', report)
    self.assertNotIn('**supported** |' + ' clean', report.split(
        'Sharing K leaves accuracy unchanged')[1].split('\n')[0])
    # The sanity gate, for the blog regime only.
    self.assertIn('**Sanity gate (blog, blog regime):** `none` reaches test '
                  'accuracy 0.', report)
    self.assertNotIn('Sanity gate (clean', report)
    (gate,) = [m for m in logs.output if 'Sanity gate' in m]
    self.assertIn("from the blog's 0.82", gate)
    self.assertIn("## What these seeds can detect", report)
    self.assertTrue((out / 'forest.png').exists())
    self.assertTrue((out / 'mde.csv').exists())


if __name__ == '__main__':
  absltest.main()
