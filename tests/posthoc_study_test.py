"""The post-hoc study end to end, on a tiny BERT and a tiny trained run."""

import json
import os
import shutil
import socket
import subprocess
import sys
from unittest import mock
import zlib

import jax
import numpy as np
import pandas as pd
import pytest

from jax_attnshare import checkpoint
from jax_attnshare import configs
from jax_attnshare import data
from jax_attnshare import model as model_lib
from jax_attnshare import sharing
from jax_attnshare import steps as steps_lib
from jax_attnshare import train
from jax_attnshare import workdir as workdir_lib
from jax_attnshare.posthoc import config as posthoc_config
from jax_attnshare.posthoc import figures as posthoc_figures
from jax_attnshare.posthoc import methods
from jax_attnshare.posthoc import probe
from jax_attnshare.posthoc import sources
from jax_attnshare.posthoc import study
from conftest import read_fake_texts
import tiny_bert

jax.config.update('jax_numpy_rank_promotion', 'raise')
# End-to-end runs compile many small programs; optimizing them costs more
# than it saves.
jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYLLABLES = ['ka', 'lo', 'mi', 'zu', 're', 'ti', 'pon', 'gra', 'vel', 'su']
VOCAB = (['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'great', 'awful'] + SYLLABLES
         + [f'##{s}' for s in SYLLABLES])
METHODS = ['none', 'direct_share', 'direct_share', 'postshare', 'sa',
           'sa_finetune', 'lisa']


def _check_outputs(workdir, frame, expected=tuple(METHODS), folder=''):
  assert tuple(frame['method']) == expected
  base = frame.iloc[0]
  assert base['kept_pct'] == 100 and base['bytes_saved'] == 0
  # r=0 links nothing: it is the unshared model again, not measured twice.
  r0 = frame[frame['variant'] == 'r=0'].iloc[0]
  assert r0['same_as'] == 'none unshared' and r0['new_links'] == 0
  assert r0['quality'] == base['quality'] and r0['bytes_saved'] == 0
  shared = frame[(frame['method'] == 'direct_share')
                 & (frame['variant'] != 'r=0')].iloc[0]
  assert shared['linked_heads'] > 0 and shared['new_links'] > 0
  assert shared['bytes_saved'] > 0 and shared['params_saved'] > 0
  assert shared['verdict'] in ('worse', 'better', 'unresolved') or (
      shared['verdict'].startswith('equivalent'))
  assert shared['diff_lo'] <= shared['diff'] <= shared['diff_hi']
  sa = frame[frame['method'] == 'sa'].iloc[0]
  assert sa['params_saved'] > 0 and sa['predicted_speedup'] > 1
  assert isinstance(sa['lisa_rule'], (bool, np.bool_))
  if 'lisa' in expected:
    lisa_row = frame[frame['method'] == 'lisa'].iloc[0]
    assert 0 < lisa_row['trainable_params'] < base['params'] / 10
    assert lisa_row['qk_compression'] > 1
  for name in ('results.csv', 'results.md', 'results.json', 'sweep.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  for name in ('predictions.npz', 'redundancy/map_layers.csv',
               'redundancy/map_head_pairs.png',
               'redundancy/weight_best_matches.csv'):
    assert os.path.exists(os.path.join(workdir, folder, name)), name
  assert os.listdir(os.path.join(workdir, folder, 'tb', 'redundancy'))
  with open(os.path.join(workdir, 'results.json')) as f:
    replicas = [r['replica'] for r in json.load(f)['rows']]
  assert replicas.count(frame['replica'].iloc[0]) == len(frame)
  assert not os.path.exists(f'{workdir}.partial')


def _predictions_match(workdir, frame, config, folder=''):
  """Each row's accuracy is its saved per-example predictions'."""
  labels = data.read_dataset(config.data, read_fake_texts).test.labels
  with np.load(os.path.join(workdir, folder, 'predictions.npz')) as npz:
    assert list(npz['rows']) == [f'{m} {v}' for m, v in
                                 zip(frame['method'], frame['variant'])]
    np.testing.assert_allclose(np.mean(npz['predicted'] == labels, 1),
                               frame['quality'])


@pytest.mark.slow  # Every method end to end, fine-tuning included.
def test_pretrained_study_writes_every_table(tmp_path, fake_texts):
  model_dir = tiny_bert.save(tmp_path, tiny_bert.random_bert(), vocab=VOCAB)
  config = configs.load_config('configs/posthoc_minilm.py:tiny')
  config.pretrained_dir = model_dir
  config.data.max_length = tiny_bert.P
  workdir = str(tmp_path / 'study')
  frame = study.run(config, workdir, read_texts=fake_texts)
  _check_outputs(workdir, frame)
  _predictions_match(workdir, frame, config)
  assert np.isclose(frame.iloc[0]['output_cosine'], 1.)
  assert pd.read_csv(os.path.join(workdir, 'results.csv')).shape[0] == len(
      METHODS)
  with open(os.path.join(workdir, 'results.md')) as f:
    text = f.read()
  assert text.startswith(
      f'# Post-hoc sharing of {os.path.basename(model_dir)} (pretrained)\n')
  for line in ('Paired design: every row is scored on the same 16 test '
               'reviews', "McNemar's exact test", 'Detectable before the '
               'data', "LISA's rule"):
    assert line in text
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['source_origin'] == {'pretrained_dir': model_dir}


def _listing(folder):
  """Every path under folder with its size and mtime."""
  stats = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      stat = os.stat(os.path.join(root, name))
      stats[os.path.join(root, name)] = (stat.st_size, stat.st_mtime_ns)
  return stats


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """A finished tiny classifier run (2 seeds, 6 steps, checkpoints 3, 6)."""
  run_dir = str(tmp_path_factory.mktemp('trained') / 'run')
  source_config = configs.load_config('configs/no_share.py:tiny')
  source_config.model.num_layers = 3
  train.train_and_evaluate(source_config, run_dir,
                           read_texts=read_fake_texts)
  return run_dir


def _killed_after_step_3(run_dir, folder):
  """A copy of run_dir as if training had been killed after step 3."""
  killed = str(folder / 'killed')
  shutil.copytree(run_dir, killed)
  shutil.rmtree(os.path.join(killed, 'checkpoints', '6'))
  summary = workdir_lib.read_summary(killed)
  summary.update(completed_steps=3, finished=False)
  workdir_lib.write_summary(killed, summary)
  return killed


def _locked_by_a_live_run(run_dir, folder):
  """A copy of run_dir whose lock names this (live) process."""
  locked = str(folder / 'locked')
  shutil.copytree(run_dir, locked)
  with open(os.path.join(locked, workdir_lib.LOCK_FILE), 'w') as f:
    json.dump({'pid': os.getpid(), 'host': socket.gethostname(),
               'started': 'now'}, f)
  return locked


def _shared_weights(run_dir, folder):
  """A copy of run_dir whose config shares K and V across the layers."""
  shared = str(folder / 'shared')
  shutil.copytree(run_dir, shared)
  path = os.path.join(shared, workdir_lib.CONFIG_FILE)
  with open(path) as f:
    written = json.load(f)
  written['config']['sharing']['components'] = 'kv'
  with open(path, 'w') as f:
    json.dump(written, f)
  return shared


def _quick_study_config(source_workdir):
  """The unshared model and r=0 (the same model) alone: no SA span passes."""
  config = configs.load_config('configs/posthoc_trained.py:tiny')
  config.source_workdir = source_workdir
  config.replicas = '0'
  config.direct_share.ratios = '0'
  config.postshare.ratios = ''
  config.sa.threshold = 1e-9
  config.lisa.spans = 0
  return config


def test_unfinished_source_is_refused(trained_run, tmp_path):
  killed = _killed_after_step_3(trained_run, tmp_path)
  message = (f"config.source_workdir='{killed}' is unfinished "
             r'\(summary.json says unfinished\): its checkpoint is at step 3 '
             'of the 6 steps it needs; .*--config.allow_unfinished_source'
             '=True')
  with pytest.raises(posthoc_config.InputError, match=message):
    sources.from_workdir(killed, '0')
  os.remove(os.path.join(killed, workdir_lib.SUMMARY_FILE))
  with pytest.raises(ValueError, match=r'\(no summary.json\).* step 3 of'):
    study.run(_quick_study_config(killed), str(tmp_path / 'study'),
              read_texts=read_fake_texts)
  assert not os.path.exists(tmp_path / 'study')


def test_a_source_a_live_run_trains_is_refused(trained_run, tmp_path):
  locked = _locked_by_a_live_run(trained_run, tmp_path)
  before = _listing(locked)
  with pytest.raises(posthoc_config.InputError,
                     match=f'is being trained by pid {os.getpid()} on host '
                           f'{socket.gethostname()} since now; study it '
                           'when that run has finished') as refused:
    study.run(_quick_study_config(locked), str(tmp_path / 'study'),
              read_texts=read_fake_texts)
  # Nothing of a live run is ever advised away, or touched.
  assert 'delete' not in str(refused.value)
  assert _listing(locked) == before
  assert not os.path.exists(tmp_path / 'study')
  assert workdir_lib.live_holder(locked).startswith(f'pid {os.getpid()} ')
  # A lock whose holder is gone blocks nothing.
  gone = subprocess.Popen([sys.executable, '-c', ''])
  gone.wait()
  with open(os.path.join(locked, workdir_lib.LOCK_FILE), 'w') as f:
    json.dump({'pid': gone.pid, 'host': socket.gethostname(),
               'started': 'then'}, f)
  assert workdir_lib.live_holder(locked) is None
  assert [s.replica for s in sources.from_workdir(locked, '1')] == [1]
  # One on another host cannot be checked from here: it counts as live
  # while its heartbeat (the file's mtime) is recent.
  with open(os.path.join(locked, workdir_lib.LOCK_FILE), 'w') as f:
    json.dump({'pid': 1, 'host': 'elsewhere', 'started': 'then'}, f)
  assert workdir_lib.live_holder(locked) == (
      'pid 1 on host elsewhere since then')


def test_bad_sources_are_refused_naming_the_field(trained_run, tmp_path):
  with pytest.raises(posthoc_config.InputError,
                     match=r"config.replicas='7': replica 7 does not exist; "
                           r'the source has 2 \(0 to 1\)'):
    sources.from_workdir(trained_run, '7')
  with pytest.raises(posthoc_config.InputError,
                     match='config.sharing of the source model'):
    sources.from_workdir(_shared_weights(trained_run, tmp_path))
  with pytest.raises(posthoc_config.InputError, match='no config.json'):
    sources.from_workdir(str(tmp_path / 'nothing'))


def test_allowed_unfinished_source_is_labelled(trained_run, tmp_path):
  killed = _killed_after_step_3(trained_run, tmp_path)
  config = _quick_study_config(killed)
  config.allow_unfinished_source = True
  workdir = str(tmp_path / 'study')
  with mock.patch.object(posthoc_figures, 'sweep',
                         wraps=posthoc_figures.sweep) as draw:
    study.run(config, workdir, read_texts=read_fake_texts)
  with open(os.path.join(workdir, 'results.json')) as f:
    origin = json.load(f)['source_origin']
  assert (origin['step'], origin['num_train_steps'], origin['finished']) == (
      3, 6, False)
  title = draw.call_args.args[1]
  assert title.startswith('Post-hoc sharing of none (replica 0) (step 3 of '
                          '6, unfinished, config ')
  with open(os.path.join(workdir, 'results.md')) as f:
    assert f.readline() == f'# {title}\n'
  csv = pd.read_csv(os.path.join(workdir, 'results.csv'))
  assert set(csv['source_step']) == {3}
  assert not csv['source_finished'].any()


def test_trained_classifier_study_runs_every_replica(trained_run, tmp_path,
                                                     fake_texts):
  run_dir = trained_run
  config = configs.load_config('configs/posthoc_trained.py:tiny')
  config.source_workdir = run_dir
  # The methods' training paths with labels are unit-tested; here the
  # workdir source, its replicas and the classifier's metrics.
  config.direct_share.ratios = '0,0.25'
  config.postshare.ratios = ''
  config.sa.finetune_steps = 0
  config.lisa.spans = 0
  workdir = str(tmp_path / 'study')
  before = _listing(os.path.join(run_dir, 'checkpoints'))
  frame = study.run(config, workdir, read_texts=fake_texts)
  # The source workdir is restored read-only.
  assert _listing(os.path.join(run_dir, 'checkpoints')) == before
  methods_per_replica = ('none', 'direct_share', 'direct_share', 'sa')
  assert list(frame['replica']) == [0] * 4 + [1] * 4
  for replica in (0, 1):
    part = frame[frame['replica'] == replica].reset_index(drop=True)
    _check_outputs(workdir, part, methods_per_replica,
                   folder=f'replica_{replica}')
    _predictions_match(workdir, part, config, folder=f'replica_{replica}')
    # Agreement of the predictions with the unshared model's.
    assert part.iloc[0]['agreement'] == 1.
  with open(os.path.join(run_dir, workdir_lib.CONFIG_FILE)) as f:
    config_hash = json.load(f)['config_hash']
  with open(os.path.join(workdir, 'results.json')) as f:
    written = json.load(f)
  assert written['source_origin'] == [
      {'workdir': run_dir, 'replica': r, 'step': 6, 'num_train_steps': 6,
       'finished': True, 'config_hash': config_hash} for r in (0, 1)]
  assert [(a['method'], a['replicas']) for a in written['aggregate']] == [
      (m, 2) for m in methods_per_replica]
  with open(os.path.join(workdir, 'results.md')) as f:
    text = f.read()
  assert text.startswith(
      '# Post-hoc sharing of none (replicas 0,1, step 6 of 6, finished, '
      f'config {config_hash})\n')
  for heading in ('## Replica 0', '## Replica 1', '## Over the 2 replicas'):
    assert f'\n{heading}\n' in text


def test_study_replaces_its_results_as_a_set(trained_run, tmp_path):
  workdir = str(tmp_path / 'study')
  config = _quick_study_config(trained_run)
  study.run(config, workdir, read_texts=read_fake_texts)
  before = _listing(workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    first = f.read()
  config.paired.seed = 1
  # Killed while writing the new set: the old one stays whole.
  with mock.patch.object(posthoc_figures, 'sweep',
                         side_effect=KeyboardInterrupt):
    with pytest.raises(KeyboardInterrupt):
      study.run(config, workdir, read_texts=read_fake_texts)
  assert _listing(workdir) == before
  # Killed between the two renames of the swap: the next run restores the
  # old set first, then replaces it whole.
  os.rename(workdir, f'{workdir}.old')
  frame = study.run(config, workdir, read_texts=read_fake_texts)
  assert list(frame['variant']) == ['unshared', 'r=0']
  with open(os.path.join(workdir, 'results.json')) as f:
    assert f.read() != first
  assert not any(os.path.exists(f'{workdir}{s}')
                 for s in ('.old', '.partial'))
  assert pd.read_csv(os.path.join(workdir, 'results.csv')).shape[0] == len(
      frame)


def test_a_folder_that_is_no_study_is_never_replaced(trained_run, tmp_path):
  folder = tmp_path / 'notes'
  folder.mkdir()
  (folder / 'notes.txt').write_text('mine')
  with pytest.raises(posthoc_config.InputError,
                     match='holds files but no results.json of a study'):
    study.run(_quick_study_config(trained_run), str(folder),
              read_texts=read_fake_texts)
  assert os.listdir(folder) == ['notes.txt']
  with pytest.raises(posthoc_config.InputError, match='is the source'):
    study.run(_quick_study_config(trained_run), trained_run,
              read_texts=read_fake_texts)


def test_lm_rows_are_scored_per_token_with_sequence_units(fake_texts):
  spec = sharing.SharingSpec(num_layers=3, num_heads=2)
  cfg = model_lib.ModelConfig(vocab_size=32, max_length=12, sharing=spec,
                              width=8, num_layers=3, num_heads=2,
                              ffn_width=16, causal=True)
  params = model_lib.make_model(cfg).init(
      jax.random.key(0), np.zeros((1, 12), np.int32))['params']

  def encode(texts):
    ids = [[1 + zlib.crc32(w.encode()) % 31 for w in t.split()][:12]
           for t in texts]
    return np.array([row + [0] * (12 - len(row)) for row in ids], np.int32)

  source = sources.Source('lm', cfg, params, encode)
  config = configs.load_config('configs/posthoc_trained.py:tiny')
  ev = study.Evaluator(
      source, data.read_dataset(config.data, fake_texts), config)
  sa_params, sa_cfg = methods.shared_attention(params, cfg, [2])
  rows = [ev.base, ev.measure('sa', 'layers 2-2', sa_cfg, sa_params)]
  ev.finish(rows)
  base = rows[0]
  # By hand from the saved per-token outcomes: token accuracy, its SE over
  # sequences (cluster-robust: R = Σy/Σn, SE² = N/(N-1)·Σ(y - R·n)²/(Σn)²)
  # and the perplexity.
  valid_NT = base['_outcome']['valid']
  y_N = base['_outcome']['correct'].sum(1)
  n_N = valid_NT.sum(1)
  r = y_N.sum() / n_N.sum()
  units = len(n_N)
  assert base['quality'] == pytest.approx(r)
  assert base['quality_se'] == pytest.approx(np.sqrt(
      units / (units - 1) * np.sum((y_N - r * n_N) ** 2)) / n_N.sum())
  loss = np.sum(base['_outcome']['loss'] * valid_NT) / n_N.sum()
  assert base['perplexity'] == pytest.approx(np.exp(loss), rel=1e-5)
  # The same totals as training's evaluation of the test split.
  step = jax.jit(steps_lib.eval_step, static_argnums=2)
  total = jax.tree.map(lambda *x: float(np.sum(x)), *[
      step(params, b, model_lib.make_model(cfg)) for b in data.eval_batches(
          data.Split(ev.test_tokens, ev.test_labels), 8)])
  assert n_N.sum() == total['count']
  assert y_N.sum() == total['correct']
  assert loss == pytest.approx(total['loss_sum'] / total['count'], rel=1e-5)
  # An untrained LM: perplexity near the vocabulary size.
  assert 10 < base['perplexity'] < 100
  assert base['perplexity_lo'] < base['perplexity'] < base['perplexity_hi']
  sa = rows[1]
  assert sa['p_test'] == 'bootstrap' and 'perplexity_p_holm' in sa
  assert sa['perplexity_ratio_lo'] <= sa['perplexity_ratio'] <= (
      sa['perplexity_ratio_hi'])
  assert 0 <= sa['quality'] <= 1 and sa['predicted_speedup'] > 1
  assert all(r['latency_ms'] > 0 for r in rows)


@pytest.fixture(scope='module')
def wide_model():
  """A model whose 50,000 x 128 table dwarfs its compute on 2 x 8 tokens."""
  spec = sharing.SharingSpec(num_layers=1, num_heads=2)
  cfg = model_lib.ModelConfig(vocab_size=50_000, max_length=8, sharing=spec,
                              width=128, num_layers=1, num_heads=2,
                              ffn_width=16, num_classes=2)
  model = model_lib.make_model(cfg)
  tokens = np.ones((2, 8), np.int32)
  params = model.init(jax.random.key(0), tokens)['params']
  return jax.jit(lambda p, t: model.apply({'params': p}, t)), params, tokens


def test_latency_times_trees_that_live_on_the_device(wide_model):
  forward, params, tokens = wide_model
  seen = []

  def timed(p, t):
    seen.append(all(isinstance(x, jax.Array) for x in jax.tree.leaves(p))
                and isinstance(t, jax.Array))
    return forward(p, t)

  # A numpy tree in the column layout of an imported checkpoint.
  numpy_params = jax.tree.map(np.asfortranarray, params)
  probe.latency_ms([(timed, (numpy_params, tokens))], repeats=2, warmup=1)
  assert seen == [True] * 3


def test_one_architecture_times_alike_through_numpy_and_device_params(
    wide_model):
  # Before the study put trees on the device, a numpy tree was copied (and
  # transposed) in every timed call: 26 vs 0.7 ms for this model on the
  # 2-core machine. One model must time as itself, whatever holds it.
  forward, params, tokens = wide_model
  numpy_params = jax.tree.map(np.asfortranarray, params)
  as_numpy, on_device = probe.latency_ms(
      [(forward, (numpy_params, tokens)),
       (forward, (jax.device_put(params), tokens))], repeats=15)
  # Generous for a loaded machine; the copy it guards against was 35x.
  assert 1 / 3 < as_numpy / on_device < 3


@pytest.mark.parametrize('field,value,message', [
    ('paired.alpha', 2., r'config.paired.alpha must be in \(0, 1\), got 2'),
    ('direct_share.ratios', '0,1.5', r'ratio 1.5 must be in \[0, 1\)'),
    ('direct_share.ratios', '0,x', 'write numbers as'),
    ('probe.folds', 1, 'config.probe.folds must be >= 2'),
    ('lisa.rank', -1, 'config.lisa.rank must be >= 0'),
    ('sa.learning_rate', float('nan'), 'must be a positive number'),
    ('latency.repeats', 0, 'config.latency.repeats must be >= 1'),
    ('analysis.examples', 7, 'must be a multiple of'),
    ('paired.samples', 10, 'config.paired.samples must be >= 100'),
    ('replicas', '0,0', 'distinct replica indices'),
    ('source', 'hub', 'config.source must be'),
])
def test_bad_values_are_refused_before_anything_runs(field, value, message,
                                                     tmp_path):
  config = configs.load_config('configs/posthoc_trained.py:tiny')
  group, _, name = field.rpartition('.')
  (config[group] if group else config)[name] = value
  with pytest.raises(posthoc_config.InputError, match=message):
    study.run(config, str(tmp_path / 'study'))
  assert not os.listdir(tmp_path)


def test_study_reads_the_reviews_training_reads(fake_texts):
  for train_examples, test_examples in ((16, 8), (0, 0)):
    study_config = configs.load_config('configs/posthoc_trained.py:tiny')
    train_config = configs.load_config('configs/no_share.py:tiny')
    # The study's data block has no tokenizer fields; training's has.
    assert 'vocab_size' not in study_config.data
    for config in (study_config, train_config):
      config.data.update(train_examples=train_examples,
                         test_examples=test_examples, data_seed=3)
    trained = data.read_dataset(train_config.data, fake_texts,
                                train_config.data.tokenizer_train_examples)
    studied = data.read_dataset(study_config.data, fake_texts)
    # 0 = the whole split (fake_texts has 64 train and 32 test reviews).
    assert len(studied.train) == (train_examples or 64)
    assert len(studied.test) == (test_examples or 32)
    for split in ('train', 'test'):
      assert getattr(studied, split).texts == getattr(trained, split).texts
      np.testing.assert_array_equal(getattr(studied, split).labels,
                                    getattr(trained, split).labels)


def test_read_only_checkpointer_creates_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoints folder'):
    checkpoint.Checkpointer(str(tmp_path), read_only=True)
  assert not os.listdir(tmp_path)
  os.mkdir(tmp_path / 'checkpoints')
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(FileNotFoundError, match='no checkpoint yet'):
    ckpt.restore({})
  ckpt.close()
  assert not os.listdir(tmp_path / 'checkpoints')


def _posthoc(tmp_path, *args):
  return subprocess.run(
      [sys.executable, '-m', 'jax_attnshare.posthoc',
       '--config=configs/posthoc_trained.py:tiny',
       f'--workdir={tmp_path / "study"}', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


_BAD_SOURCES = {
    'unfinished': (_killed_after_step_3, 'is unfinished (summary.json says '
                   'unfinished)'),
    'trained by a live run': (_locked_by_a_live_run,
                              f'is being trained by pid {os.getpid()}'),
    'shared weights': (_shared_weights, 'config.sharing of the source model '
                       "is 'key,value@all'; post-hoc sharing needs"),
    'missing': (lambda run, folder: str(folder / 'nothing'),
                'has no config.json'),
}


_REFUSALS = [
    *((name, (), message) for name, (_, message) in _BAD_SOURCES.items()),
    ('replica 7 of 2', ('--config.replicas=7',),
     'replica 7 does not exist; the source has 2 (0 to 1)'),
    ('mistyped field', ('--config.replica=1',),
     '--config.replica: no such config field; did you mean '
     '--config.replicas?'),
    ('bad value', ('--config.paired.margin=0',),
     'config.paired.margin must be in (0, 1), got 0'),
    ('bad type', ('--config.sa.top_k=x',), '--config.sa.top_k=x'),
]


# Named by case: a message may hold this process's pid, and pytest-xdist's
# workers must collect the same test ids.
@pytest.mark.slow
@pytest.mark.parametrize('case,args,expected', _REFUSALS,
                         ids=[case for case, _, _ in _REFUSALS])
def test_every_refusal_is_one_line_and_exit_status_two(
    trained_run, tmp_path, case, args, expected):
  make = _BAD_SOURCES.get(case, (lambda run, folder: run,))[0]
  source = make(trained_run, tmp_path)
  result = _posthoc(tmp_path, f'--config.source_workdir={source}', *args)
  assert result.returncode == 2, result.stderr
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('error: ')]
  assert len(errors) == 1 and expected in errors[0], result.stderr
  assert 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'study')
