"""The workdir's JSON files: config.json, summary.json and experiment identity.

A workdir belongs to one experiment. Its identity is the config minus the
fields that only change how a run is observed (logging, evaluation and
checkpoint intervals, where the data lives), so a rerun with the same config
resumes and a different experiment is refused before anything is compiled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Mapping

import numpy as np

FORMAT = 1
# Fields that do not change what is trained or measured.
OPERATIONAL_FIELDS = ('log_every_steps', 'eval_every_steps',
                      'ckpt_every_steps', 'max_to_keep', 'eval_batch_size',
                      'stats_batch_size', 'halt_on_nonfinite', 'seed_chunk')
DATA_LOCATION_FIELDS = ('data_dir', 'allow_download')


def config_dict(config: Any) -> dict:
  return json.loads(config.to_json()) if hasattr(config, 'to_json') else dict(
      config)


def _digest(value: Any) -> str:
  text = json.dumps(value, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity(config: dict) -> dict:
  ident = {k: v for k, v in config.items() if k not in OPERATIONAL_FIELDS}
  ident['data'] = {k: v for k, v in config['data'].items()
                   if k not in DATA_LOCATION_FIELDS}
  return ident


def data_fingerprint(config: dict) -> str:
  return _digest(identity(config)['data'])


def config_hash(config: dict) -> str:
  return _digest(identity(config))


def _diff(old: Any, new: Any, path: str = 'config') -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += _diff(old.get(k), new.get(k), f'{path}.{k}')
    return out
  return [] if old == new else [f'{path}: {old!r} in the workdir, {new!r} now']


def check_workdir(workdir: str, config: dict) -> None:
  """Raises if `workdir` holds a different experiment than `config`."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)['config']
  diffs = _diff(identity(old), identity(config))
  if diffs:
    raise ValueError(
        f'{workdir} holds a different experiment, so it cannot be resumed:\n  '
        + '\n  '.join(diffs)
        + '\nUse another --workdir, or delete this one to start over.')


def write_json(path: str, value: Any) -> None:
  """Writes atomically, so a crash never leaves half a file."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(jsonable(value), f, indent=1, allow_nan=False)
  os.replace(tmp, path)


def jsonable(value: Any) -> Any:
  """Arrays -> lists, non-finite floats -> None (strict JSON)."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    if value.ndim == 0:
      return jsonable(value[()])
    if value.dtype == np.float32:
      return [jsonable(v) for v in value]
    return jsonable(value.tolist())
  if isinstance(value, np.float32):
    # float32's shortest repr (0.772, not 0.7720000147819519): the digits
    # beyond it are noise of the conversion, not of the measurement.
    return jsonable(float(str(value)))
  if isinstance(value, (np.floating, float)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """np.savez, atomically (see write_json)."""
  tmp = f'{path}.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def write_config(workdir: str, config: dict, extra: Mapping[str, Any]) -> None:
  write_json(os.path.join(workdir, 'config.json'),
             {'config': config, 'config_hash': config_hash(config), **extra})


def summary(*, config: dict, config_name: str, sharing: str, seeds: list[int],
            params: dict, completed_steps: int, wall_time_s: float,
            history: list[dict], diverged: dict[int, int],
            final_attention: dict[str, np.ndarray] | None,
            sparsity_thresholds: Mapping[str, str],
            cost: dict | None = None,
            phase_s: Mapping[str, float] | None = None) -> dict:
  """The machine-readable summary of a run (see README, 'Workdir').

  `cost` is cost.summary's FLOP and KV-cache accounting of the model;
  `phase_s` the wall time spent in each phase of the loop.
  """
  last = history[-1] if history else {}
  # The task's test metrics: accuracy for the classifier; perplexity and
  # token accuracy for the LM.
  metrics = [k for k in last if k.startswith('test_')] or [
      'test_accuracy', 'test_loss']
  per_seed = []
  for i, seed in enumerate(seeds):
    entry = {'seed': seed, 'diverged': i in diverged,
             'diverged_at_step': diverged.get(i),
             **{k: last[k][i] if k in last else None for k in metrics},
             'params': params}
    if final_attention is not None:
      entry['attention'] = {k: v[i] for k, v in final_attention.items()}
    per_seed.append(entry)
  m = config['model']
  return {
      'format': FORMAT, 'condition': config['name'],
      'config_name': config_name, 'sharing': sharing, 'seeds': seeds,
      'seed_mode': config['data']['seed_mode'],
      'data_fingerprint': data_fingerprint(config),
      'num_train_steps': config['num_train_steps'],
      'completed_steps': completed_steps,
      'finished': completed_steps == config['num_train_steps'],
      'wall_time_s': wall_time_s, 'phase_s': dict(phase_s or {}),
      'num_layers': m['num_layers'],
      'num_heads': m['num_heads'],
      'sparsity_thresholds': dict(sparsity_thresholds), 'params': params,
      'cost': cost,
      'per_seed': per_seed, 'history': history}
