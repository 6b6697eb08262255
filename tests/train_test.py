"""End to end: a tiny run writes its workdir, resumes exactly, refuses others."""

import glob
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator

from jax_attnshare import checkpoint
from jax_attnshare import configs
from jax_attnshare import data
from jax_attnshare import model as model_lib
from jax_attnshare import steps as steps_lib
from jax_attnshare import train
from jax_attnshare import workdir as workdir_lib
from jax_attnshare.report import build

# Tiny models: compile time dominates, so let XLA skip most optimizations.
jax.config.update('jax_disable_most_optimizations', True)


def _config(condition='kv', arg='tiny'):
  return configs.classifier_config(condition, arg)


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
  # Where the time went: every phase took some.
  assert set(summary['phase_s']) == set(train.PHASES)
  assert all(s > 0 for s in summary['phase_s'].values()), summary['phase_s']
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


# The blog regime: 512 words in length buckets, calls cut where they change.
@pytest.mark.parametrize('arg', [
    'tiny', pytest.param('tiny,regime=blog', marks=pytest.mark.slow)])
def test_crash_then_rerun_equals_uninterrupted(tmp_path, fake_texts,
                                               monkeypatch, arg):
  straight = train.train_and_evaluate(_config(arg=arg), str(tmp_path / 'a'),
                                     read_texts=fake_texts)
  assert 0 < straight['train_batches']['padding_share'] < 1
  workdir = str(tmp_path / 'b')
  real_rows = data.TrainBatches.rows

  def crash_at_step_5(self, step):
    if step == 4:  # 0-based: the fifth update, after the step-3 checkpoint.
      raise KeyboardInterrupt
    return real_rows(self, step)

  monkeypatch.setattr(data.TrainBatches, 'rows', crash_at_step_5)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(_config(arg=arg), workdir, read_texts=fake_texts)
  crashed = _summary(workdir)
  assert not crashed['finished'] and crashed['completed_steps'] == 3
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '3'))

  monkeypatch.setattr(data.TrainBatches, 'rows', real_rows)
  # The seeds one at a time in each step would sum in another order: that
  # is another experiment, refused before anything runs.
  chunked = _config(arg=arg)
  chunked.seed_chunk = 1
  with pytest.raises(ValueError, match='config.seed_chunk: 0 in the workdir'):
    train.train_and_evaluate(chunked, workdir, read_texts=fake_texts)
  resumed = train.train_and_evaluate(_config(arg=arg), workdir,
                                     read_texts=fake_texts)
  assert resumed['finished']
  _assert_same_results(resumed, straight)
  assert resumed['train_batches'] == straight['train_batches']
  # Rerunning a finished workdir changes nothing.
  again = train.train_and_evaluate(_config(arg=arg), workdir,
                                   read_texts=fake_texts)
  assert again['history'] == resumed['history']


def _bucketed(steps_per_call):
  """A tiny unmasked model and batches in buckets 4, 8, 16, runs of 2."""
  config = _config(arg='tiny,regime=blog')
  config.steps_per_call = steps_per_call
  config.data.update(max_length=16, bucket_lengths='4,8,16')
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, 50, (64, 16)).astype(np.int32)
  tokens[np.arange(16)[None] >= rng.integers(1, 17, (64, 1))] = data.PAD_ID
  split = data.Split(tokens, rng.integers(0, 2, 64).astype(np.int32))
  batches = data.TrainBatches(split, config.batch_size, 0, [0, 1],
                              data.bucket_lengths(config.data),
                              data.bucket_run_steps(config.data))
  mcfg = train.check_config(config)
  steps = steps_lib.SeedSteps(
      model_lib.make_model(mcfg),
      steps_lib.make_optimizer(config.opt, config.num_train_steps), 16, 2,
      True, steps_per_call=steps_per_call)
  return config, batches, steps, split


