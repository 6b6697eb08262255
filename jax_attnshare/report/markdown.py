"""Writes report.md: every number and finding comes from the tables."""

from collections.abc import Mapping, Sequence
import dataclasses
import json
import math
import pathlib
from typing import Any

import pandas as pd

from jax_attnshare import workdir as workdir_lib
from jax_attnshare.report import claims as claims_lib
from jax_attnshare.report import factorial
from jax_attnshare.report import figures
from jax_attnshare.report import planning
from jax_attnshare.report import runs as runs_lib
from jax_attnshare.report import stats


@dataclasses.dataclass(frozen=True)
class ClaimSet:
  """One folder's claims: its label, claims.evaluate()'s frame, and the
  sanity gate (claims.accuracy_gate(), or None outside the blog regime)."""
  label: str
  frame: pd.DataFrame
  gate: dict[str, float] | None
  steps: int | None


_EXPLORATORY = """\
Everything in this section is exploratory: it is not part of the claims'
family, its p-values are corrected (Holm) only across the conditions
compared within one metric and layer, and a result here is a lead for a
new, declared test, not a finding. Per metric (the run's value: mean over
layers, or over adjacent layer pairs for js_*), overall and per layer:

- **Across conditions**: paired design, a randomised-block ANOVA F test
  (seeds as blocks, the seeds live in every condition); independent
  design, Shapiro-Wilk per condition (n >= 3, Holm across conditions) and
  Levene (median-centred) choose between the classic F test, Welch's
  ANOVA and Kruskal-Wallis H. A non-significant test is no evidence that
  the conditions are the same: only the claims' equivalence tests can say
  that.
- **Each condition vs the baseline**: the t-test of the design (paired by
  seed, or Student's with the pooled SD), Cohen's d with its exact
  (noncentral t) 95% interval, unadjusted, and Holm across the conditions
  compared for that metric and layer.
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
    rows.append((figures.metric_label(o['metric'], thresholds),
                 int(o['n_conditions']), o['test'], _num(o['statistic'], 3),
                 df, _p(o['p']), o['reason']))
  return table(('metric', 'conditions tested', 'test', 'statistic', 'df',
                'p', 'why'), rows)


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
                 _num(r['t'], 3), _num(r['df'], 3), _num(r['p'], 3),
                 _num(r['p_holm'], 3) + _mark(r['p_holm'])))
  return table(('metric', 'condition', 'diff', "Cohen's d [95% CI]", 't',
                'df', 'p', 'p_holm (within the metric)'), rows)


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
    lines.append(f'- Test accuracy across conditions: {o["test"]} = '
                 f'{_num(o["statistic"], 3)}, {_p(o["p"])}. Whether it is '
                 'the same is for the accuracy claims\' equivalence tests '
                 '(Claims of the blog).')
  overall = table[table['layer'].isna()]
  significant = overall[overall['p_holm'] < alpha]
  lines += ['- ' + _sentence(r, baseline, sharing, thresholds)
            for _, r in significant.iterrows()]
  if significant.empty:
    lines.append(f'- No comparison with `{baseline}` has p_holm < {alpha} '
                 'within its metric.')
  per_layer = table[table['layer'].notna() & table['p'].notna()]
  layer_sig = per_layer[per_layer['p_holm'] < alpha]
  lines.append(f'- Per layer, {len(layer_sig)} of {len(per_layer)} '
               f'comparisons have p_holm < {alpha} within their metric and '
               'layer (per_layer.csv):')
  lines += ['  - ' + _sentence(r, baseline, sharing, thresholds)
            for _, r in layer_sig.iterrows()]
  return lines


_VERDICT_WORDS = f"""\
How a verdict is read: a direction is **{claims_lib.SUPPORTED}** (or
{claims_lib.OPPOSITE}) when its family-adjusted p is below alpha, and
{claims_lib.NOT_SHOWN} otherwise, which says nothing about whether the
effect exists. A no-effect claim is **{claims_lib.EQUIVALENT}** when its
TOST is significant after the correction (the effect is within the margin),
{claims_lib.DIFFERS} when its interval lies beyond the margin, and
{claims_lib.INCONCLUSIVE} otherwise. Against the blog: {claims_lib.INCONSISTENT}
when the interval lies below the blog's d in the claimed direction (a
no-effect claim: when it differs), {claims_lib.REPLICATED} when the claim
is supported (equivalent) and not inconsistent, else
{claims_lib.INCONCLUSIVE}. The blog's d is t sqrt(2/15) (two samples of 15
seeds), with t from its p at df 28 where it gives only p; "p < 0.0001"
gives a lower bound on d; "no statistic" only a direction. Not run: the
folder lacks a condition; too few seeds: fewer than 2 live (paired: in
every condition of the contrast).
"""


def _points(accuracy: float) -> str:
  """An accuracy difference in points, e.g. '1 point', '1.5 points'."""
  points = 100 * accuracy
  return f'{points:g} point' + ('' if points == 1 else 's')


def _metrics_note(margins: claims_lib.Margins) -> str:
  p = claims_lib.PRIMARY_METRICS
  return (
      f'Declared metrics (fixed in the code before the full-size runs): '
      f'entropy is `{p["entropy"]}`, the entropy over the real tokens '
      'divided by ln of their number; sparsity is '
      f'`{p["sparsity"]}`, the fraction of real weights below a tenth of '
      'the uniform weight 1/n, a length-invariant reading of the blog\'s '
      '"near zero" (it states no threshold); head correlation is the mean '
      'pairwise correlation of heads\' maps (what the blog plots). The '
      'absolute figures (entropy in nats, weight < 0.01) are beside them '
      'below; the 0.01 threshold was picked after seeing earlier runs, and '
      'a uniform weight 1/n falls below it once n > 100. Margins: accuracy '
      f'within +/-{margins.accuracy:g} ({_points(margins.accuracy)}), '
      f'attention metrics within |d| < {margins.d:g} (the blog\'s 15-seed '
      't-test has 80% power only from d = 1.06, so its "no effect" cannot '
      'mean more).')


def _family_note(alpha: float, design: str) -> str:
  m = claims_lib.FAMILY_SIZE
  paired = (' Paired, d is standardised by the SD of the per-seed '
            'contrast (equal to Cohen\'s d when seeds share no variance '
            'across conditions; `rho` in claims.csv is their correlation, '
            'which inflates d by 1/sqrt(1 - rho)).'
            if design == 'paired' else '')
  return (
      f'**One declared family**: the {m} claims below, fixed in the code '
      f'(`jax_attnshare/report/claims.py`), Bonferroni-corrected together '
      f'at alpha = {alpha:g} (p_family = min(1, {m} p)) whatever this '
      'folder holds: a verdict depends only on the claim\'s own '
      'conditions, so other runs in the folder never change it. Intervals '
      f'are adjusted alike: {100 * (1 - alpha / m):.2f}% for '
      f'directions, {100 * (1 - 2 * alpha / m):.2f}% for no-effect claims '
      '(the TOST interval, drawn against the margin). Everything outside '
      'this section and the next is exploratory.' + paired)


def _effect(r: pd.Series) -> str:
  if r['verdict'] in (claims_lib.NOT_RUN, claims_lib.TOO_FEW):
    return f'{r["verdict"]}: {r["note"]}'
  d = (f'd = {r["d"]:.2f} [{r["d_ci_low"]:.2f}, {r["d_ci_high"]:.2f}]')
  if r['metric'] == claims_lib.PRIMARY_METRICS['accuracy']:
    return (f'{100 * r["estimate"]:+.2f} points [{100 * r["ci_low"]:+.2f}, '
            f'{100 * r["ci_high"]:+.2f}] vs +/-{100 * r["margin"]:g}; '
            f'{_p(r["p_family"], "p_family")}')
  margin = f' vs +/-{r["margin"]:g}' if r['direction'] == 0 else ''
  return (f'{r["estimate"]:+.3g}; {d}{margin}; '
          f'{_p(r["p_family"], "p_family")}')


def _blog_d(r: pd.Series) -> str:
  if r['direction'] == 0:
    return 'no effect'
  if math.isfinite(r['blog_d']):
    return f'{r["direction"] * r["blog_d"]:+.2f}'
  if r['blog_d_min'] > 0:
    sign = '>' if r['direction'] > 0 else '<'
    return f'{sign} {r["direction"] * r["blog_d_min"]:+.2f}'
  return 'direction only'


def _bold(verdict: str) -> str:
  return (f'**{verdict}**' if verdict in (
      claims_lib.SUPPORTED, claims_lib.EQUIVALENT, claims_lib.REPLICATED)
          else verdict)


def _gate_lines(sets: Sequence[ClaimSet]) -> list[str]:
  lines = []
  for s in sets:
    g = s.gate
    if g is None:
      continue
    if g['n'] < 2:
      lines.append(f'> **Sanity gate ({s.label}, blog regime):** `none` '
                   f'reached {g["mean"]:.3f} test accuracy with {g["n"]} '
                   "live seed; the blog's figures show about "
                   f'{claims_lib.BLOG_ACCURACY}.')
      continue
    inside = g['ci_low'] <= claims_lib.BLOG_ACCURACY <= g['ci_high']
    lines.append(
        f'> **Sanity gate ({s.label}, blog regime):** `none` reaches test '
        f'accuracy {g["mean"]:.3f} [{g["ci_low"]:.3f}, {g["ci_high"]:.3f}] '
        f'(mean, 95% CI over {g["n"]} seeds) after {s.steps} steps, '
        f'{abs(g["gap"]):.3f} {"above" if g["gap"] > 0 else "below"} the '
        f"blog's {claims_lib.BLOG_ACCURACY} (its figures, 15 epochs): the "
        f'interval {"contains" if inside else "excludes"} it.'
        + ('' if inside else ' Until the blog regime reaches the blog\'s '
           'accuracy, its verdicts describe a different model.'))
  return lines + ([''] if lines else [])


def claims_section(sets: Sequence[ClaimSet], alpha: float, design: str,
                   margins: claims_lib.Margins) -> list[str]:
  """The confirmatory section: each claim against each set of runs."""
  header = ['claim', 'exp.', 'contrast [metric]', 'the blog (figures; '
            'statistics)', "blog's d"]
  for s in sets:
    header += [f'{s.label}: effect [adjusted CI]', f'{s.label}: verdict',
               f'{s.label}: vs the blog']
  rows = []
  for i, claim in enumerate(claims_lib.CLAIMS):
    first = sets[0].frame.iloc[i]
    row = [claim.text, first['experiments'],
           f'{claim.contrast_text} [`{claim.metric}`]', claim.blog,
           _blog_d(first)]
    for s in sets:
      r = s.frame.iloc[i]
      row += [_effect(r), _bold(r['verdict']), _bold(r['vs_blog'])]
    rows.append(row)
  every = [['Accuracy is the same in every condition', str(experiment),
            ', '.join(conditions), blog, 'no effect']
           for experiment, conditions, blog in claims_lib.EVERY_CONDITION]
  for s in sets:
    for row, e in zip(every, claims_lib.every_condition(s.frame)):
      untested = (f' ({", ".join(e["untested"])} untested)'
                  if e['untested'] and e['verdict'] != claims_lib.NOT_RUN
                  else '')
      row += ['every accuracy claim of the experiment',
              _bold(e['verdict']) + untested, _bold(e['vs_blog'])]
  every_header = ['blog statement', 'exp.', 'conditions', 'the blog',
                  "blog's d"] + header[5:]
  return [
      _family_note(alpha, design), '', _metrics_note(margins), '',
      *table(header, rows), '',
      'The blog\'s "accuracy is the same in every condition", per '
      'experiment: equivalent when every accuracy claim of its conditions '
      'is (an intersection-union test: no further correction).', '',
      *table(every_header, every), '', _VERDICT_WORDS]


def _mde_cell(value: float, kind: str) -> str:
  if not math.isfinite(value):
    return 'n/a'
  if kind == 'no effect (accuracy)':
    return f'{100 * value:.2f} points'
  return f'{value:.2f}'


def _mde_lines(mde: pd.DataFrame, seeds: Sequence[int]) -> list[str]:
  """The planning table (planning.mde_table()'s rows)."""
  header = ['claim', 'kind', "blog's d"]
  for n in seeds:
    header += [f'MDE, {n} seeds', f'power, {n} seeds']
  rows = []
  for _, r in mde.iterrows():
    blog = ('n/a' if r['kind'] != 'direction' else
            f'{r["blog_d"]:.2f}' if math.isfinite(r['blog_d']) else
            f'> {r["blog_d_min"]:.2f}' if r['blog_d_min'] > 0 else
            'direction only')
    row = [r['claim'], r['kind'], blog]
    for n in seeds:
      power = r[f'power_{n}']
      row += [_mde_cell(r[f'mde_{n}'], r['kind']),
              'n/a' if not math.isfinite(power) else f'{power:.2f}']
    rows.append(row)
  return table(header, rows)


def _planning(mde: pd.DataFrame, seeds: Sequence[int], alpha: float,
              design: str, margins: claims_lib.Margins) -> list[str]:
  return [
      'Computed from the number of seeds, the design '
      f'({design}), the family\'s level alpha/m = {alpha:g}/'
      f'{claims_lib.FAMILY_SIZE} (Bonferroni) and a target power of '
      f'{planning.TARGET_POWER:g}, before and without the data. A '
      'direction\'s MDE is the smallest |d| detected with that power; its '
      'power is at the blog\'s d (not at the observed effect, which would '
      'only restate p). A no-effect claim\'s MDE is the smallest margin '
      'its TOST proves with that power when the truth is 0, and its power '
      f'is at the declared margin (accuracy: at a seed SD of '
      f'{planning.ACCURACY_SD}, the blog regime\'s in the 5-seed :cpu '
      f'study; margin {margins.accuracy:g}). Paired figures assume seeds '
      'share no variance across conditions. A claim whose blog d is below '
      'the MDE cannot be confirmed with that many seeds.', '',
      *_mde_lines(mde, seeds)]


def _factorial(final: pd.DataFrame, conditions: Sequence[str],
               effects: pd.DataFrame, design: str,
               thresholds: Mapping[str, str]) -> list[str]:
  metrics = [m for m in claims_lib.PRIMARY_METRICS.values()
             if (final['metric'] == m).any()]
  overall = final[final['layer'].isna()]
  rows = []
  for c in factorial.FACTORS:
    if c not in conditions:
      continue
    cells = []
    for m in metrics:
      x = overall.loc[(overall['metric'] == m)
                      & (overall['condition'] == c), 'value']
      cells.append(f'{x.mean():.4g} ± {x.std(ddof=1):.2g} ({len(x)})'
                   if len(x) else 'n/a')
    rows.append([f'`{c}`', *('yes' if f else '' for f in
                             factorial.FACTORS[c]), *cells])
  lines = [
      'Exploratory. One row per condition: the K, Q, V it shares and mean '
      '± SD (live seeds) of the declared metrics.', '',
      *table(['condition', 'K', 'Q', 'V',
              *(figures.metric_label(m, thresholds) for m in metrics)],
             rows), '']
  absent = factorial.missing(conditions)
  if absent:
    return lines + [
        f'Main effects and interactions need all 8 conditions; this folder '
        f'lacks {", ".join(f"`{c}`" for c in absent)}.']
  effect_rows = [
      (figures.metric_label(r['metric'], thresholds), r['term'],
       f'{r["estimate"]:+.3g} [{r["ci_low"]:+.3g}, {r["ci_high"]:+.3g}]',
       _num(r['df'], 3), _p(r['p']))
      for _, r in effects.iterrows()]
  blocks = ('seeds as blocks (`value ~ K * Q * V + C(seed)`, the seeds live '
            'in all 8 conditions)' if design == 'paired' else
            'conditions as independent samples (`value ~ K * Q * V`)')
  return lines + [
      f'OLS with factors coded -1/2, +1/2 and {blocks}: a main effect is '
      'shared minus not shared, averaged over the other two factors; K x Q '
      'is the K effect with Q shared minus without; K x Q x V is the K x Q '
      'interaction with V shared minus without. Unadjusted 95% CIs and p.',
      '', *table(('metric', 'term', 'estimate [95% CI]', 'df', 'p'),
                 effect_rows)]


def _absolute(rows: pd.DataFrame, thresholds: Mapping[str, str]) -> list[str]:
  if rows.empty:
    return ['No entropy or sparsity claim could be tested on the absolute '
            'metrics.']
  return [
      'Exploratory: the entropy and sparsity claims on the absolute '
      'metrics, with unadjusted 95% intervals; not comparable across '
      'lengths.', '',
      *table(('claim', 'metric', 'estimate', "d [95% CI]", 'p'), [
          (r['claim'], figures.metric_label(r['metric'], thresholds),
           f'{r["estimate"]:+.3g}',
           f'{r["d"]:.2f} [{r["d_ci_low"]:.2f}, {r["d_ci_high"]:.2f}]',
           _p(r['p'])) for _, r in rows.iterrows()])]


def _design_text(design: str, mode: str | None) -> str:
  mode_text = {
      'shared': 'seed mode `shared`: every replica saw the same data '
                'order, so every comparison is conditional on that one '
                'order and the spread over seeds is initialisation only',
      'per_seed': 'seed mode `per_seed`: replica i also has its own data '
                  'order, the same in every condition'}.get(
                      mode, f'seed mode {mode!r}')
  if design == 'paired':
    return ('Design: **paired by seed**. Replica i has the same seed in '
            f'every condition ({mode_text}); seeds are blocks, and every '
            'contrast is taken within a seed.')
  return ('Design: analysed as **independent samples** (as the blog did, '
          f'`--design=independent`), although replica i has the same seed '
          f'in every condition ({mode_text}).')

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
    model = run.config.get('model', {})
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
                 '`config.model.embedding_init_std`) to fix it; see '
                 'docs/layer0_attention.md.')
      lines.append(line)
  return lines




