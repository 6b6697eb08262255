"""The report's Claims section: the blog's claims against synthetic runs."""

import pathlib
import tempfile

from absl.testing import absltest
import pandas as pd

from jax_attnshare.report import build
from jax_attnshare.report import claims

from report_test import write_run


def _verdicts(path: pathlib.Path) -> dict[tuple[str, str], str]:
  frame = pd.read_csv(path / 'claims.csv')
  return {(r.runs, r.claim): r.verdict for r in frame.itertuples()}


class ClaimsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = pathlib.Path(tempfile.mkdtemp())

  def _runs(self, name: str, k_entropy: float, seed: int) -> pathlib.Path:
    folder = self.root / name
    write_run(folder, 'none', sample_seed=seed, maps=False)
    write_run(folder, 'k', entropy=k_entropy, sample_seed=seed + 1,
              sharing='key@all', maps=False)
    write_run(folder, 'kqv', sample_seed=seed + 2, sharing='key,query,'
              'value@all', maps=False)
    return folder

  def test_a_planted_effect_is_reported_and_its_absence_is_not(self):
    planted = self._runs('planted', k_entropy=3.0, seed=1)
    null = self._runs('null', k_entropy=2.7, seed=1)
    out = self.root / 'report'
    build.run_analysis(planted, out, compare_runs=[null])
    verdicts = _verdicts(out)
    claim = 'Sharing K raises entropy'
    self.assertEqual(verdicts[(str(planted), claim)], claims.SUPPORTED)
    self.assertEqual(verdicts[(str(null), claim)], claims.NOT_SUPPORTED)
    # Conditions that were not run are said to be so.
    self.assertEqual(verdicts[(str(planted), 'Sharing QV lowers entropy')],
                     claims.NOT_RUN)
    # No accuracy difference was planted: "the same" stands.
    self.assertEqual(
        verdicts[(str(planted), 'Accuracy is the same in every condition')],
        claims.SUPPORTED)
    report = (out / 'report.md').read_text()
    self.assertIn('## Claims of the blog', report)
    # Side by side: one column pair per folder of runs.
    self.assertIn(f'{planted}: verdict | {null}: effect', report)
    self.assertIn('2.80 vs 2.69; t = -5.374, d = 2.031', report)

  def test_an_effect_against_the_blogs_direction_is_named(self):
    lowered = self._runs('lowered', k_entropy=2.4, seed=4)
    out = self.root / 'report'
    build.run_analysis(lowered, out)
    self.assertEqual(
        _verdicts(out)[(str(lowered), 'Sharing K raises entropy')],
        claims.CONTRADICTED)

  def test_evaluate_reads_the_effect_and_its_interval(self):
    table = pd.DataFrame([dict(
        metric='entropy', layer=pd.NA, condition='k', n=5, mean=2.8, sd=0.1,
        diff=0.11, d=2.0, d_ci_low=0.5, d_ci_high=3.5, p_holm=0.004)])
    omni = pd.DataFrame(columns=['metric', 'layer', 'n_conditions', 'test',
                                 'p'])
    row = claims.evaluate(table, omni, 'none', 0.05).iloc[0]
    self.assertEqual((row['diff'], row['d'], row['d_ci_low'],
                      row['d_ci_high'], row['p'], row['verdict']),
                     (0.11, 2.0, 0.5, 3.5, 0.004, claims.SUPPORTED))


if __name__ == '__main__':
  absltest.main()
