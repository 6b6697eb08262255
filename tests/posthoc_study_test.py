"""The post-hoc study end to end, on a tiny BERT and a tiny trained run."""

import json
import os
import shutil
from unittest import mock
import zlib

import jax
import numpy as np
import pandas as pd
import pytest

from jax_attnshare import checkpoint
from jax_attnshare import configs
from jax_attnshare import data
from jax_attnshare import train
from jax_attnshare import model as model_lib
from jax_attnshare import workdir as workdir_lib
from jax_attnshare.posthoc import figures as posthoc_figures
from jax_attnshare.posthoc import methods
from jax_attnshare.posthoc import study
from jax_attnshare.posthoc import sources
from jax_attnshare import sharing
from conftest import read_fake_texts
import tiny_bert

jax.config.update('jax_numpy_rank_promotion', 'raise')
# End-to-end runs compile many small programs; optimizing them costs more
# than it saves.
jax.config.update('jax_disable_most_optimizations', True)

SYLLABLES = ['ka', 'lo', 'mi', 'zu', 're', 'ti', 'pon', 'gra', 'vel', 'su']
VOCAB = (['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'great', 'awful'] + SYLLABLES
         + [f'##{s}' for s in SYLLABLES])
METHODS = ['none', 'direct_share', 'direct_share', 'postshare', 'sa',
           'sa_finetune', 'lisa']


def _check_outputs(workdir, frame, expected=tuple(METHODS)):
  assert tuple(frame['method']) == expected
  base = frame.iloc[0]
  assert base['kept_pct'] == 100 and base['bytes_saved'] == 0
  r0 = frame[frame['variant'] == 'r=0'].iloc[0]
  assert r0['quality'] == base['quality'] and r0['bytes_saved'] == 0
  shared = frame[(frame['method'] == 'direct_share')
                 & (frame['variant'] != 'r=0')].iloc[0]
  assert shared['linked_heads'] > 0
  assert shared['bytes_saved'] > 0 and shared['params_saved'] > 0
  sa = frame[frame['method'] == 'sa'].iloc[0]
  assert sa['params_saved'] > 0 and sa['predicted_speedup'] > 1
  if 'lisa' in expected:
    lisa_row = frame[frame['method'] == 'lisa'].iloc[0]
    assert 0 < lisa_row['trainable_params'] < base['params'] / 10
  for name in ('results.csv', 'results.md', 'results.json', 'sweep.png',
               'redundancy/map_layers.csv', 'redundancy/map_head_pairs.png',
               'redundancy/weight_best_matches.csv'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, 'tb', 'redundancy'))
  with open(os.path.join(workdir, 'results.json')) as f:
    assert len(json.load(f)['rows']) == len(expected)


def test_pretrained_study_writes_every_table(tmp_path, fake_texts):
  model_dir = tiny_bert.save(tmp_path, tiny_bert.random_bert(), vocab=VOCAB)
  config = configs.load_config('configs/posthoc_minilm.py:tiny')
  config.pretrained_dir = model_dir
  config.data.max_length = tiny_bert.P
  workdir = str(tmp_path / 'study')
  frame = study.run(config, workdir, read_texts=fake_texts)
  _check_outputs(workdir, frame)
  assert np.isclose(frame.iloc[0]['output_cosine'], 1.)
  assert pd.read_csv(os.path.join(workdir, 'results.csv')).shape[0] == len(
      METHODS)
  with open(os.path.join(workdir, 'results.md')) as f:
    assert f.readline() == (
        f'# Post-hoc sharing of {os.path.basename(model_dir)} (pretrained)\n')
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
  """A finished tiny classifier run (6 steps, checkpoints at 3 and 6)."""
  run_dir = str(tmp_path_factory.mktemp('trained') / 'run')
  source_config = configs.load_config('configs/no_share.py:tiny')
  source_config.model.num_layers = 3
  train.train_and_evaluate(source_config, run_dir,
                           read_texts=read_fake_texts)
  return run_dir


