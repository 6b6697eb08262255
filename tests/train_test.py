"""End to end: a tiny run writes its workdir, resumes exactly, refuses others."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from jax_attnshare import configs
from jax_attnshare import data
from jax_attnshare import train

# Tiny models: compile time dominates, so let XLA skip most optimizations.
jax.config.update('jax_disable_most_optimizations', True)


def _config(condition='kv'):
  return configs.classifier_config(condition, 'tiny')


def _summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def test_tiny_run_writes_workdir(tmp_path, fake_texts):
  workdir = str(tmp_path / 'kv')
  summary = train.train_and_evaluate(_config(), workdir, 'kv_share.py:tiny',
                                    read_texts=fake_texts)
  assert summary == _summary(workdir)
  assert summary['finished'] and summary['completed_steps'] == 6
  assert summary['sharing'] == 'key,value@all'
  assert [h['step'] for h in summary['history']] == [3, 6]
  assert len(summary['per_seed']) == 2
  seed0 = summary['per_seed'][0]
  assert 0.0 <= seed0['test_accuracy'] <= 1.0
  assert set(seed0['params']) == {'total', 'attention', 'embeddings',
                                  'shared'}
  assert len(seed0['attention']['entropy']) == 2
  assert len(seed0['attention']['js_adjacent']) == 1
  with open(os.path.join(workdir, 'config.json')) as f:
    config_json = json.load(f)
  assert config_json['seeds'] == [0, 1]
  assert config_json['config']['sharing']['components'] == 'key,value'
  for run in ('agg', 'seed_00', 'seed_01'):
    assert glob.glob(os.path.join(workdir, 'tb', run, 'events.out.*'))
  maps = np.load(os.path.join(workdir, 'attention_maps.npz'))
  n = len(maps['pieces'])
  assert maps['probs'].shape == (2, 2, 2, n, n)
  assert os.path.exists(os.path.join(workdir, 'tokenizer', 'spm.model'))


def test_crash_then_rerun_equals_uninterrupted(tmp_path, fake_texts,
                                               monkeypatch):
  straight = train.train_and_evaluate(_config(), str(tmp_path / 'a'),
                                     read_texts=fake_texts)
  workdir = str(tmp_path / 'b')
  real_batch = data.TrainBatches.__call__

  def crash_at_step_5(self, step):
    if step == 4:  # 0-based: the fifth update, after the step-3 checkpoint.
      raise KeyboardInterrupt
    return real_batch(self, step)

  monkeypatch.setattr(data.TrainBatches, '__call__', crash_at_step_5)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(_config(), workdir, read_texts=fake_texts)
  crashed = _summary(workdir)
  assert not crashed['finished'] and crashed['completed_steps'] == 3
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '3'))

  monkeypatch.setattr(data.TrainBatches, '__call__', real_batch)
  # Resumed with the seeds one at a time in each step (an operational field:
  # the same replicas as the vmapped run).
  chunked = _config()
  chunked.seed_chunk = 1
  resumed = train.train_and_evaluate(chunked, workdir, read_texts=fake_texts)
  assert resumed['finished']
  for key in ('history', 'per_seed'):
    np.testing.assert_allclose(_numbers(resumed[key]),
                               _numbers(straight[key]), rtol=1e-5, atol=1e-6)
  # Rerunning a finished workdir changes nothing.
  again = train.train_and_evaluate(_config(), workdir, read_texts=fake_texts)
  assert again['history'] == resumed['history']


def _numbers(tree):
  if isinstance(tree, dict):
    return [x for k in sorted(tree) for x in _numbers(tree[k])]
  if isinstance(tree, list):
    return [x for v in tree for x in _numbers(v)]
  if isinstance(tree, bool) or tree is None:
    return []
  return [float(tree)]


def test_different_experiment_in_workdir_is_refused(tmp_path, fake_texts):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'config': json.loads(_config('k').to_json())}, f)
  with pytest.raises(ValueError, match='config.sharing.components'):
    train.train_and_evaluate(_config('kv'), workdir, read_texts=fake_texts)


@pytest.mark.parametrize('field,value,match', [
    ('stats_examples', 7, 'config.stats_batch_size'),
    ('num_seeds', 0, 'config.num_seeds'),
])
def test_bad_loop_fields_raise_before_anything_runs(tmp_path, field, value,
                                                    match):
  config = _config()
  config[field] = value
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path / 'x'),
                            read_texts=pytest.fail)


@pytest.mark.parametrize('field,value,match', [
    ('batch_size', 65, 'config.batch_size=65 exceeds the 64 training'),
    ('heatmap_example', 32, 'config.heatmap_example=32 must be below the 32'),
])
def test_check_on_the_data_fails_before_anything_is_written(
    tmp_path, fake_texts, field, value, match):
  config = _config()
  config[field] = value
  workdir = tmp_path / 'x'
  with pytest.raises(train.ConfigError, match=match):
    train.train_and_evaluate(config, str(workdir), read_texts=fake_texts)
  assert not workdir.exists()
  # The corrected command then runs in the same workdir.
  assert train.train_and_evaluate(_config(), str(workdir),
                                 read_texts=fake_texts)['finished']


def test_windows_end_at_evaluations_that_are_not_logging_steps(
    tmp_path, fake_texts):
  config = _config()
  config.num_train_steps = 7
  config.log_every_steps = 3
  config.eval_every_steps = 5
  config.ckpt_every_steps = 7
  summary = train.train_and_evaluate(config, str(tmp_path / 'w'),
                                    read_texts=fake_texts)
  assert [h['step'] for h in summary['history']] == [5, 7]
  assert train.evaluation_steps(config) == [5, 7]
  assert train.evaluation_steps(config, after=5) == [7]
  assert set(summary['phase_s']) == set(train.PHASES)
  line = train.closing_line(summary, 'WD')
  accuracies = np.array([s['test_accuracy'] for s in summary['per_seed']])
  assert line.startswith('Finished 7 steps in ')
  assert (f'accuracy {accuracies.mean():.4f} ± '
          f'{accuracies.std(ddof=1):.4f}') in line
  assert 'over 2 seeds' in line and 'WD/summary.json' in line


def test_bad_model_field_raises_before_data(tmp_path):
  config = _config()
  config.model.num_heads = 3
  with pytest.raises(ValueError, match='config.model.num_heads'):
    train.train_and_evaluate(config, str(tmp_path / 'x'),
                            read_texts=pytest.fail)


def test_nonfinite_replica_is_flagged_and_others_go_on():
  diverged = {}
  train.flag_nonfinite(np.array([0.5, np.nan, np.inf]), 10, diverged,
                      [4, 5, 6], halt=False)
  assert diverged == {1: 10, 2: 10}
  train.flag_nonfinite(np.array([np.nan, np.nan, np.inf]), 20, diverged,
                      [4, 5, 6], halt=False)
  assert diverged == {0: 20, 1: 10, 2: 10}
  with pytest.raises(FloatingPointError, match='seed 4'):
    train.flag_nonfinite(np.array([np.nan]), 1, {}, [4], halt=True)
