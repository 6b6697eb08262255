"""CLI: statistics, figures and report.md for a folder of runs.

  python -m jax_attnshare.report --runs=DIR [--baseline=none] \\
      --out=REPORT_DIR [--alpha=0.05] [--compare_runs=OTHER_DIR ...]

DIR holds one workdir per sharing condition (DIR/none, DIR/kv, ...), each
with summary.json (and config.json, attention_maps.npz). Each OTHER_DIR is
such a folder of another regime (or setup): its runs are analysed the same
way, and the Claims section shows their verdicts beside DIR's. Writes report.md,
summary_table.csv, per_layer.csv, anova.csv, tidy.csv and PNG figures into
REPORT_DIR and prints the path of report.md. See runs.py for which runs are
excluded and which problems are errors.
"""

import argparse
from collections.abc import Mapping, Sequence
import pathlib
import re
from typing import Any

from absl import logging
import pandas as pd

from jax_attnshare import plotting
from jax_attnshare.report import claims as claims_lib
from jax_attnshare.report import figures
from jax_attnshare.report import stats
from jax_attnshare.report import markdown
from jax_attnshare.report import runs as runs_lib

_BOX_METRICS = ('test_accuracy', 'entropy', 'entropy_norm', 'head_correlation',
                'head_specialization', 'js_adjacent')


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
             out_dir: pathlib.Path) -> list[tuple[str, str]]:
  """Draws every figure the data allows; returns (caption, file name).

  maps: {condition: its attention maps} of the runs that have readable ones.
  """
  conditions = [r.condition for r in included]
  thresholds = included[0].summary.get('sparsity_thresholds', {})
  metrics = stats.order_metrics(final['metric'].unique())
  out = []
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


def _analyze(runs: Sequence[runs_lib.Run], baseline: str, alpha: float):
  """(included, excluded, tidy, final, table, omni, dropped) of some runs."""
  included, excluded = runs_lib.select(runs, baseline)
  conditions = [r.condition for r in included]
  tidy = stats.tidy_table({r.condition: r.summary for r in included})
  used = (tidy['source'] == 'final') & ~tidy['diverged']
  nulls = tidy[used & tidy['value'].isna() & tidy['layer'].isna()]
  dropped = nulls.groupby('condition').size().to_dict()
  final = tidy[used].dropna(subset='value')
  table, omni = stats.analyze(final, conditions, baseline, alpha)
  return included, excluded, tidy, final, table, omni, dropped


def _label(runs: Sequence[runs_lib.Run], runs_dir: pathlib.Path) -> str:
  """The runs' regime if they share one, else the folder's path."""
  regimes = {r.config.get('regime') for r in runs}
  return regimes.pop() if len(regimes) == 1 and None not in regimes else str(
      runs_dir)


def run_analysis(runs_dir: pathlib.Path, out_dir: pathlib.Path,
                 baseline: str = 'none', alpha: float = 0.05,
                 compare_runs: Sequence[pathlib.Path] = ()) -> pathlib.Path:
  """Analyses runs_dir into out_dir; returns the path of report.md.

  compare_runs: folders of runs analysed alike for the Claims section only.
  """
  runs_dir, out_dir = pathlib.Path(runs_dir), pathlib.Path(out_dir)
  runs = runs_lib.load_runs(runs_dir)
  included, excluded, tidy, final, table, omni, dropped = _analyze(
      runs, baseline, alpha)
  claims = [(_label(included, runs_dir),
             claims_lib.evaluate(table, omni, baseline, alpha))]
  for other_dir in map(pathlib.Path, compare_runs):
    other = _analyze(runs_lib.load_runs(other_dir), baseline, alpha)
    label = _label(other[0], other_dir)
    if label in [l for l, _ in claims]:
      label = str(other_dir)
    claims.append((label, claims_lib.evaluate(other[4], other[5], baseline,
                                              alpha)))
  # Read before anything is written, so a damaged file leaves no half report.
  maps, unreadable_maps = runs_lib.read_attention_maps(included)
  conditions = [r.condition for r in included]
  out_dir.mkdir(parents=True, exist_ok=True)
  tidy.to_csv(out_dir / 'tidy.csv', index=False)
  table[table['layer'].isna()].drop(columns='layer').to_csv(
      out_dir / 'summary_table.csv', index=False)
  table[table['layer'].notna()].to_csv(out_dir / 'per_layer.csv', index=False)
  omni.to_csv(out_dir / 'anova.csv', index=False)
  few = _few_evaluations(included)
  if few:
    logging.warning(
        'Runs evaluated fewer than twice (%s): no learning curve can be '
        'drawn; their test accuracy is drawn as a point with the 95%% CI '
        'over seeds.', ', '.join(few))
  figure_files = _figures(tidy, final, included, few, maps, out_dir)
  path = out_dir / 'report.md'
  markdown.write_report(path, runs_dir=runs_dir, baseline=baseline, alpha=alpha,
                        included=included, excluded=excluded, table=table,
                        omni=omni, final=final, figure_files=figure_files,
                        dropped=dropped, unreadable_maps=unreadable_maps,
                        few_evaluations=few, claims=claims)
  pd.concat([frame.assign(runs=label) for label, frame in claims]).to_csv(
      out_dir / 'claims.csv', index=False)
  logging.info('Wrote %s', path)
  return path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m jax_attnshare.report', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--runs', required=True, type=pathlib.Path,
                      help='folder with one workdir per condition')
  parser.add_argument('--baseline', default='none',
                      help='condition every other one is compared with')
  parser.add_argument('--out', required=True, type=pathlib.Path,
                      help='folder for report.md, CSVs and figures')
  parser.add_argument('--alpha', default=0.05, type=float,
                      help='significance level (tests and Holm correction)')
  parser.add_argument('--compare_runs', action='append', default=[],
                      type=pathlib.Path, metavar='OTHER_DIR',
                      help='another folder of runs (e.g. the other regime) '
                      'whose claim verdicts the report shows beside --runs\'; '
                      'repeatable')
  args = parser.parse_args(argv)
  try:
    path = run_analysis(args.runs, args.out, args.baseline, args.alpha,
                        args.compare_runs)
  except runs_lib.RunsError as e:
    raise SystemExit(f'error: {e}') from e
  print(path)
  return 0