def _killed_after_step_3(run_dir, tmp_path):
  """A copy of run_dir as if training had been killed after step 3."""
  killed = str(tmp_path / 'killed')
  shutil.copytree(run_dir, killed)
  shutil.rmtree(os.path.join(killed, 'checkpoints', '6'))
  summary = workdir_lib.read_summary(killed)
  summary.update(completed_steps=3, finished=False)
  workdir_lib.write_summary(killed, summary)
  return killed


def _quick_study_config(source_workdir):
  config = configs.load_config('configs/posthoc_trained.py:tiny')
  config.source_workdir = source_workdir
  config.direct_share.ratios = '0'
  config.postshare.ratios = ''
  config.sa.finetune_steps = 0
  config.lisa.spans = 0
  return config


def test_unfinished_source_is_refused(trained_run, tmp_path):
  killed = _killed_after_step_3(trained_run, tmp_path)
  message = (f"config.source_workdir='{killed}' is unfinished "
             r'\(summary.json says unfinished\): its checkpoint is at step 3 '
             'of the 6 steps it needs; .*--config.allow_unfinished_source'
             '=True')
  with pytest.raises(ValueError, match=message):
    sources.from_workdir(killed, 0)
  os.remove(os.path.join(killed, workdir_lib.SUMMARY_FILE))
  with pytest.raises(ValueError, match=r'\(no summary.json\).* step 3 of'):
    study.run(_quick_study_config(killed), str(tmp_path / 'study'),
              read_texts=read_fake_texts)
  assert not os.path.exists(tmp_path / 'study')


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


def test_trained_classifier_study(trained_run, tmp_path, fake_texts):
  run_dir = trained_run
  config = configs.load_config('configs/posthoc_trained.py:tiny')
  config.source_workdir = run_dir
  config.replica = 1
  # The methods' training paths with labels are unit-tested; here the
  # workdir source and the classifier's metrics.
  config.direct_share.ratios = '0,0.25'
  config.postshare.ratios = ''
  config.sa.finetune_steps = 0
  config.lisa.spans = 0
  workdir = str(tmp_path / 'study')
  before = _listing(os.path.join(run_dir, 'checkpoints'))
  frame = study.run(config, workdir, read_texts=fake_texts)
  # The source workdir is restored read-only.
  assert _listing(os.path.join(run_dir, 'checkpoints')) == before
  _check_outputs(workdir, frame, ('none', 'direct_share', 'direct_share',
                                  'sa'))
  # Agreement of the predictions with the unshared model's.
  assert frame.iloc[0]['agreement'] == 1.
  with open(os.path.join(run_dir, workdir_lib.CONFIG_FILE)) as f:
    config_hash = json.load(f)['config_hash']
  with open(os.path.join(workdir, 'results.json')) as f:
    origin = json.load(f)['source_origin']
  assert origin == {'workdir': run_dir, 'replica': 1, 'step': 6,
                    'num_train_steps': 6, 'finished': True,
                    'config_hash': config_hash}
  with open(os.path.join(workdir, 'results.md')) as f:
    assert f.readline() == (
        '# Post-hoc sharing of none (replica 1) (step 6 of 6, finished, '
        f'config {config_hash})\n')


def test_lm_quality_is_token_accuracy(fake_texts):
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
  # An untrained LM: perplexity near the vocabulary size.
  assert 10 < rows[0]['perplexity'] < 100
  assert 0 <= rows[1]['quality'] <= 1 and rows[1]['predicted_speedup'] > 1
  assert all(r['latency_ms'] > 0 for r in rows)


def test_missing_sources_are_explained(tmp_path):
  with pytest.raises(FileNotFoundError, match='no config.json'):
    sources.from_workdir(str(tmp_path), 0)
  config = configs.load_config('configs/posthoc_trained.py:tiny')
  config.source = 'hub'
  with pytest.raises(ValueError, match='config.source'):
    study.run(config, str(tmp_path))


@pytest.mark.parametrize('train_examples,test_examples', [(16, 8), (0, 0)])
def test_study_reads_the_reviews_training_reads(fake_texts, train_examples,
                                                test_examples):
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
