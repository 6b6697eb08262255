"""Writes report.md: every number and finding comes from the tables."""

from collections.abc import Mapping, Sequence
import json
import math
import pathlib
from typing import Any

import pandas as pd

from jax_attnshare.report import claims as claims_lib
from jax_attnshare.report import figures
from jax_attnshare.report import stats
from jax_attnshare import workdir as workdir_lib
from jax_attnshare.report import runs as runs_lib

_METHODS = """\
Per metric (the run's value: mean over layers, or over adjacent layer pairs
for js_*), overall and per layer:

- **Across conditions**: Shapiro-Wilk per condition (n >= 3, p-values
  Holm-adjusted across conditions) and Levene (median-centred) check the
  one-way ANOVA's assumptions at alpha. If any condition fails normality,
  Kruskal-Wallis H (rank-based) is used; else if equal variances fail,
  Welch's ANOVA; else the classic F test. The table below says which test
  ran and why.
- **Each condition vs the baseline**: Welch's t-test (no equal-variance
  assumption), Holm-corrected across the conditions compared for that
  metric (separately per layer). Cohen's d uses the pooled SD; its 95% CI
  uses the normal-approximation SE sqrt((n1+n2)/(n1 n2) + d^2/(2(n1+n2)))
  (Hedges & Olkin 1985). Hedges' g = J d with the exact small-sample J; its
  CI is J times d's CI.
- **Power**: statsmodels TTestIndPower at the observed |d| and the actual
  group sizes, and the seeds per group needed for 80% power. Power at the
  observed effect is a function of p, so read it as a planning aid for the
  next run, not as evidence.
"""


def _num(x: Any, digits: int = 4) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
    return 'n/a'
  return f'{x:.{digits}g}'


def _p(p: float, name: str = 'p') -> str:
  if not math.isfinite(p):
    return f'{name} n/a'
  return f'{name} < 0.001' if p < 0.001 else f'{name} = {p:.3g}'


