"""Tests for the report command and run loading, on synthetic run folders."""

import contextlib
import io
import json
import pathlib
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np
import pandas as pd

from jax_attnshare.report import build
from jax_attnshare.report import figures
from jax_attnshare.report import markdown
from jax_attnshare.report import runs
from jax_attnshare.report import stats

NUM_LAYERS, NUM_HEADS, NUM_TOKENS = 3, 2, 10
SEEDS = (0, 1, 2, 3, 4)
PIECES = ['▁a', '▁good', '▁film', ',', '▁really', '▁fun', '▁to', '▁watch']


def write_run(root: pathlib.Path, condition: str, *, entropy: float = 2.7,
              accuracy: float = 0.8, head: float = 0.1, sparsity: float = 0.2,
              seeds=SEEDS, fingerprint: str = 'f00d', finished: bool = True,
              diverged=(), sample_seed: int = 0, sharing: str = '',
              maps: bool = True, eval_steps=(50, 100),
              dataset: str = 'synthetic',
              regime: str = 'clean') -> pathlib.Path:
  """A workdir whose per-layer metrics are drawn from known normals.

  Means: entropy (nats; entropy_norm is it / ln 10), accuracy, head
  (head_correlation), sparsity (every sparsity_*); SDs are fixed.
  """
  rng = np.random.default_rng(sample_seed)
  workdir = root / condition
  workdir.mkdir(parents=True)
  config = dict(name=condition, seed=seeds[0], num_seeds=len(seeds),
                num_train_steps=100, batch_size=8, regime=regime,
                model=dict(num_layers=NUM_LAYERS, num_heads=NUM_HEADS),
                sharing=dict(spec=sharing),
                data=dict(dataset=dataset, max_length=NUM_TOKENS,
                          seed_mode='shared'))
  (workdir / 'config.json').write_text(json.dumps({'config': config}))

  def draw(mean, sd, shape):
    return (mean + sd * rng.standard_normal(shape)).tolist()

  per_seed = []
  for seed in seeds:
    gone = seed in diverged
    ent = draw(entropy, 0.05, NUM_LAYERS)
    js = np.abs(draw(0.1, 0.02, (NUM_LAYERS, NUM_LAYERS)))
    attention = dict(
        entropy=ent, entropy_norm=(np.array(ent) / np.log(10)).tolist(),
        **{f'sparsity_{k}': draw(sparsity, 0.02, NUM_LAYERS)
           for k in ('abs_0.01', 'rel_0.1', 'rel_1')},
        head_correlation=draw(head, 0.02, NUM_LAYERS),
        head_specialization=draw(0.9, 0.02, NUM_LAYERS),
        js_adjacent=draw(0.05, 0.01, NUM_LAYERS - 1),
        entropy_per_head=draw(2.7, 0.05, (NUM_LAYERS, NUM_HEADS)),
        js_layers=((js + js.T) * (1 - np.eye(NUM_LAYERS))).tolist())
    if gone:
      attention = {k: np.full(np.shape(v), None).tolist()
                   for k, v in attention.items()}
    per_seed.append(dict(
        seed=seed, diverged=gone, diverged_at_step=50 if gone else None,
        test_accuracy=None if gone else draw(accuracy, 0.01, ()),
        test_loss=None if gone else draw(0.45, 0.02, ()),
        attention=attention))
  history = [dict(step=step, train_loss=draw(0.6, 0.02, len(seeds)),
                  test_loss=draw(0.5, 0.02, len(seeds)),
                  test_accuracy=draw(0.6 + step / 500, 0.01, len(seeds)),
                  attention=dict(entropy=draw(entropy, 0.05,
                                              (len(seeds), NUM_LAYERS))))
             for step in eval_steps]
  summary = dict(
      format=1, condition=condition, config_name='configs/x.py:tiny',
      sharing=sharing, seeds=list(seeds), seed_mode='shared',
      data_fingerprint=fingerprint, num_train_steps=100,
      completed_steps=100 if finished else 50, finished=finished,
      wall_time_s=12.5, num_layers=NUM_LAYERS, num_heads=NUM_HEADS,
      sparsity_thresholds={'abs_0.01': 'weight < 0.01',
                           'rel_0.1': 'weight < 0.1/n',
                           'rel_1': 'weight < 1/n'},
      params=dict(total=1000, attention=300, embeddings=500, shared=0),
      per_seed=per_seed, history=history)
  (workdir / 'summary.json').write_text(json.dumps(summary))
  if maps:
    probs = rng.random((len(seeds), NUM_LAYERS, NUM_HEADS, NUM_TOKENS,
                        NUM_TOKENS)).astype(np.float32)
    np.savez(workdir / 'attention_maps.npz',
             probs=probs / probs.sum(-1, keepdims=True),
             pieces=np.array(PIECES), label=1, step=100)
  return workdir