def test_calls_never_cross_a_bucket_change_and_do_not_change_results():
  finals = []
  for steps_per_call in (1, 5):
    config, batches, steps, split = _bucketed(steps_per_call)
    state, window = steps.init(steps_lib.seed_keys([0, 1])), steps.zero_window()
    resident, step, calls = steps.put_split(split), 0, []
    while step < 20:
      end = train.call_end(config, batches, step, 20)
      calls.append((step, end))
      rows = steps.put_rows(np.stack([batches.rows(s)
                                      for s in range(step, end)]))
      state, window = steps.train_steps(state, window, resident, rows,
                                        end - step,
                                        length=batches.length(step))
      step = end
    finals.append(jax.device_get((state.params, state.opt_state, window)))
    lengths = [batches.length(s) for s in range(20)]
    for start, end in calls:
      assert 1 <= end - start <= steps_per_call
      assert len(set(lengths[start:end])) == 1
  assert len(set(lengths)) == 3
  # Calls of 5 end early where the bucket changes, and only there.
  assert any(end - start < 5 and lengths[end] != lengths[end - 1]
             for start, end in calls if end < 20)
  for got, want in zip(*map(jax.tree.leaves, finals)):
    np.testing.assert_array_equal(got, want)


def _assert_same_results(summary, expected):
  for key in ('history', 'per_seed'):
    np.testing.assert_allclose(numbers(summary[key]),
                               numbers(expected[key]), rtol=1e-5, atol=1e-6)


def numbers(tree):
  if isinstance(tree, dict):
    return [x for k in sorted(tree) for x in numbers(tree[k])]
  if isinstance(tree, list):
    return [x for v in tree for x in numbers(v)]
  if isinstance(tree, bool) or tree is None:
    return []
  return [float(tree)]


_FOUR_DEVICE_SCRIPT = '''
import sys
import time
import jax
jax.config.update("jax_disable_most_optimizations", True)
assert jax.device_count() == 4
sys.path.insert(0, sys.argv[1])
from conftest import read_fake_texts
from jax_attnshare import configs, train
config = configs.classifier_config("kv", "tiny")
config.num_seeds = 3
config.data.cache_dir = sys.argv[3]
first = train.train_and_evaluate(config, sys.argv[2], read_texts=read_fake_texts)
# Saved as the devices hold it: 4 replicas (1 padding), one per device, no
# device holding them all.
from etils import epath
import orbax.checkpoint as ocp
stored = ocp.StandardCheckpointHandler().metadata(
    epath.Path(sys.argv[2]) / "checkpoints" / "6" / "state")
for leaf in jax.tree.leaves(stored.tree):
  assert leaf.shape[0] == 4, leaf
  assert tuple(leaf.sharding.partition_spec)[:1] == ("seed",), leaf.sharding
# Restores into the padded layout.
again = train.train_and_evaluate(config, sys.argv[2], read_texts=read_fake_texts)
assert again["history"] == first["history"]
'''