def write_report(path: pathlib.Path, *, runs_dir: pathlib.Path,
                 baseline: str, alpha: float, design: str,
                 margins: claims_lib.Margins,
                 included: Sequence[runs_lib.Run],
                 excluded: Sequence[tuple[runs_lib.Run, str]],
                 table: pd.DataFrame, omni: pd.DataFrame,
                 final: pd.DataFrame, claim_sets: Sequence[ClaimSet],
                 absolute: pd.DataFrame, effects: pd.DataFrame,
                 mde: pd.DataFrame, mde_seeds: Sequence[int],
                 figure_files: Sequence[tuple[str, str]],
                 dropped: Mapping[str, int],
                 unreadable_maps: Mapping[str, str],
                 few_evaluations: Mapping[str, Sequence[int]]) -> None:
  """Writes the markdown report; figure_files are (caption, file name).

  claim_sets: these runs' claims first, then those of --compare_runs.
  absolute: claims.absolute_contrasts(); effects: factorial.analyze();
  mde: planning.mde_table() at mde_seeds. unreadable_maps: {condition:
  why} of the included runs whose attention maps could not be read.
  few_evaluations: {condition: evaluation steps} of the runs evaluated
  fewer than twice.
  """
  base = included[0].summary
  thresholds = base.get('sparsity_thresholds', {})
  conditions = [r.condition for r in included]
  sharing = {r.condition: r.summary.get('sharing', '') for r in included}
  overall = table[table['layer'].isna()]
  forest = [name for _, name in figure_files if name == 'forest.png']
  lines = [
      f'# Attention-sharing comparison: `{runs_dir}`', '',
      f'{len(included)} conditions (the baseline `{baseline}` included); '
      f'alpha = {alpha}. {_design_text(design, base.get("seed_mode"))} '
      'Generated by `python -m jax_attnshare.report`.', '',
      *_gate_lines(claim_sets),
      *_evaluation_warning(few_evaluations, len(included)),
      '## Claims of the blog (confirmatory)', '',
      *claims_section(claim_sets, alpha, design, margins), '',
      *([f'![The claims: effects and adjusted intervals]({forest[0]})', '']
        if forest else []),
      '## What these seeds can detect (planning, before the data)', '',
      *_planning(mde, mde_seeds, alpha, design, margins), '',
      '## The K x Q x V factorial', '',
      *_factorial(final, conditions, effects, design, thresholds), '',
      '## Conditions', '', *_conditions(included), '',
      '## Configuration', '', *_configuration(included), '',
      '## Seeds', '',
      f'Seeds {base["seeds"]} ({len(base["seeds"])} per condition), '
      f'{base.get("num_train_steps")} training steps. '
      f'{_design_text(design, base.get("seed_mode"))}', '',
      '## Excluded runs and diverged replicas', '',
      *_exclusions(included, excluded, dropped, unreadable_maps), '',
      '## Exploratory comparisons', '', _EXPLORATORY,
      *_omnibus_rows(omni, thresholds), '',
      'Mean ± SD over seeds; marks compare with the baseline, Holm within '
      'the metric: * p_holm < 0.05, ** < 0.01, *** < 0.001.', '',
      *_summary_rows(overall, conditions, thresholds), '',
      *_contrast_rows(overall, thresholds), '',
      *_absolute(absolute, thresholds), '',
      '### Exploratory findings', '',
      *_findings(table, omni, baseline, alpha, sharing, thresholds),
      *_uniform_layers(final, included), '',
      '## Figures', '']
  for caption, name in figure_files:
    if name not in forest:  # drawn in the Claims section
      lines += [f'### {caption}', '', f'![{caption}]({name})', '']
  lines += ['## Tables', '',
            '`claims.csv` (the family: every claim, its test, interval and '
            'verdicts, per set of runs), `mde.csv` (planning), '
            '`factorial.csv` (factorial effects), `summary_table.csv` '
            '(overall, exploratory), `per_layer.csv`, `anova.csv` (omnibus '
            'tests, overall and per layer), `tidy.csv` (every value: '
            'condition, seed, step, metric, layer).', '']
  path.write_text('\n'.join(lines))