def _mark(p_holm: float) -> str:
  if not math.isfinite(p_holm):
    return ''
  return next((m for cut, m in ((0.001, '***'), (0.01, '**'), (0.05, '*'))
               if p_holm < cut), '')


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  """A markdown table's lines, each cell written with str()."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  return lines + ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]


def _flatten(d: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _conditions(included: Sequence[runs_lib.Run]) -> list[str]:
  rows = []
  for run in included:
    s = run.summary
    params = s.get('params', {})
    n_used = len(s['seeds']) - len(run.diverged_seeds)
    rows.append((f'`{run.condition}`', f'`{run.path.name}`',
                 f'`{s.get("sharing") or "(nothing shared)"}`',
                 *(f'{params[k]:,}' if k in params else 'n/a'
                   for k in ('total', 'attention', 'shared')),
                 f'{n_used} of {len(s["seeds"])}',
                 _num(s.get('wall_time_s'), 3)))
  return table(('condition', 'workdir', 'sharing', 'params', 'attention '
                 'params', 'shared params', 'seeds used', 'wall time [s]'),
                rows)


def _configuration(included: Sequence[runs_lib.Run]) -> list[str]:
  base = _flatten(included[0].config)
  if not base:
    return ['The baseline has no config.json.']
  lines = table(('field', 'value (baseline)'),
                 [(f'`{k}`', f'`{json.dumps(v)}`') for k, v in base.items()])
  diffs = []
  for run in included[1:]:
    cfg = _flatten(run.config)
    for k in sorted(set(base) | set(cfg)):
      if k != 'name' and not k.startswith('sharing') and (
          base.get(k) != cfg.get(k)):
        operational = (k in workdir_lib.OPERATIONAL_FIELDS or k in [
            f'data.{f}' for f in workdir_lib.DATA_LOCATION_FIELDS])
        diffs.append(f'- `{run.condition}`: `{k}` = `{json.dumps(cfg.get(k))}`'
                     f' (baseline `{json.dumps(base.get(k))}`)'
                     + (': operational, the same training' if operational
                        else ''))
  return lines + ['', 'Other differences from the baseline config '
                  '(besides name and sharing):', ''] + (diffs or ['- none'])


def _diverged(run: runs_lib.Run) -> str:
  """'1 of 5 replicas diverged (seed 3 at step 50)', or '' if none did."""
  gone = [r for r in run.summary['per_seed'] if r.get('diverged')]
  if not gone:
    return ''
  where = ', '.join(f'seed {r["seed"]} at step {r.get("diverged_at_step")}'
                    for r in gone)
  return (f'{len(gone)} of {len(run.summary["per_seed"])} replicas diverged '
          f'({where})')


def _exclusions(included: Sequence[runs_lib.Run],
                excluded: Sequence[tuple[runs_lib.Run, str]],
                dropped: Mapping[str, int],
                unreadable_maps: Mapping[str, str]) -> list[str]:
  lines = [f'- Excluded `{r.path}` (`{r.condition}`): {why}. It is in no '
           'statistic, table or figure.' for r, why in excluded]
  if not excluded:
    lines.append('- No run was excluded: every run is finished and matches '
                 'the baseline in seeds, data fingerprint, seed mode and '
                 'steps.')
  lines += [f'- `{c}`: no attention heatmap: {why}. Its statistics come '
            'from summary.json and are kept.'
            for c, why in unreadable_maps.items()]
  lines += [f'- `{r.condition}`: {gone}; they are left out of every '
            'statistic and curve.' for r in included if (gone := _diverged(r))]
  # Divergence in an excluded run is no evidence about the compared ones,
  # but a reader must not be told that nothing diverged.
  excluded_gone = [f'- Excluded `{r.condition}`: {gone}.'
                   for r, _ in excluded if (gone := _diverged(r))]
  if not any(r.diverged_seeds for r in included):
    lines.append('- No replica of the included runs diverged.'
                 if excluded_gone else '- No replica diverged.')
  lines += excluded_gone
  lines += [f'- `{c}`: {k} null (non-finite) values of non-diverged replicas '
            'were left out.' for c, k in dropped.items() if k]
  return lines


def _evaluation_warning(few: Mapping[str, Sequence[int]],
                        n_conditions: int) -> list[str]:
  """A warning for runs evaluated fewer than twice, else nothing."""
  if not few:
    return []
  which = ('Every run was' if len(few) == n_conditions else
           ', '.join(f'`{c}`' for c in few) + (' was' if len(few) == 1
                                               else ' were'))
  steps = '; '.join(f'`{c}`: ' + (f'step {s[0]}' if s else 'none')
                    for c, s in few.items())
  return [f'> **Warning: fewer than two evaluations.** {which} evaluated '
          f'fewer than twice ({steps}), so no learning curve can be drawn: '
          'the accuracy figure shows the test accuracy of each such run as '
          'a point with the 95% CI over seeds. For curves, set '
          '`eval_every_steps` below `num_train_steps`.', '']


def _omnibus_rows(omni: pd.DataFrame, thresholds: Mapping[str, str]):
  rows = []
  for _, o in omni[omni['layer'].isna()].iterrows():
    df = (_num(o['df_num'], 3) if math.isnan(o['df_den'])
          else f'{_num(o["df_num"], 3)}, {_num(o["df_den"], 3)}')
    rows.append((figures.metric_label(o['metric'], thresholds), o['test'],
                 _num(o['statistic'], 3), df, _p(o['p']), o['reason']))
  return table(('metric', 'test', 'statistic', 'df', 'p', 'why'), rows)


def _summary_rows(overall: pd.DataFrame, conditions: Sequence[str],
                  thresholds: Mapping[str, str]) -> list[str]:
  rows = []
  for metric, df in overall.groupby('metric', sort=False):
    cells = {r['condition']: f'{_num(r["mean"])} ± {_num(r["sd"], 2)}'
             f'{_mark(r["p_holm"])}' for _, r in df.iterrows()}
    rows.append((figures.metric_label(metric, thresholds),
                 stats.unit(metric),
                 *(cells.get(c, 'n/a') for c in conditions)))
  return table(('metric', 'unit', *conditions), rows)


def _contrast_rows(overall: pd.DataFrame,
                   thresholds: Mapping[str, str]) -> list[str]:
  rows = []
  for _, r in overall[overall['p'].notna()].iterrows():
    rows.append((figures.metric_label(r['metric'], thresholds),
                 r['condition'], _num(r['diff'], 3),
                 f'{_num(r["d"], 3)} [{_num(r["d_ci_low"], 3)}, '
                 f'{_num(r["d_ci_high"], 3)}]',
                 f'{_num(r["g"], 3)} [{_num(r["g_ci_low"], 3)}, '
                 f'{_num(r["g_ci_high"], 3)}]',
                 _num(r['t'], 3), _num(r['p'], 3),
                 _num(r['p_holm'], 3) + _mark(r['p_holm']),
                 _num(r['power'], 2), _num(r['n_needed'], 6)))
  return table(('metric', 'condition', 'diff', "Cohen's d [95% CI]",
                 "Hedges' g [95% CI]", 'Welch t', 'p', 'p_holm', 'power',
                 'seeds for 80% power'), rows)


def _sentence(r: pd.Series, baseline: str, sharing: Mapping[str, str],
              thresholds: Mapping[str, str]) -> str:
  unit = stats.unit(r['metric'])
  amount = _num(abs(r['diff']), 3)
  amount += f' {unit}' if unit == 'nats' else f' ({unit})' if unit else ''
  where = '' if pd.isna(r['layer']) else f' in layer {r["layer"]}'
  if r['metric'].startswith('js_') and not pd.isna(r['layer']):
    where = f' between layers {r["layer"]} and {r["layer"] + 1}'
  verb = 'raises' if r['diff'] > 0 else 'lowers'
  return (f'`{r["condition"]}` (sharing `{sharing.get(r["condition"], "")}`) '
          f'{verb} mean {figures.metric_label(r["metric"], thresholds)}'
          f'{where} by {amount} vs `{baseline}` ({_num(r["mean"])} vs '
          f'{_num(r["mean"] - r["diff"])}; d = {_num(r["d"], 3)}, '
          f'{_p(r["p_holm"], "p_holm")}).')


def _findings(table: pd.DataFrame, omni: pd.DataFrame, baseline: str,
              alpha: float, sharing: Mapping[str, str],
              thresholds: Mapping[str, str]) -> list[str]:
  lines = []
  acc = omni[(omni['metric'] == 'test_accuracy') & omni['layer'].isna()]
  if acc.empty or acc.iloc[0]['test'] == 'none':
    why = 'no values' if acc.empty else acc.iloc[0]['reason']
    lines.append(f'- Test accuracy could not be compared across conditions '
                 f'({why}).')
  else:
    o = acc.iloc[0]
    verdict = ('differs across conditions' if o['p'] < alpha else
               'does not differ detectably between conditions')
    lines.append(f'- Test accuracy {verdict} ({o["test"]} = '
                 f'{_num(o["statistic"], 3)}, {_p(o["p"])}).')
  overall = table[table['layer'].isna()]
  significant = overall[overall['p_holm'] < alpha]
  lines += ['- ' + _sentence(r, baseline, sharing, thresholds)
            for _, r in significant.iterrows()]
  tested = overall[overall['p'].notna()]
  if significant.empty:
    lines.append(f'- No comparison with `{baseline}` is significant after '
                 f'Holm correction at alpha = {alpha}.')
  weak = tested[(tested['p_holm'] >= alpha) & (tested['power'] < 0.8)]
  if len(weak):
    lines.append(f'- {len(weak)} of {len(tested) - len(significant)} '
                 'non-significant comparisons had under 80% power at their '
                 'observed effect; see "seeds for 80% power".')
  per_layer = table[table['layer'].notna() & table['p'].notna()]
  layer_sig = per_layer[per_layer['p_holm'] < alpha]
  lines.append(f'- Per layer, {len(layer_sig)} of {len(per_layer)} '
               'comparisons are significant after Holm correction '
               '(per_layer.csv):')
  lines += ['  - ' + _sentence(r, baseline, sharing, thresholds)
            for _, r in layer_sig.iterrows()]
  return lines


# Mean normalized entropy above which a layer's attention counts as uniform:
# at 128 keys every weight is then within about 10% of 1/n.
def _claim_effect(r: pd.Series, direction: int) -> str:
  if r['verdict'] == claims_lib.NOT_RUN:
    return 'not run'
  if direction == 0:
    return f'range of means {_num(r["diff"], 3)}; {r["test"]} {_p(r["p"])}'
  if not math.isfinite(r['d']):
    return f'diff {_num(r["diff"], 3)}; d n/a'
  return (f'diff {r["diff"]:+.3g}, d = {r["d"]:.2f} [{r["d_ci_low"]:.2f}, '
          f'{r["d_ci_high"]:.2f}], {_p(r["p"], "p_holm")}')


def claims_section(evaluated: Sequence[tuple[str, pd.DataFrame]],
                   alpha: float) -> list[str]:
  """The Claims section: one column pair per (label, claims.evaluate(...)).

  Labels name the sets of runs side by side, e.g. their regimes.
  """
  header = ['claim', 'the blog (figures; statistics)']
  for label, _ in evaluated:
    header += [f'{label}: effect, d [95% CI]', f'{label}: verdict']
  rows = []
  for i, claim in enumerate(claims_lib.CLAIMS):
    row = [claim.text, claim.blog]
    for _, frame in evaluated:
      r = frame.iloc[i]
      verdict = r['verdict']
      row += [_claim_effect(r, claim.direction),
              f'**{verdict}**' if verdict == claims_lib.SUPPORTED
              else verdict]
    rows.append(row)
  return [
      "Each claim of the blog (methods sheet §1.1) against these runs: the "
      "condition's difference from the baseline, Cohen's d with its 95% CI "
      f"and Welch's p, Holm-corrected; **supported** when p_holm < {alpha} "
      "in the blog's direction. For accuracy, **supported** means the "
      "omnibus test finds no difference (read it with the power table). "
      f"Entropy is over real tokens; sparsity is `{claims_lib.SPARSITY_METRIC}`"
      " (the blog states no threshold).", '', *table(header, rows)]


UNIFORM_ENTROPY = 0.999


def _uniform_layers(final: pd.DataFrame,
                    included: Sequence[runs_lib.Run]) -> list[str]:
  """A finding for each layer whose attention is uniform, with its cause."""
  rows = final[(final['metric'] == 'entropy_norm') & final['layer'].notna()]
  means = rows.groupby(['condition', 'layer'])['value'].agg(['mean', 'size'])
  lines = []
  for run in included:
    if run.condition not in means.index.get_level_values(0):
      continue
    model = run.config.get('config', {}).get('model', {})
    for layer, r in means.loc[run.condition].iterrows():
      if r['mean'] <= UNIFORM_ENTROPY:
        continue
      line = (f'- `{run.condition}`, layer {int(layer)}: normalized '
              f'attention entropy {r["mean"]:.5f} (mean over {int(r["size"])}'
              f' seeds, above {UNIFORM_ENTROPY}): its attention is uniform, '
              'so it shares nothing of interest.')
      if (int(layer) == 0 and not model.get('embedding_norm', False)
          and not model.get('embedding_init_std', 0.0)):
        line += (' This is an initialisation artefact: under Flax\'s '
                 'embedding init, layer 0\'s logits have a standard '
                 'deviation of about 2/width. Set '
                 '`config.model.embedding_norm=True` (or '
                 '`config.model.embedding_init_std`) to fix it; see the '
                 'README, "Layer-0 attention is uniform by default".')
      lines.append(line)
  return lines


def write_report(path: pathlib.Path, *, runs_dir: pathlib.Path,
                 baseline: str, alpha: float,
                 included: Sequence[runs_lib.Run],
                 excluded: Sequence[tuple[runs_lib.Run, str]],
                 table: pd.DataFrame, omni: pd.DataFrame,
                 final: pd.DataFrame, figure_files: Sequence[tuple[str, str]],
                 dropped: Mapping[str, int],
                 unreadable_maps: Mapping[str, str],
                 few_evaluations: Mapping[str, Sequence[int]],
                 claims: Sequence[tuple[str, pd.DataFrame]] = ()) -> None:
  """Writes the markdown report; figure_files are (caption, file name).

  unreadable_maps: {condition: why} of the included runs whose attention
  maps could not be read (no heatmap). few_evaluations: {condition:
  evaluation steps} of the runs evaluated fewer than twice. claims:
  [(label, claims.evaluate(...))] for the Claims section, these runs first.
  """
  base = included[0].summary
  thresholds = base.get('sparsity_thresholds', {})
  conditions = [r.condition for r in included]
  sharing = {r.condition: r.summary.get('sharing', '') for r in included}
  overall = table[table['layer'].isna()]
  mode = base.get('seed_mode')
  mode_text = {
      'shared': 'every replica saw the same data order, so conditions are '
                'paired on data order, and every comparison below is '
                'conditional on that one data order: the spread over seeds '
                'is initialisation only',
      'per_seed': 'each replica drew its own data order'}.get(mode, 'unknown')
  lines = [
      f'# Attention-sharing comparison: `{runs_dir}`', '',
      f'{len(included)} conditions (the baseline `{baseline}` included); '
      f'alpha = {alpha}; intervals are 95% CIs over seeds. '
      'Generated by `python -m jax_attnshare.report`.', '',
      *_evaluation_warning(few_evaluations, len(included)),
      '## Conditions', '', *_conditions(included), '',
      '## Configuration', '', *_configuration(included), '',
      '## Seeds', '',
      f'Seeds {base["seeds"]} ({len(base["seeds"])} per condition), '
      f'{base.get("num_train_steps")} training steps. Seed mode '
      f'`{mode}`: {mode_text}.', '',
      '## Excluded runs and diverged replicas', '',
      *_exclusions(included, excluded, dropped, unreadable_maps), '',
      '## Tests', '', _METHODS, *_omnibus_rows(omni, thresholds), '',
      '## Summary', '',
      'Mean ± SD over seeds; marks compare with the baseline after Holm '
      'correction: * p_holm < 0.05, ** < 0.01, *** < 0.001.', '',
      *_summary_rows(overall, conditions, thresholds), '',
      *_contrast_rows(overall, thresholds), '',
      '## Findings', '',
      *_findings(table, omni, baseline, alpha, sharing, thresholds),
      *_uniform_layers(final, included), '',
      *(['## Claims of the blog', '', *claims_section(claims, alpha), '']
        if claims else []),
      '## Figures', '']
  for caption, name in figure_files:
    lines += [f'### {caption}', '', f'![{caption}]({name})', '']
  lines += ['## Tables', '',
            '`summary_table.csv` (overall), `per_layer.csv`, `anova.csv` '
            '(omnibus tests, overall and per layer), `tidy.csv` (every '
            'value: condition, seed, step, metric, layer).', '']
  path.write_text('\n'.join(lines))