def test_padded_seeds_over_devices_equal_one_device(tmp_path, fake_texts,
                                                    prepared_data_folder):
  """3 seeds on 4 devices (1 padding replica) give the 1-device results."""
  config = _config()
  config.num_seeds = 3
  expected = train.train_and_evaluate(config, str(tmp_path / 'one'),
                                      read_texts=fake_texts)
  workdir = str(tmp_path / 'four')
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  result = subprocess.run(
      [sys.executable, '-c', _FOUR_DEVICE_SCRIPT, os.path.dirname(__file__),
       workdir, prepared_data_folder], env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = _summary(workdir)
  assert [e['seed'] for e in summary['per_seed']] == [0, 1, 2]
  _assert_same_results(summary, expected)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['seed_layout'] == {'devices': 4, 'seeds_per_device': 1,
                                           'padding': 1}
  maps = np.load(os.path.join(workdir, 'attention_maps.npz'))
  assert maps['probs'].shape[0] == 3


def _truncate_state_files(step_dir):
  paths = [p for p in glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'),
                                recursive=True) if os.path.isfile(p)]
  assert paths
  for path in paths:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def test_corrupt_latest_checkpoint_resumes_from_the_one_before(tmp_path,
                                                               fake_texts):
  workdir = str(tmp_path / 'w')
  straight = train.train_and_evaluate(_config(), workdir,
                                     read_texts=fake_texts)
  checkpoints = os.path.join(workdir, 'checkpoints')
  _truncate_state_files(os.path.join(checkpoints, '6'))
  resumed = train.train_and_evaluate(_config(), workdir,
                                     read_texts=fake_texts)
  assert resumed['finished']
  _assert_same_results(resumed, straight)
  # Kept, not deleted; the new step 6 restores.
  assert os.path.isdir(os.path.join(checkpoints, '6.unrestorable'))
  again = train.train_and_evaluate(_config(), workdir, read_texts=fake_texts)
  assert again['history'] == resumed['history']

  for step in ('3', '6'):
    _truncate_state_files(os.path.join(checkpoints, step))
  before = sorted(glob.glob(os.path.join(checkpoints, '**'), recursive=True))
  with pytest.raises(train.ConfigError,
                     match=f'no checkpoint in {checkpoints} restores: step 6 '
                     r'\(ValueError: .*delete the step folders 3, 6 in it'):
    train.train_and_evaluate(_config(), workdir, read_texts=fake_texts)
  assert sorted(glob.glob(os.path.join(checkpoints, '**'),
                          recursive=True)) == before


def test_different_experiment_in_workdir_is_refused(tmp_path, fake_texts):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'config': json.loads(_config('k').to_json())}, f)
  # Trained: a workdir with nothing trained takes the new config instead.
  os.makedirs(os.path.join(workdir, 'checkpoints', '3'))
  with pytest.raises(ValueError, match='config.sharing.components'):
    train.train_and_evaluate(_config('kv'), workdir, read_texts=fake_texts)


@pytest.mark.parametrize('field,value,match', [
    ('stats_examples', 7, 'config.stats_batch_size'),
    ('num_seeds', 0, 'config.num_seeds'),
    ('seed', -1, r'config.seed must be in \[0, 2\*\*32 - config.num_seeds\]'),
    ('seed', 2**32 - 1, 'config.seed must be in'),
    ('opt.learning_rate', -1.0, 'config.opt.learning_rate must be a finite '
     'number > 0, got -1.0.'),
    ('opt.learning_rate', 0.0, 'config.opt.learning_rate'),
    ('opt.learning_rate', float('nan'), 'config.opt.learning_rate .* nan'),
    ('opt.learning_rate', float('inf'), 'config.opt.learning_rate .* inf'),
    ('opt.clip_norm', 0.0, 'config.opt.clip_norm must be a finite number > 0'),
    ('opt.clip_norm', -1.0, 'config.opt.clip_norm'),
    ('opt.b1', -0.1, r'config.opt.b1 must be in \[0, 1\), got -0.1.'),
    ('opt.b1', 1.0, 'config.opt.b1'),
    ('opt.b2', 1.0, 'config.opt.b2'),
    ('opt.b2', float('nan'), 'config.opt.b2'),
    ('opt.weight_decay', -0.01, 'config.opt.weight_decay must be a finite '
     'number >= 0'),
    ('model.num_classes', 0, 'config.model.num_classes must be >= 2 for the '
     'classifier, got 0.'),
    ('model.num_classes', 1, 'config.model.num_classes'),
    ('model.ffn_multiplier', 0, 'config.model.ffn_multiplier must be an int '
     '>= 1'),
    ('model.width', 0, 'config.model.width must be >= 1, got 0.'),
    ('model.layer_norm_eps', 0.0, 'config.model.layer_norm_eps'),
])
def test_bad_values_raise_one_line_before_anything_is_read_or_written(
    tmp_path, field, value, match):
  config = _config()
  *parents, name = field.split('.')
  node = config
  for parent in parents:
    node = node[parent]
  node[name] = value
  workdir = tmp_path / 'x'
  with pytest.raises(ValueError, match=match) as error:
    train.train_and_evaluate(config, str(workdir), read_texts=pytest.fail)
  assert '\n' not in str(error.value)
  assert not workdir.exists()


