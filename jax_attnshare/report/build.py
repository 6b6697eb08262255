"""CLI: statistics, figures and report.md for a folder of runs.

  python -m jax_attnshare.report --runs=DIR --out=REPORT_DIR \\
      [--compare_runs=OTHER_DIR ...] [--baseline=none] [--alpha=0.05] \\
      [--design=paired] [--accuracy_margin=0.01] [--effect_margin=1.0]

DIR holds one workdir per sharing condition (DIR/none, DIR/kv, ...), each
with summary.json (and config.json, attention_maps.npz); experiments/blog.sh
writes all 8 of the blog's conditions into one such folder. Each OTHER_DIR
is such a folder of another regime (or setup): its runs are analysed the
same way, and the Claims section shows their verdicts beside DIR's. The
report is built in a temporary folder beside REPORT_DIR and then swapped
in, so REPORT_DIR never mixes files of two builds; REPORT_DIR must be new,
empty or an earlier report. Writes report.md, claims.csv, mde.csv,
factorial.csv, summary_table.csv, per_layer.csv, anova.csv, tidy.csv and
PNG figures, and prints the path of report.md. Bad input is one line
`error: ...` on stderr, exit status 2. See runs.py for which runs are
excluded and which problems are errors, and docs/statistics.md for the
statistics.
"""

import argparse
from collections.abc import Mapping, Sequence
import dataclasses
import pathlib
import re
import shutil
import sys
import tempfile
from typing import Any

from absl import logging
import pandas as pd

from jax_attnshare import plotting
from jax_attnshare.report import claims as claims_lib
from jax_attnshare.report import factorial
from jax_attnshare.report import figures
from jax_attnshare.report import markdown
from jax_attnshare.report import planning
from jax_attnshare.report import runs as runs_lib
from jax_attnshare.report import stats

_BOX_METRICS = ('test_accuracy', 'entropy', 'entropy_norm', 'head_correlation',
                'head_specialization', 'js_adjacent')
# The regime whose `none` runs the sanity gate holds against the blog's
# accuracy (config.json's `regime`).
_BLOG_REGIME = 'blog'


class ReportError(ValueError):
  """A bad argument of the report (not of the runs)."""


