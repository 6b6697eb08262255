"""Prepared entries: made once per token fields, read with numpy alone."""

import os
import stat
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from conftest import read_fake_texts
from jax_attnshare import configs
from jax_attnshare import data
from jax_attnshare import data_cache
from jax_attnshare import train
import tiny_tfds

# Tiny models: compile time dominates, so let XLA skip most optimizations.
jax.config.update('jax_disable_most_optimizations', True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Taken before conftest's prepared_data_folder replaces it in every test.
DEFAULT_CACHE_DIR = data_cache.default_cache_dir
# The config.data fields that may change without changing the tokens.
NOT_TOKEN_FIELDS = {'seed_mode', 'data_dir', 'allow_download', 'cache_dir'}


def _data_config(folder, **overrides):
  """The :tiny config.data, its entries in `folder`."""
  config = configs.classifier_config('kv', 'tiny').data
  config.cache_dir = str(folder)
  config.update(overrides)
  return config


class _Counted:
  """read_fake_texts, counting its calls (it is read once per split)."""

  def __init__(self):
    self.calls = 0

  def __call__(self, *args):
    self.calls += 1
    return read_fake_texts(*args)


@pytest.fixture
def trainings(monkeypatch):
  """How often a tokenizer is trained."""
  calls = []
  train_tokenizer = data.train_tokenizer

  def counted(*args):
    calls.append(args[0])
    return train_tokenizer(*args)

  monkeypatch.setattr(data, 'train_tokenizer', counted)
  return calls


def _changed(value):
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 1
  return value + 'x' if value else 'x'


def test_entry_name_changes_with_each_token_field_and_no_other(tmp_path,
                                                              monkeypatch):
  config = _data_config(tmp_path)
  name = data_cache.entry_name(config)
  unchanged = set()
  for field in config:
    other = _data_config(tmp_path, **{field: _changed(config[field])})
    if data_cache.entry_name(other) == name:
      unchanged.add(field)
  assert unchanged == NOT_TOKEN_FIELDS
  assert name.startswith('imdb_reviews-')
  # What the code makes of a text is a field too.
  monkeypatch.setattr(data, 'CLEANING_VERSION', data.CLEANING_VERSION + 1)
  assert data_cache.entry_name(config) != name


def test_a_config_without_the_tokenizer_field_names_the_same_entry(tmp_path):
  config = _data_config(tmp_path, tokenizer='sentencepiece')
  older = ml_collections.ConfigDict(
      {k: v for k, v in config.items() if k != 'tokenizer'})
  assert data_cache.entry_name(older) == data_cache.entry_name(config)


def test_second_load_reads_the_entry_without_reading_or_training(
    tmp_path, trainings):
  reader, config = _Counted(), _data_config(tmp_path)
  first = data_cache.load_or_prepare(config, reader)
  assert (reader.calls, trainings) == (2, ['sentencepiece'])
  assert sorted(os.listdir(first.path)) == ['meta.json', 'splits.npz',
                                            'spm.model']
  again = data_cache.load_or_prepare(config, reader)
  assert (reader.calls, len(trainings)) == (2, 1)
  assert again.path == first.path
  for split in ('train', 'test'):
    for array in ('tokens', 'labels'):
      value = getattr(getattr(again.dataset, split), array)
      assert value.dtype == np.int32
      np.testing.assert_array_equal(
          value, getattr(getattr(first.dataset, split), array))
  review = again.dataset.test.tokens[0]
  assert (data.pieces(again.dataset.tokenizer, review)
          == data.pieces(first.dataset.tokenizer, review))
  # Only the order of batches changes: the same entry.
  data_cache.load_or_prepare(_data_config(tmp_path, seed_mode='per_seed'),
                             reader)
  assert reader.calls == 2


def test_a_changed_token_field_never_reads_the_old_entry(tmp_path,
                                                         trainings):
  reader = _Counted()
  old = data_cache.load_or_prepare(_data_config(tmp_path), reader)
  new = data_cache.load_or_prepare(_data_config(tmp_path, max_length=8),
                                   reader)
  assert new.path != old.path and reader.calls == 4 and len(trainings) == 2
  assert new.dataset.train.tokens.shape[1] == 8
  np.testing.assert_array_equal(new.dataset.train.tokens,
                                old.dataset.train.tokens[:, :8])


def test_an_entry_from_other_texts_is_prepared_again(tmp_path):
  config = _data_config(tmp_path)
  first = data_cache.load_or_prepare(config, _Counted())

  def other_texts(name, split, data_dir, allow_download):
    texts, labels = read_fake_texts(name, split, data_dir, allow_download)
    return [t.upper() for t in texts], 1 - labels

  again = data_cache.load_or_prepare(config, other_texts)
  assert again.path == first.path
  assert again.meta['source'] == {
      'reader': f'{__name__}.{other_texts.__qualname__}'}
  np.testing.assert_array_equal(again.dataset.train.labels,
                                1 - first.dataset.train.labels)


def test_without_the_dataset_files_only_a_tfds_entry_is_read(tmp_path):
  """A fake entry never stands in for the real data."""
  empty = tmp_path / 'no_data'
  empty.mkdir()
  config = _data_config(tmp_path / 'cache', data_dir=str(empty),
                        allow_download=False)
  data_cache.load_or_prepare(config, read_fake_texts)
  with pytest.raises(data.DataMissingError, match=str(empty)):
    data_cache.load_or_prepare(config)


def test_tfds_entry_is_read_where_the_dataset_is_not(tmp_path, monkeypatch):
  """Prepared from tfds files, read where there are none and no tfds."""
  data_dir = tiny_tfds.write_tiny_imdb(str(tmp_path / 'tfds'))
  config = _data_config(tmp_path / 'cache', data_dir=data_dir)
  prepared = data_cache.load_or_prepare(config)
  assert prepared.meta['source']['reader'] == 'tensorflow_datasets'
  elsewhere = _data_config(tmp_path / 'cache',
                           data_dir=str(tmp_path / 'nothing_here'))
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  entry = data_cache.load_or_prepare(elsewhere)
  np.testing.assert_array_equal(entry.dataset.train.tokens,
                                prepared.dataset.train.tokens)


def test_no_entry_and_no_tfds_says_how_to_prepare_one(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  config = _data_config(tmp_path)
  with pytest.raises(data.DataMissingError) as error:
    data_cache.load_or_prepare(config)
  message = str(error.value)
  assert '\n' not in message
  assert data_cache.entry_name(config) in message
  assert 'python -m jax_attnshare.prepare' in message
  assert not os.listdir(tmp_path)


def _garbage(path):
  path.write_bytes(b'\x00garbage' * 10)


def _truncated(path):
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _flipped(path):
  """One byte of the compressed arrays changed."""
  contents = bytearray(path.read_bytes())
  contents[len(contents) // 3] ^= 0xFF
  path.write_bytes(bytes(contents))


@pytest.mark.parametrize('file,damage', [
    ('splits.npz', _truncated), ('splits.npz', _garbage),
    ('splits.npz', _flipped), ('meta.json', _truncated),
    ('spm.model', _garbage)])
def test_a_corrupt_file_is_one_line_naming_it(tmp_path, file, damage):
  config = _data_config(tmp_path)
  entry = data_cache.load_or_prepare(config, read_fake_texts)
  damage(tmp_path / os.path.basename(entry.path) / file)
  with pytest.raises(data_cache.CacheError) as error:
    data_cache.load_or_prepare(config, read_fake_texts)
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(os.path.join(entry.path, file))
  assert f'delete {entry.path}' in message
  assert 'python -m jax_attnshare.prepare' in message


def test_a_crash_while_writing_leaves_no_entry(tmp_path, monkeypatch):
  config = _data_config(tmp_path)

  def crash(*args):
    del args
    raise OSError('disk full')

  write_json = data_cache.workdir_lib.write_json
  monkeypatch.setattr(data_cache.workdir_lib, 'write_json', crash)
  with pytest.raises(OSError, match='disk full'):
    data_cache.load_or_prepare(config, read_fake_texts)
  assert os.listdir(tmp_path) == []
  monkeypatch.setattr(data_cache.workdir_lib, 'write_json', write_json)
  assert data_cache.load_or_prepare(config, read_fake_texts).dataset


def test_an_entry_a_concurrent_run_wrote_first_is_kept(tmp_path):
  config = _data_config(tmp_path)
  theirs = data_cache.load_or_prepare(config, read_fake_texts)
  mtime = os.stat(os.path.join(theirs.path, 'meta.json')).st_mtime_ns
  # As this run prepares when it looked before the other renamed its entry.
  ours = data_cache._prepare(theirs.path, config, read_fake_texts,
                             replace=False)
  assert ours.path == theirs.path
  assert os.stat(os.path.join(theirs.path, 'meta.json')).st_mtime_ns == mtime
  assert os.listdir(tmp_path) == [os.path.basename(theirs.path)]


def test_default_folder_is_in_the_tfds_data_dir_unless_read_only(tmp_path):
  home = os.path.expanduser(os.path.join('~', '.cache', 'jax_attnshare',
                                         'prepared'))
  assert DEFAULT_CACHE_DIR(str(tmp_path)) == str(
      tmp_path / 'jax_attnshare_prepared')
  # A data dir to be made later: where it will be.
  assert DEFAULT_CACHE_DIR(str(tmp_path / 'new')) == str(
      tmp_path / 'new' / 'jax_attnshare_prepared')
  shared = tmp_path / 'shared'
  shared.mkdir()
  shared.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
  try:
    assert DEFAULT_CACHE_DIR(str(shared)) == home
  finally:
    shared.chmod(stat.S_IRWXU)
  assert DEFAULT_CACHE_DIR('gs://bucket/tensorflow_datasets') == home


def test_copy_tokenizer_refuses_a_workdir_with_another(tmp_path):
  entry = data_cache.load_or_prepare(_data_config(tmp_path / 'cache'),
                                     read_fake_texts)
  workdir = tmp_path / 'run'
  data_cache.copy_tokenizer(entry, str(workdir), 'sentencepiece')
  data_cache.copy_tokenizer(entry, str(workdir), 'sentencepiece')  # Same.
  (workdir / 'tokenizer' / 'spm.model').write_bytes(b'another')
  with pytest.raises(ValueError, match='trained on other tokens'):
    data_cache.copy_tokenizer(entry, str(workdir), 'sentencepiece')


def test_bad_vocab_size_writes_no_entry(tmp_path):
  with pytest.raises(ValueError, match='config.data.vocab_size=8'):
    data_cache.load_or_prepare(_data_config(tmp_path, vocab_size=8),
                               read_fake_texts)
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_grid_of_two_conditions_reads_and_trains_the_tokenizer_once(
    tmp_path, trainings):
  reader = _Counted()
  for condition in ('kv', 'none'):
    config = configs.classifier_config(condition, 'tiny')
    summary = train.train_and_evaluate(config, str(tmp_path / condition),
                                       read_texts=reader)
    assert summary['finished']
  # Both splits read once, one tokenizer trained, for both conditions.
  assert (reader.calls, trainings) == (2, ['sentencepiece'])
  tokenizers = [(tmp_path / c / 'tokenizer' / 'spm.model').read_bytes()
                for c in ('kv', 'none')]
  assert tokenizers[0] == tokenizers[1]


def _prepare(*args):
  return subprocess.run(
      [sys.executable, '-m', 'jax_attnshare.prepare', *args], cwd=ROOT,
      capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_prepare_command_writes_the_entry_main_reads(tmp_path):
  data_dir = tiny_tfds.write_tiny_imdb(str(tmp_path / 'tfds'))
  cache = tmp_path / 'cache'
  args = ['--config=configs/kv_share.py:tiny',
          f'--config.data.data_dir={data_dir}',
          f'--config.data.cache_dir={cache}']
  result = _prepare(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  config = configs.load_config(os.path.join(ROOT, 'configs/kv_share.py:tiny'))
  config.data.update(data_dir=data_dir, cache_dir=str(cache))
  path = os.path.join(cache, data_cache.entry_name(config.data))
  assert result.stdout.startswith(f'{path}: 64 train and 32 test examples')
  assert data_cache.load_or_prepare(config.data).path == path


@pytest.mark.slow
@pytest.mark.parametrize('override,expected', [
    ('--config.data.vocab_size=2', 'config.data.vocab_size must be an int >= '
     '3, got 2'),
    ('--config.data.vocab_sise=2', 'did you mean --config.data.vocab_size?')])
def test_prepare_command_refuses_bad_fields_in_one_line(override, expected):
  result = _prepare('--config=configs/kv_share.py:tiny', override)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('error: ')]
  assert len(errors) == 1 and expected in errors[0], result.stderr
  assert 'Traceback' not in result.stderr