def test_zero_seeds_as_a_config_arg_is_refused_not_the_default():
  config = configs.load_config(
      os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs',
                   'kv_share.py:tiny,seeds=0'))
  with pytest.raises(ValueError, match='config.num_seeds must be >= 1, got '
                     '0.'):
    train.check_config(config)


def test_the_lm_has_no_classes_to_check():
  """num_classes is the classifier's: the LM (and a sentence encoder,
  built by posthoc.hf_bert) may leave it 0."""
  config = configs.lm_config('tiny')
  config.model.num_classes = 0
  train.check_config(config)


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


def test_exploding_loss_is_flagged_once_and_training_goes_on(caplog):
  exploded = {}
  chance = np.log(2)
  train.flag_exploding(np.array([0.7, 0.6, 0.7]), None, 10, exploded,
                       [4, 5, 6], chance)
  assert exploded == {}
  # x101 of the window before; over 10 x ln 2; x2 and NaN (diverged) are
  # not.
  train.flag_exploding(np.array([0.6 * 101, 7.0, 1.4]),
                       np.array([0.6, 0.6, 0.7]), 20, exploded, [4, 5, 6],
                       chance)
  train.flag_exploding(np.array([np.nan, 1e9, 1e9]),
                       np.array([0.6, 0.6, 0.7]), 30, exploded, [4, 5, 6],
                       chance)
  assert exploded == {0: 20, 1: 20, 2: 30}
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 3
  assert warnings[0].startswith('Replica 0 (seed 4): train loss 60.6 by step '
                                '20, 101 times the window before\'s 0.6')
  assert 'loss of a uniform prediction (0.693)' in warnings[1]


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