def cli_error(args) -> str:
  """build.main's stderr for arguments it must refuse; asserts exit 2."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      build.main([str(a) for a in args])
    except SystemExit as e:
      assert e.code == 2, e.code
    else:
      raise AssertionError(f'accepted: {args}')
  lines = err.getvalue().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  return lines[0]


def standard_runs(root: pathlib.Path) -> None:
  """Baseline, an identical-distribution condition and a +0.3 nat one."""
  write_run(root, 'none', sample_seed=1)
  write_run(root, 'kv', sample_seed=2, sharing='key,value@all')
  write_run(root, 'k', entropy=3.0, sample_seed=3, sharing='key@all')


class AnalyzeTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # tempfile, not create_tempdir: that needs absl flags, unparsed in pytest.
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.root = pathlib.Path(tmp.name)
    self.out = self.root / 'report'

  def test_detects_the_changed_condition_only(self):
    standard_runs(self.root / 'runs')
    included, _ = runs.select(runs.load_runs(self.root / 'runs'), 'none')
    tidy = stats.tidy_table({r.condition: r.summary for r in included})
    final = tidy[(tidy['source'] == 'final') & (tidy['metric'] == 'entropy')]
    table, _ = stats.analyze(final, ['none', 'kv', 'k'], 'none', 0.05)
    ent = table[(table['metric'] == 'entropy') & table['layer'].isna()]
    p_holm = ent.set_index('condition')['p_holm']
    self.assertLess(p_holm['k'], 0.05)
    self.assertGreater(p_holm['kv'], 0.05)

  def test_cli_writes_every_file_and_the_finding(self):
    standard_runs(self.root / 'runs')
    self.assertEqual(build.main(['--runs', str(self.root / 'runs'),
                                '--out', str(self.out)]), 0)
    expected = ['report.md', 'summary_table.csv', 'per_layer.csv',
                'anova.csv', 'tidy.csv', 'accuracy_curves.png',
                'box_metrics.png', 'box_sparsity.png', 'layers.png',
                'attention_none.png', 'attention_kv.png', 'attention_k.png',
                'js_layers.png']
    for name in expected:
      self.assertGreater((self.out / name).stat().st_size, 0, name)
    text = (self.out / 'report.md').read_text()
    self.assertIn('`k` (sharing `key@all`) raises mean attention entropy by',
                  text)
    # A non-significant omnibus test is not "the same".
    self.assertNotIn('does not differ', text)
    self.assertIn("Whether it is the same is for the accuracy claims' "
                  'equivalence tests', text)
    for name in expected[5:]:
      self.assertIn(f']({name})', text)
    summary = pd.read_csv(self.out / 'summary_table.csv')
    self.assertEqual(set(summary['condition']), {'none', 'kv', 'k'})
    self.assertIn('sparsity_rel_1', set(summary['metric']))

  def test_one_evaluation_warns_and_draws_points(self):
    for condition in ('none', 'kv'):
      write_run(self.root, condition, eval_steps=(100,))
    with self.assertLogs(level='WARNING') as logs:
      build.run_analysis(self.root, self.out)
    (warning,) = [m for m in logs.output if 'evaluated fewer' in m]
    self.assertIn('(none, kv)', warning)
    text = (self.out / 'report.md').read_text()
    self.assertIn('**Warning: fewer than two evaluations.** Every run was '
                  'evaluated fewer than twice (`none`: step 100; `kv`: step '
                  '100), so no learning curve can be drawn', text)
    self.assertIn('![Test accuracy at the only evaluation]'
                  '(accuracy_curves.png)', text)

  def test_warning_names_the_run_evaluated_once(self):
    write_run(self.root, 'none')
    write_run(self.root, 'kv', eval_steps=(100,))
    build.run_analysis(self.root, self.out)
    text = (self.out / 'report.md').read_text()
    self.assertIn('`kv` was evaluated fewer than twice (`kv`: step 100)', text)
    self.assertIn('![Test accuracy during training]', text)

  def test_two_evaluations_give_no_warning(self):
    standard_runs(self.root)
    build.run_analysis(self.root, self.out)
    text = (self.out / 'report.md').read_text()
    self.assertNotIn('fewer than two evaluations', text)
    self.assertIn('![Test accuracy during training]', text)

  def test_uniform_layer_is_named_with_its_cause(self):
    for condition in ('none', 'kv'):
      workdir = write_run(self.root, condition, entropy=1.6)
      summary = json.loads((workdir / 'summary.json').read_text())
      for entry in summary['per_seed']:
        entry['attention']['entropy_norm'][0] = 0.99991
      (workdir / 'summary.json').write_text(json.dumps(summary))
    build.run_analysis(self.root, self.out)
    text = (self.out / 'report.md').read_text()
    for condition in ('none', 'kv'):
      self.assertIn(f'- `{condition}`, layer 0: normalized attention entropy '
                    '0.99991 (mean over 5 seeds, above 0.999): its attention '
                    'is uniform, so it shares nothing of interest. This is '
                    'an initialisation artefact', text)
    self.assertNotIn('layer 1: normalized attention entropy', text)

  def test_heatmap_titles_name_the_class(self):
    write_run(self.root, 'none', dataset='imdb_reviews')
    write_run(self.root, 'kv')
    with mock.patch.object(figures, 'attention_heatmaps',
                           wraps=figures.attention_heatmaps) as draw:
      build.run_analysis(self.root, self.out)
    titles = [c.args[2] for c in draw.call_args_list]
    self.assertEqual(titles, [
        'none: attention on the fixed test review (positive), seed 0, '
        'step 100',
        'kv: attention on the fixed test review (label 1), seed 0, step 100'])
    self.assertEqual(draw.call_args_list[0].args[1], PIECES)

  def test_empty_folder_is_an_error(self):
    self.assertIn('no summary.json under',
                  cli_error(['--runs', self.root, '--out', self.out]))

  def test_missing_folder_is_an_error(self):
    self.assertIn('is not a folder',
                  cli_error(['--runs', self.root / 'x', '--out', self.out]))

  def test_partial_run_is_an_error(self):
    write_run(self.root, 'none')
    (self.root / 'kv').mkdir()
    (self.root / 'kv' / 'config.json').write_text('{}')
    self.assertIn('kv has config.json but no summary.json',
                  cli_error(['--runs', self.root, '--out', self.out]))

  def test_missing_baseline_is_an_error(self):
    write_run(self.root, 'kv')
    self.assertRegex(cli_error(['--runs', self.root, '--out', self.out]),
                     "baseline condition 'none' not found.*found: kv")

  def test_a_baseline_without_live_seeds_is_an_error(self):
    write_run(self.root, 'none', maps=False)
    write_run(self.root, 'k', diverged=SEEDS, maps=False)
    self.assertIn('has no live seed (all 5 replicas diverged)',
                  cli_error(['--runs', self.root, '--out', self.out,
                             '--baseline', 'k']))
    self.assertFalse(self.out.exists())

  def test_bad_arguments_are_one_line_errors(self):
    write_run(self.root / 'runs', 'none', maps=False)
    runs_dir = self.root / 'runs'
    for alpha in ('2', '0', '-0.1', '1'):
      self.assertIn(f'--alpha={float(alpha)} is outside (0, 1)', cli_error(
          ['--runs', runs_dir, '--out', self.out, f'--alpha={alpha}']))
    self.assertIn('argument --alpha: invalid float value', cli_error(
        ['--runs', runs_dir, '--out', self.out, '--alpha=x']))
    self.assertIn('--accuracy_margin=0.0 is outside (0, 1)', cli_error(
        ['--runs', runs_dir, '--out', self.out, '--accuracy_margin=0']))
    self.assertIn('--effect_margin=-1.0 must be positive', cli_error(
        ['--runs', runs_dir, '--out', self.out, '--effect_margin=-1']))
    a_file = self.root / 'file'
    a_file.write_text('x')
    self.assertIn(f'--out {a_file} is a file', cli_error(
        ['--runs', runs_dir, '--out', a_file]))
    # A folder that is not a report would be replaced: refused.
    self.assertIn(f'--out {runs_dir} holds files but no report.md',
                  cli_error(['--runs', runs_dir, '--out', runs_dir]))
    self.assertEqual(a_file.read_text(), 'x')
    self.assertFalse(self.out.exists())

  # Figures cost most of a build and play no part in the swap.
  @mock.patch.object(build, '_figures', return_value=[])
  def test_a_report_killed_mid_write_leaves_the_old_one_whole(self, _):
    for condition in ('none', 'kv'):
      write_run(self.root / 'old', condition, maps=False, eval_steps=(100,))
    build.run_analysis(self.root / 'old', self.out)
    old = {p.name: p.read_bytes() for p in self.out.iterdir()}
    write_run(self.root / 'new', 'none', accuracy=0.5, maps=False,
              eval_steps=(100,))
    write_run(self.root / 'new', 'q', maps=False, eval_steps=(100,))
    with mock.patch.object(markdown, 'write_report',
                           side_effect=KeyboardInterrupt):
      with self.assertRaises(KeyboardInterrupt):
        build.run_analysis(self.root / 'new', self.out)
    self.assertEqual({p.name: p.read_bytes() for p in self.out.iterdir()},
                     old)
    self.assertEqual(sorted(p.name for p in self.root.iterdir()),
                     ['new', 'old', 'report'])
    # Rebuilt, the folder holds the new runs' files only.
    build.run_analysis(self.root / 'new', self.out)
    self.assertNotIn('| `kv` | `kv` |', (self.out / 'report.md').read_text())
    self.assertIn('| `q` | `q` |', (self.out / 'report.md').read_text())
    self.assertEqual(set(pd.read_csv(self.out / 'tidy.csv')['condition']),
                     {'none', 'q'})

  def test_all_eight_conditions_beside_five(self):
    conditions = ('none', 'k', 'q', 'v', 'kv', 'kq', 'qv', 'kqv')
    for i, c in enumerate(conditions):
      write_run(self.root / 'all', c, sample_seed=i, maps=False,
                entropy=3.0 if 'k' in c else 2.7, eval_steps=(100,))
    (self.root / 'exp1').mkdir()
    for c in ('none', 'kv', 'kq', 'qv', 'kqv'):
      (self.root / 'exp1' / c).symlink_to(self.root / 'all' / c)
    # blog.sh links exp1/ and exp2/ inside the folder of all conditions.
    (self.root / 'all' / 'exp1').symlink_to(self.root / 'exp1')
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
      self.assertEqual(build.main(['--runs', str(self.root / 'all'), '--out',
                                   str(self.out), '--compare_runs',
                                   str(self.root / 'exp1')]), 0)
    self.assertEqual(stdout.getvalue().strip(), str(self.out / 'report.md'))
    text = (self.out / 'report.md').read_text()
    self.assertIn('Design: **paired by seed**', text)
    self.assertNotIn('this folder lacks', text)
    factorial = pd.read_csv(self.out / 'factorial.csv')
    self.assertLen(factorial, 7 * 4)
    k = factorial[(factorial['metric'] == 'entropy_norm')
                  & (factorial['term'] == 'K')].iloc[0]
    self.assertAlmostEqual(k['estimate'], 0.3 / np.log(10), delta=0.02)
    frame = pd.read_csv(self.out / 'claims.csv')
    self.assertEqual(len(frame), 2 * 25)
    both = frame.pivot(index='key', columns='runs', values='verdict')
    exp1 = both[str(self.root / 'exp1')]
    self.assertEqual(exp1['k_entropy'], 'not run')
    self.assertEqual(both['clean']['k_entropy'], 'supported')

  def test_mismatched_runs_excluded_and_diverged_replicas_left_out(self):
    write_run(self.root, 'none')
    write_run(self.root, 'kq', diverged=(3,), maps=False)
    write_run(self.root, 'q', seeds=(0, 1, 2))
    write_run(self.root, 'v', fingerprint='beef')
    write_run(self.root, 'qv', finished=False)
    with self.assertLogs(level='WARNING') as logs:
      build.run_analysis(self.root, self.out)
    self.assertLen([m for m in logs.output if 'Excluding' in m], 3)
    text = (self.out / 'report.md').read_text()
    self.assertIn('(`q`): seeds [0, 1, 2] (3) differ', text)
    self.assertIn("(`v`): data_fingerprint 'beef' differs", text)
    self.assertIn('(`qv`): unfinished: 50 of 100 steps', text)
    self.assertIn('`kq`: 1 of 5 replicas diverged (seed 3 at step 50)', text)
    tidy = pd.read_csv(self.out / 'tidy.csv')
    self.assertEqual(set(tidy['condition']), {'none', 'kq'})
    self.assertFalse((self.out / 'attention_q.png').exists())
    summary = pd.read_csv(self.out / 'summary_table.csv').set_index(
        ['metric', 'condition'])
    self.assertEqual(summary.loc[('entropy', 'kq'), 'n'], 4)
    self.assertEqual(summary.loc[('entropy', 'none'), 'n'], 5)

  def test_unreadable_maps_skip_the_heatmap_only(self):
    write_run(self.root, 'none')
    maps_path = write_run(self.root, 'kv') / 'attention_maps.npz'
    maps_path.write_bytes(maps_path.read_bytes()[:100])
    with self.assertLogs(level='WARNING') as logs:
      path = build.run_analysis(self.root, self.out)
    (warning,) = [m for m in logs.output if 'no attention heatmap' in m]
    self.assertIn('attention_maps.npz is unreadable (BadZipFile', warning)
    self.assertTrue((self.out / 'attention_none.png').exists())
    self.assertFalse((self.out / 'attention_kv.png').exists())
    text = path.read_text()
    self.assertIn('- `kv`: no attention heatmap: ', text)
    self.assertIn('Its statistics come from summary.json and are kept.', text)
    summary = pd.read_csv(self.out / 'summary_table.csv').set_index(
        ['metric', 'condition'])
    self.assertEqual(summary.loc[('entropy', 'kv'), 'n'], 5)

  def test_divergence_of_excluded_runs_only_is_not_denied(self):
    write_run(self.root, 'none')
    write_run(self.root, 'kv', finished=False, diverged=(1,))
    build.run_analysis(self.root, self.out)
    text = (self.out / 'report.md').read_text()
    self.assertNotIn('- No replica diverged.', text)
    self.assertIn('- No replica of the included runs diverged.', text)
    self.assertIn('- Excluded `kv`: 1 of 5 replicas diverged (seed 1 at step '
                  '50).', text)

  def test_no_divergence_anywhere_is_said_plainly(self):
    write_run(self.root, 'none')
    write_run(self.root, 'kv', finished=False)
    build.run_analysis(self.root, self.out)
    self.assertIn('- No replica diverged.',
                  (self.out / 'report.md').read_text())

  def test_plain_config_json_is_read(self):
    workdir = write_run(self.root, 'none')
    (workdir / 'config.json').write_text(json.dumps({'name': 'none'}))
    (run,) = runs.load_runs(self.root)
    self.assertEqual(run.config, {'name': 'none'})

  def test_imports_no_jax(self):
    code = ('import jax_attnshare.report.build, sys; '
            "bad = {'jax', 'flax', 'tensorflow'} & set(sys.modules); "
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True,
                   cwd=pathlib.Path(__file__).parents[1])


if __name__ == '__main__':
  absltest.main()
