"""Reads a folder of run workdirs and decides which runs can be compared.

Policy: an empty folder, a folder without runs, a partial run (config.json
but no summary.json), a duplicated condition or a missing/unfinished baseline
is an error. A finished run that does not match the baseline (seeds, data
fingerprint, seed mode, step budget) or an unfinished run is excluded from
the comparison, logged and listed in the report.
"""

from collections.abc import Sequence
import dataclasses
import pathlib
from typing import Any

from absl import logging

from jax_attnshare import workdir as workdir_lib

_TRAIN_HINT = ('run python -m jax_attnshare.main --config=... '
               '--workdir={dir}/<condition> first')


class RunsError(ValueError):
  """The runs folder cannot be analysed as asked."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One workdir: its summary.json and config.json (may be empty)."""
  path: pathlib.Path
  summary: dict[str, Any]
  config: dict[str, Any]

  @property
  def condition(self) -> str:
    return self.summary['condition']

  @property
  def diverged_seeds(self) -> list[int]:
    return [r['seed'] for r in self.summary['per_seed'] if r.get('diverged')]


def load_runs(runs_dir: pathlib.Path) -> list[Run]:
  """Every immediate subfolder of runs_dir holding a summary.json."""
  if not runs_dir.is_dir():
    raise RunsError(f'--runs {runs_dir} is not a folder; expected one '
                    'workdir per sharing condition, e.g. '
                    f'{runs_dir}/none/{workdir_lib.SUMMARY_FILE}')
  runs = []
  for sub in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
    if not (sub / workdir_lib.SUMMARY_FILE).exists():
      if (sub / workdir_lib.CONFIG_FILE).exists():
        raise RunsError(
            f'{sub} has {workdir_lib.CONFIG_FILE} but no '
            f'{workdir_lib.SUMMARY_FILE}: the run is partial (still training '
            'or crashed). Finish it (rerun the same command to resume) or '
            'move it out of ' + str(runs_dir))
      continue
    try:
      runs.append(Run(sub, workdir_lib.read_summary(str(sub)),
                      workdir_lib.read_config(str(sub))))
    except ValueError as e:
      raise RunsError(str(e)) from e
  if not runs:
    raise RunsError(f'no {workdir_lib.SUMMARY_FILE} under {runs_dir}/*; '
                    + _TRAIN_HINT.format(dir=runs_dir))
  seen = {}
  for run in runs:
    if run.condition in seen:
      raise RunsError(f'condition {run.condition!r} appears twice: '
                      f'{seen[run.condition].path} and {run.path}')
    seen[run.condition] = run
  return runs


def _mismatch(run: Run, base: Run) -> str:
  """Why run cannot be compared with the baseline ('' if it can)."""
  s, b = run.summary, base.summary
  reasons = []
  if not s['finished']:
    reasons.append(f'unfinished: {s.get("completed_steps")} of '
                   f'{s.get("num_train_steps")} steps')
  if list(s['seeds']) != list(b['seeds']):
    reasons.append(f'seeds {s["seeds"]} ({len(s["seeds"])}) differ from the '
                   f'baseline\'s {b["seeds"]} ({len(b["seeds"])})')
  for key in ('data_fingerprint', 'seed_mode', 'num_train_steps'):
    if s.get(key) != b.get(key):
      reasons.append(f'{key} {s.get(key)!r} differs from the baseline\'s '
                     f'{b.get(key)!r}')
  return '; '.join(reasons)


def select(runs: Sequence[Run],
           baseline: str) -> tuple[list[Run], list[tuple[Run, str]]]:
  """(comparable runs, baseline first; [(excluded run, reason)])."""
  by_condition = {r.condition: r for r in runs}
  if baseline not in by_condition:
    folder = runs[0].path.parent
    raise RunsError(
        f'baseline condition {baseline!r} not found under {folder} (found: '
        f'{", ".join(sorted(by_condition))}); pass --baseline=<condition> or '
        + _TRAIN_HINT.format(dir=folder).replace('<condition>', baseline))
  base = by_condition[baseline]
  if not base.summary['finished']:
    raise RunsError(f'baseline run {base.path} is unfinished '
                    f'({base.summary.get("completed_steps")} of '
                    f'{base.summary.get("num_train_steps")} steps)')
  if len(base.diverged_seeds) == len(base.summary['per_seed']):
    raise RunsError(f'baseline run {base.path} has no live seed (all '
                    f'{len(base.diverged_seeds)} replicas diverged): nothing '
                    'can be compared with it; pass another --baseline=... '
                    'or rerun it')
  included, excluded = [base], []
  for run in runs:
    if run is base:
      continue
    reason = _mismatch(run, base)
    if reason:
      logging.warning('Excluding %s (%s): %s', run.path, run.condition,
                      reason)
      excluded.append((run, reason))
    else:
      included.append(run)
  for run in included:
    if run.diverged_seeds:
      logging.warning('%s: %d diverged replica(s) %s left out of the '
                      'statistics', run.condition, len(run.diverged_seeds),
                      run.diverged_seeds)
  return included, excluded


def read_attention_maps(
    included: Sequence[Run]) -> tuple[dict[str, dict[str, Any]],
                                      dict[str, str]]:
  """({condition: maps}, {condition: why its maps are unreadable}).

  A run without maps is in neither. An unreadable maps file costs the run
  its heatmap only: its statistics come from summary.json.
  """
  maps, unreadable = {}, {}
  for run in included:
    try:
      value = workdir_lib.read_attention_maps(str(run.path))
    except ValueError as e:
      logging.warning('%s: no attention heatmap: %s', run.condition, e)
      unreadable[run.condition] = str(e)
      continue
    if value is not None:
      maps[run.condition] = value
  return maps, unreadable