def test_diverged_replica_is_missing_and_the_report_leaves_it_out(
    tmp_path, fake_texts, monkeypatch):
  """Replica 1's parameters turn NaN after step 2 (injected: no learning
  rate tried at this size diverges some replicas and not others), and
  replica 0's grow a thousandfold, which blows its loss up."""
  real_init = steps_lib.SeedSteps.__init__

  def init_with_divergence(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    real_train_steps = self.train_steps

    def train_steps(state, *args, **kwargs):
      state, window = real_train_steps(state, *args, **kwargs)
      if int(jax.device_get(state.step)[0]) == 2:
        state = state.replace(params=jax.tree.map(
            lambda x: x.at[1].set(np.nan).at[0].multiply(1000.0),
            state.params))
      return state, window
    self.train_steps = train_steps

  runs = tmp_path / 'runs'
  normal = train.train_and_evaluate(_config('none'), str(runs / 'none'),
                                    read_texts=fake_texts)
  monkeypatch.setattr(steps_lib.SeedSteps, '__init__', init_with_divergence)
  summary = train.train_and_evaluate(_config('kv'), str(runs / 'kv'),
                                     read_texts=fake_texts)
  assert summary['finished']
  seed0, seed1 = summary['per_seed']
  assert not seed0['diverged'] and seed0['test_accuracy'] is not None
  assert seed0['loss_exploded_at_step'] == 3
  assert seed1['diverged'] and seed1['diverged_at_step'] == 3
  assert seed1['loss_exploded_at_step'] is None
  assert seed1['test_accuracy'] is None and seed1['test_loss'] is None
  assert all(v is None for v in seed1['attention']['entropy'])
  last = summary['history'][-1]
  assert last['test_accuracy'][1] is None
  assert last['test_accuracy'][0] == seed0['test_accuracy']
  assert 'over 1 seeds (1 diverged, left out)' in train.closing_line(
      summary, 'w')
  assert normal['finished']
  report = build.run_analysis(runs, tmp_path / 'report')
  text = report.read_text()
  assert 'kv' in text and 'diverged' in text
  tidy = pd.read_csv(tmp_path / 'report' / 'tidy.csv')
  kv_final = tidy[(tidy['condition'] == 'kv') & (tidy['source'] == 'final')]
  assert set(kv_final[~kv_final['diverged']]['seed']) == {0}


def test_a_workdir_held_by_a_live_run_is_refused_before_writing(
    tmp_path, fake_texts):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  holder = {'pid': os.getppid(), 'host': socket.gethostname(),
            'started': 'then'}
  (workdir / '.lock').write_text(json.dumps(holder))
  with pytest.raises(train.ConfigError,
                     match=f'in use by pid {os.getppid()} on host'):
    train.train_and_evaluate(_config(), str(workdir), read_texts=fake_texts)
  assert os.listdir(workdir) == ['.lock']


def test_corrected_vocab_size_reruns_in_the_same_workdir(tmp_path,
                                                        fake_texts):
  workdir = str(tmp_path / 'w')
  bad = _config()
  bad.data.vocab_size = 8
  with pytest.raises(train.ConfigError, match='config.data.vocab_size=8'):
    train.train_and_evaluate(bad, workdir, read_texts=fake_texts)
  # No config.json, which would make the folder a partial run in a report:
  # the tokenizer is trained with the prepared data, before the workdir.
  assert not os.path.exists(workdir)
  summary = train.train_and_evaluate(_config(), workdir,
                                     read_texts=fake_texts)
  assert summary['finished']


def _scalar_steps(logdir, tag):
  # As TensorBoard serves them (TF2 scalar summaries are tensor events).
  events = plugin_event_accumulator.EventAccumulator(logdir)
  events.Reload()
  return [e.step for e in events.Tensors(tag)]


def test_resumed_run_shows_each_step_once_in_tensorboard(tmp_path, fake_texts,
                                                         monkeypatch):
  config = _config()
  config.log_every_steps = 1
  workdir = str(tmp_path / 'w')
  real_rows = data.TrainBatches.rows

  def crash_at_step_5(self, step):
    if step == 4:  # After step 4's scalars; the checkpoint is step 3's.
      raise KeyboardInterrupt
    return real_rows(self, step)

  monkeypatch.setattr(data.TrainBatches, 'rows', crash_at_step_5)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, workdir, read_texts=fake_texts)
  seed_dir = os.path.join(workdir, 'tb', 'seed_00')
  assert _scalar_steps(seed_dir, 'train/loss') == [1, 2, 3, 4]
  monkeypatch.setattr(data.TrainBatches, 'rows', real_rows)
  train.train_and_evaluate(config, workdir, read_texts=fake_texts)
  for run, tag in (('seed_00', 'train/loss'), ('agg', 'train/loss/mean')):
    assert _scalar_steps(os.path.join(workdir, 'tb', run), tag) == [
        1, 2, 3, 4, 5, 6]
  assert _scalar_steps(seed_dir, 'test/accuracy') == [3, 6]


def test_summary_says_finished_only_after_the_attention_maps(
    tmp_path, fake_texts, monkeypatch):
  workdir = str(tmp_path / 'w')

  def crash(*args, **kwargs):
    del args, kwargs
    raise OSError('disk full')

  monkeypatch.setattr(workdir_lib, 'write_attention_maps', crash)
  with pytest.raises(OSError, match='disk full'):
    train.train_and_evaluate(_config(), workdir, read_texts=fake_texts)
  assert not _summary(workdir)['finished']


