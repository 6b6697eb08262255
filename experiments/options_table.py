"""Table of the runs of experiments/options.sh: quality beside cost.

  python experiments/options_table.py runs/options

Reads every OUT/<task>/<option>/summary.json and prints one markdown row per
run: its config, sharing, parameters (total, attention), the test metric as
mean ± sd over seeds (accuracy for classifiers, perplexity for the causal
LM), attention FLOPs and K/V cache per token.
Unfinished runs are listed as such; diverged replicas are left out of the
mean and counted. Imports no JAX.
"""

import json
import pathlib
import sys

import numpy as np

METRIC = {'classify': ('test_accuracy', 'accuracy', '{:.3f}'),
          'lm': ('test_perplexity', 'perplexity', '{:.1f}')}


def row(task: str, path: pathlib.Path) -> str:
  summary = json.loads((path / 'summary.json').read_text())
  key, _, fmt = METRIC[task]
  per_seed = summary['per_seed']
  values = [s[key] for s in per_seed if not s.get('diverged')]
  if summary['finished'] and values:
    quality = (f'{fmt.format(np.mean(values))} ± '
               f'{fmt.format(np.std(values, ddof=1) if len(values) > 1 else 0)}'
               f' (n={len(values)})')
  else:
    quality = (f'unfinished ({summary["completed_steps"]} of '
               f'{summary["num_train_steps"]} steps)')
  params, cost = per_seed[0]['params'], summary['cost']
  cache = cost.get('kv_cache_per_token')
  return (f'| {path.name} | `{summary["config_name"]}` | {summary["sharing"]} '
          f'| {params["total"]:,} | {params["attention"]:,} | {quality} | '
          f'{cost["attention_flops_per_token"]:,} | '
          f'{"—" if cache is None else f"{cache:,}"} |')


def main(out: str) -> int:
  if not pathlib.Path(out).is_dir():
    print(f'error: {out} is not a folder; give the OUT folder of '
          'experiments/options.sh.', file=sys.stderr)
    return 1
  tables = 0
  for task, (_, name, _) in METRIC.items():
    runs = sorted(p.parent for p in pathlib.Path(out, task).glob(
        '*/summary.json'))
    if not runs:
      continue
    tables += 1
    print(f'\n{task}: test {name}, mean ± sd over seeds\n')
    print(f'| run | config | sharing | params | attention params | {name} | '
          'attention FLOPs/token | K/V cache/token |')
    print('|---|---|---|---:|---:|---:|---:|---:|')
    for path in runs:
      print(row(task, path))
  if not tables:
    print(f'error: no runs in {out}: expected {out}/<task>/<option>/'
          f'summary.json with <task> one of {sorted(METRIC)}.',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  sys.exit(main(sys.argv[1]))