def _file_name(condition: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', condition)


def _few_evaluations(
    included: Sequence[runs_lib.Run]) -> dict[str, list[int]]:
  """{condition: its evaluation steps} for those evaluated fewer than twice."""
  steps = {r.condition: [e['step'] for e in r.summary.get('history', [])]
           for r in included}
  return {c: s for c, s in steps.items() if len(s) < 2}


def _figures(tidy: pd.DataFrame, final: pd.DataFrame,
             included: Sequence[runs_lib.Run], few: Mapping[str, list[int]],
             maps: Mapping[str, Mapping[str, Any]],
             claim_sets: Sequence[markdown.ClaimSet],
             margins: claims_lib.Margins,
             out_dir: pathlib.Path) -> list[tuple[str, str]]:
  """Draws every figure the data allows; returns (caption, file name).

  maps: {condition: its attention maps} of the runs that have readable ones.
  """
  conditions = [r.condition for r in included]
  thresholds = included[0].summary.get('sparsity_thresholds', {})
  metrics = stats.order_metrics(final['metric'].unique())
  figures.forest([(s.label, s.frame) for s in claim_sets], margins,
                 out_dir / 'forest.png')
  out = [('The claims of the blog: effects with adjusted intervals',
          'forest.png')]
  if figures.accuracy_curves(tidy, conditions,
                             out_dir / 'accuracy_curves.png'):
    out.append(('Test accuracy at the only evaluation'
                if len(few) == len(included) else
                'Test accuracy during training', 'accuracy_curves.png'))
  panels = [m for m in metrics if m in _BOX_METRICS]
  if panels:
    figures.box_panels(final, conditions, panels, thresholds,
                       'Per-condition distributions over seeds',
                       out_dir / 'box_metrics.png')
    out.append(('Accuracy and attention metrics per condition',
                'box_metrics.png'))
  sparsity = [m for m in metrics if m.startswith('sparsity')]
  if sparsity:
    figures.box_panels(final, conditions, sparsity, thresholds,
                       'Attention sparsity per condition, by threshold',
                       out_dir / 'box_sparsity.png')
    out.append(('Attention sparsity per condition', 'box_sparsity.png'))
  layered = [m for m in metrics if final.loc[final['metric'] == m,
                                             'layer'].notna().any()]
  if layered:
    figures.layer_progression(final, conditions, layered, thresholds,
                              out_dir / 'layers.png')
    out.append(('Attention progression across layers', 'layers.png'))
  for run in included:
    if run.condition not in maps:
      continue
    run_maps = maps[run.condition]
    name = f'attention_{_file_name(run.condition)}.png'
    # A run without config.json is taken for a classifier of unknown data.
    review = plotting.review_title(
        run_maps['label'], run.config.get('task', 'classify'),
        run.config.get('data', {}).get('dataset'))
    title = (f'{run.condition}: attention on the fixed {review}, seed '
             f'{run.summary["seeds"][0]}, step {run_maps["step"]}')
    figures.attention_heatmaps(run_maps['probs'][0], run_maps['pieces'],
                               title, out_dir / name)
    out.append((f'Attention maps, {run.condition}', name))
  mats = {r.condition: m for r in included
          if (m := stats.seed_mean_matrix(r.summary, 'js_layers'))
          is not None}
  if mats:
    figures.js_matrices(mats, out_dir / 'js_layers.png')
    out.append(('JS divergence between layers', 'js_layers.png'))
  return out


@dataclasses.dataclass(frozen=True)
class _Analysis:
  """One folder of runs, read and tested (see _analyze)."""
  runs_dir: pathlib.Path
  included: list[runs_lib.Run]
  excluded: list[tuple[runs_lib.Run, str]]
  tidy: pd.DataFrame
  final: pd.DataFrame
  dropped: dict[str, int]
  claims: markdown.ClaimSet


def _label(runs: Sequence[runs_lib.Run], runs_dir: pathlib.Path) -> str:
  """The runs' regime if they share one, else the folder's path."""
  regimes = {r.config.get('regime') for r in runs}
  return regimes.pop() if len(regimes) == 1 and None not in regimes else str(
      runs_dir)


def _gate(included: Sequence[runs_lib.Run],
          final: pd.DataFrame) -> dict[str, float] | None:
  """claims.accuracy_gate() when `none` ran in the blog regime."""
  none = [r for r in included if r.condition == claims_lib.BASELINE]
  if not none or none[0].config.get('regime') != _BLOG_REGIME:
    return None
  return claims_lib.accuracy_gate(final)


def _analyze(runs_dir: pathlib.Path, baseline: str, alpha: float,
             design: str, margins: claims_lib.Margins,
             taken: Sequence[str] = ()) -> _Analysis:
  """Reads, selects and tests one folder; taken: labels already in use."""
  included, excluded = runs_lib.select(runs_lib.load_runs(runs_dir),
                                       baseline)
  tidy = stats.tidy_table({r.condition: r.summary for r in included})
  used = (tidy['source'] == 'final') & ~tidy['diverged']
  nulls = tidy[used & tidy['value'].isna() & tidy['layer'].isna()]
  dropped = nulls.groupby('condition').size().to_dict()
  final = tidy[used].dropna(subset='value')
  label = _label(included, runs_dir)
  if label in taken:
    label = str(runs_dir)
  base = included[0].summary
  claims = markdown.ClaimSet(
      label=label,
      frame=claims_lib.evaluate(final, [r.condition for r in included],
                                design, alpha, margins),
      gate=_gate(included, final),
      steps=base.get('completed_steps', base.get('num_train_steps')))
  if claims.gate is not None:
    g = claims.gate
    logging.warning(
        'Sanity gate (%s, blog regime): none reaches test accuracy %.3f '
        '(95%% CI %.3f-%.3f over %d seeds), %+.3f from the blog\'s %.2f.',
        label, g['mean'], g['ci_low'], g['ci_high'], g['n'], g['gap'],
        claims_lib.BLOG_ACCURACY)
  return _Analysis(runs_dir, included, excluded, tidy, final, dropped,
                   claims)


def _check_arguments(out_dir: pathlib.Path, alpha: float, design: str,
                     margins: claims_lib.Margins) -> None:
  """Raises ReportError for an argument no report can be built with."""
  if not 0 < alpha < 1:
    raise ReportError(f'--alpha={alpha} is outside (0, 1); the usual '
                      'family level is 0.05')
  if design not in stats.DESIGNS:
    raise ReportError(f'--design={design!r}: use one of {stats.DESIGNS}')
  if not 0 < margins.accuracy < 1:
    raise ReportError(f'--accuracy_margin={margins.accuracy} is outside '
                      '(0, 1); it is in accuracy, e.g. 0.01 for 1 point')
  if not margins.d > 0:
    raise ReportError(f'--effect_margin={margins.d} must be positive (a '
                      'standardised effect, e.g. 1.0)')
  if out_dir.exists() and not out_dir.is_dir():
    raise ReportError(f'--out {out_dir} is a file; pass a folder for the '
                      'report (new, empty, or an earlier report)')
  if (out_dir.is_dir() and any(out_dir.iterdir())
      and not (out_dir / 'report.md').exists()):
    raise ReportError(f'--out {out_dir} holds files but no report.md; the '
                      'report replaces its whole folder, so pass a new, '
                      'empty, or earlier report folder')


def _swap_in(built: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Replaces out_dir by the built folder, never mixing the two.

  Two renames: a crash between them leaves the earlier report in a hidden
  `.NAME.old-*` folder and the new one in `.NAME.building-*` beside it.
  """
  old = None
  if out_dir.exists():
    old = built.with_name(built.name.replace('.building-', '.old-'))
    out_dir.rename(old)
  built.rename(out_dir)
  if old is not None:
    shutil.rmtree(old)


def run_analysis(runs_dir: pathlib.Path, out_dir: pathlib.Path,
                 baseline: str = 'none', alpha: float = 0.05,
                 compare_runs: Sequence[pathlib.Path] = (),
                 design: str = 'paired',
                 margins: claims_lib.Margins = claims_lib.Margins()
                 ) -> pathlib.Path:
  """Analyses runs_dir into out_dir; returns the path of report.md.

  compare_runs: folders of runs analysed alike for the Claims section only.
  """
  runs_dir, out_dir = pathlib.Path(runs_dir), pathlib.Path(out_dir)
  _check_arguments(out_dir, alpha, design, margins)
  main = _analyze(runs_dir, baseline, alpha, design, margins)
  claim_sets = [main.claims]
  for other_dir in map(pathlib.Path, compare_runs):
    other = _analyze(other_dir, baseline, alpha, design, margins,
                     taken=[s.label for s in claim_sets])
    claim_sets.append(other.claims)
  # Read before anything is written, so a damaged file leaves no half report.
  maps, unreadable_maps = runs_lib.read_attention_maps(main.included)
  conditions = [r.condition for r in main.included]
  table, omni = stats.analyze(main.final, conditions, baseline, alpha,
                              design)
  effects = factorial.analyze(main.final,
                              list(claims_lib.PRIMARY_METRICS.values()),
                              design)
  n_seeds = len(main.included[0].summary['seeds'])
  mde_seeds = sorted({n_seeds, claims_lib.BLOG_SEEDS})
  mde = planning.mde_table(mde_seeds, design, alpha, margins)
  few = _few_evaluations(main.included)
  if few:
    logging.warning(
        'Runs evaluated fewer than twice (%s): no learning curve can be '
        'drawn; their test accuracy is drawn as a point with the 95%% CI '
        'over seeds.', ', '.join(few))
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  built = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.building-',
                                        dir=out_dir.parent))
  try:
    main.tidy.to_csv(built / 'tidy.csv', index=False)
    table[table['layer'].isna()].drop(columns='layer').to_csv(
        built / 'summary_table.csv', index=False)
    table[table['layer'].notna()].to_csv(built / 'per_layer.csv',
                                         index=False)
    omni.to_csv(built / 'anova.csv', index=False)
    pd.concat([s.frame.assign(runs=s.label) for s in claim_sets]).to_csv(
        built / 'claims.csv', index=False)
    mde.to_csv(built / 'mde.csv', index=False)
    effects.to_csv(built / 'factorial.csv', index=False)
    figure_files = _figures(main.tidy, main.final, main.included, few, maps,
                            claim_sets, margins, built)
    markdown.write_report(
        built / 'report.md', runs_dir=runs_dir, baseline=baseline,
        alpha=alpha, design=design, margins=margins,
        included=main.included, excluded=main.excluded, table=table,
        omni=omni, final=main.final, claim_sets=claim_sets,
        absolute=claims_lib.absolute_contrasts(main.final, design),
        effects=effects, mde=mde, mde_seeds=mde_seeds,
        figure_files=figure_files, dropped=main.dropped,
        unreadable_maps=unreadable_maps, few_evaluations=few)
    _swap_in(built, out_dir)
  finally:
    shutil.rmtree(built, ignore_errors=True)
  path = out_dir / 'report.md'
  logging.info('Wrote %s', path)
  return path


class _Parser(argparse.ArgumentParser):
  """argparse with main's error format: one line, exit status 2."""

  def error(self, message: str):
    _fail(message)


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
  parser = _Parser(
      prog='python -m jax_attnshare.report', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--runs', required=True, type=pathlib.Path,
                      help='folder with one workdir per condition')
  parser.add_argument('--out', required=True, type=pathlib.Path,
                      help='folder for report.md, CSVs and figures (new, '
                      'empty, or an earlier report: it is replaced)')
  parser.add_argument('--compare_runs', action='append', default=[],
                      type=pathlib.Path, metavar='OTHER_DIR',
                      help='another folder of runs (e.g. the other regime) '
                      'whose claim verdicts the report shows beside --runs\'; '
                      'repeatable')
  parser.add_argument('--baseline', default='none',
                      help='condition the exploratory comparisons use; the '
                      'claims always compare with none')
  parser.add_argument('--alpha', default=0.05, type=float,
                      help='familywise level of the claims, in (0, 1)')
  parser.add_argument('--design', default='paired', choices=stats.DESIGNS,
                      help='paired: seeds are blocks (replica i has the '
                      'same seed in every condition); independent: as the '
                      'blog analysed')
  parser.add_argument('--accuracy_margin', default=0.01, type=float,
                      help='equivalence margin of the accuracy claims, in '
                      'accuracy (0.01 = 1 point)')
  parser.add_argument('--effect_margin', default=1.0, type=float,
                      help='equivalence margin of the other no-effect '
                      'claims, in standardised units d')
  args = parser.parse_args(argv)
  try:
    path = run_analysis(args.runs, args.out, args.baseline, args.alpha,
                        args.compare_runs, args.design,
                        claims_lib.Margins(args.accuracy_margin,
                                           args.effect_margin))
  except (runs_lib.RunsError, ReportError) as e:
    _fail(str(e))
  except OSError as e:  # e.g. a folder that cannot be read or written
    _fail(str(e))
  print(path)
  return 0