def test_versions_say_none_for_a_package_that_is_not_installed(monkeypatch):
  """config.json records the versions; clu may be missing (no TensorFlow)."""
  version = importlib.metadata.version

  def without_clu(name):
    if name == 'clu':
      raise importlib.metadata.PackageNotFoundError(name)
    return version(name)

  monkeypatch.setattr(importlib.metadata, 'version', without_clu)
  versions = train._versions()
  assert versions['clu'] is None
  assert versions['jax'] == jax.__version__


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """The summary of an uninterrupted tiny kv run."""
  from conftest import read_fake_texts  # pylint: disable=g-import-not-at-top
  return train.train_and_evaluate(
      _config(), str(tmp_path_factory.mktemp('straight') / 'kv'),
      read_texts=read_fake_texts)


@pytest.mark.parametrize('when', ['after', 'before'])
def test_a_kill_around_the_last_summary_leaves_no_finished_run(
    tmp_path, fake_texts, monkeypatch, straight_run, when):
  """Killed (simulated) right after the last step's summary is written, or
  right before (the final checkpoint has committed): summary.json does not
  say finished, and a rerun finishes the run as if never stopped."""
  workdir = str(tmp_path / 'w')
  write_summary = workdir_lib.write_summary

  def killed(folder, value):
    if value['completed_steps'] == 6 and when == 'after':
      write_summary(folder, value)
    if value['completed_steps'] == 6:
      raise KeyboardInterrupt
    write_summary(folder, value)

  monkeypatch.setattr(workdir_lib, 'write_summary', killed)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(_config(), workdir, read_texts=fake_texts)
  on_disk = _summary(workdir)
  assert not on_disk['finished']
  assert on_disk['completed_steps'] == (6 if when == 'after' else 3)
  assert os.path.exists(os.path.join(workdir, 'checkpoints', '6',
                                     'sha256sums.json'))
  monkeypatch.setattr(workdir_lib, 'write_summary', write_summary)
  resumed = train.train_and_evaluate(_config(), workdir,
                                     read_texts=fake_texts)
  assert resumed == _summary(workdir) and resumed['finished']
  for key in ('history', 'per_seed'):
    assert numbers(resumed[key]) == numbers(straight_run[key]), key


def test_replicas_restored_at_different_steps_are_refused(
    tmp_path, fake_texts, monkeypatch):
  """The first step is read from every replica, not replica 0 alone."""
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(_config(), workdir, read_texts=fake_texts)
  restore = checkpoint.Checkpointer.restore

  def skewed(self, *args, **kwargs):
    state, meta = restore(self, *args, **kwargs)
    return state.replace(step=state.step.at[1].add(1)), meta

  monkeypatch.setattr(checkpoint.Checkpointer, 'restore', skewed)
  with pytest.raises(train.ConfigError,
                     match=r'holds replicas at different steps \[6, 7\]'):
    train.train_and_evaluate(_config(), workdir, read_texts=fake_texts)


def test_a_window_is_timed_until_its_steps_have_run(tmp_path, fake_texts,
                                                    monkeypatch):
  """Steps are dispatched without waiting; a window's steps/s must include
  the wait for them, here 0.5 s that each fetch of a window's sums is made
  to take: at most 3 steps / 0.5 s, though the dispatch takes milliseconds
  once the 3-step program has compiled (windows 3 and 4)."""
  config = _config()
  config.num_train_steps = 12
  config.log_every_steps = config.steps_per_call = 3
  config.eval_every_steps = config.ckpt_every_steps = 12
  fetch, info = train.distributed.fetch, train.logging.info
  steps_per_s = []

  def slow_fetch(tree):
    if isinstance(tree, dict) and 'loss' in tree:  # A window's sums.
      time.sleep(0.5)
    return fetch(tree)

  def logged(message, *args):
    if str(message).startswith('step %d/%d: train loss'):
      steps_per_s.append(args[5])
    info(message, *args)

  monkeypatch.setattr(train.distributed, 'fetch', slow_fetch)
  monkeypatch.setattr(train.logging, 'info', logged)
  train.train_and_evaluate(config, str(tmp_path / 'w'), read_texts=fake_texts)
  assert len(steps_per_s) == 4
  assert max(steps_per_s) <= 3 / 0.5, steps_per_s
