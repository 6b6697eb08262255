"""Tests for jax_attnshare.data: tokenizer, batches, dataset loading.

(The prepared entries the loop reads are data_cache_test's.)
"""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jax_attnshare import data
from jax_attnshare import data_cache

_WORDS = ('the film was great bad boring plot acting actor scene movie story '
          'music ending character director funny sad long short terrible '
          'wonderful awful brilliant script camera watch again never always '
          'love hate best worst simply quite really very').split()


def _corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
  """Random reviews with a <br /> now and then, rich enough for vocab 96."""
  rng = np.random.default_rng(seed)
  # Made-up words add the distinct substrings a 96-piece vocabulary needs.
  syllables = ['ka', 'lo', 'mi', 'zu', 're', 'ti', 'pon', 'gra', 'vel']
  words = _WORDS + [''.join(rng.choice(syllables, size=3)) for _ in range(60)]
  texts = []
  for i in range(n):
    review = ' '.join(rng.choice(words, size=rng.integers(5, 40)))
    texts.append(review + (' <br /><br />The End.' if i % 3 else ''))
  return texts, (np.arange(n) % 2).astype(np.int64)


@pytest.fixture(scope='module')
def tokenizer():
  return data.train_tokenizer('sentencepiece', _corpus(300)[0][:200], 96)[0]


def _split(n: int, length: int = 4) -> data.Split:
  """Rows whose first token is the example index + 1, to track coverage."""
  tokens = np.zeros([n, length], np.int32)
  tokens[:, 0] = np.arange(1, n + 1)
  return data.Split(tokens, (np.arange(n) % 2).astype(np.int32))


def _config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      dataset='fake', data_dir='', vocab_size=64, max_length=16,
      train_examples=0, test_examples=0, data_seed=0,
      tokenizer_train_examples=100, allow_download=False, cache_dir=''))
  config.update(overrides)
  return config


def _fake_read(name, split, data_dir, allow_download):
  del name, data_dir, allow_download  # Unused.
  return _corpus(120 if split == 'train' else 50, seed=split == 'test')


def test_clean_text():
  assert data.clean_text('a<br />b<br/>c<BR>d \n\t e ') == 'a b c d e'


def test_encode_pads_and_truncates(tokenizer):
  tokens = data.encode(tokenizer, ['the film', 'the film was great ' * 20, ''],
                       16)
  assert tokens.shape == (3, 16) and tokens.dtype == np.int32
  short = tokenizer.encode('the film')
  assert 0 < len(short) < 16
  np.testing.assert_array_equal(tokens[0, :len(short)], short)
  assert (tokens[0, len(short):] == data.PAD_ID).all()
  long = tokenizer.encode('the film was great ' * 20)
  np.testing.assert_array_equal(tokens[1], long[:16])
  assert (tokens[2] == data.PAD_ID).all()
  assert ''.join(data.pieces(tokenizer, tokens[0])) == ''.join(
      tokenizer.encode('the film', out_type=str))


def test_tokenizer_file_round_trips(tmp_path):
  texts = _corpus(300)[0]
  trained, serialized = data.train_tokenizer('sentencepiece', texts[:200], 64)
  assert trained.get_piece_size() == 64
  assert trained.id_to_piece(data.PAD_ID) == '<pad>'
  path = tmp_path / data.tokenizer_file_name('sentencepiece')
  path.write_bytes(serialized)
  reloaded = data.load_tokenizer_file('sentencepiece', str(path))
  assert reloaded.encode(texts[:20]) == trained.encode(texts[:20])
  # Lowercasing is done by the tokenizer's normalizer.
  assert trained.encode('THE FILM') == trained.encode('the film')


def test_train_batches_deterministic_and_epochwise():
  split = _split(10)
  batches = data.TrainBatches(split, 3, data_seed=0)
  assert batches.steps_per_epoch == 3
  fresh = data.TrainBatches(split, 3, data_seed=0)
  for step in [4, 0, 7, 4]:  # Out of order, as after a resume.
    np.testing.assert_array_equal(batches(step)['tokens'],
                                  fresh(step)['tokens'])
  for epoch in range(3):
    seen = np.concatenate(
        [batches(epoch * 3 + i)['tokens'][:, 0] for i in range(3)])
    assert len(set(seen)) == 9  # 10 % 3 = 1 example left out per epoch.
  assert batches(0)['tokens'].shape == (3, 4)
  assert batches(0)['labels'].shape == (3,)
  epoch_orders = [np.concatenate([batches(e * 3 + i)['tokens'][:, 0]
                                  for i in range(3)]) for e in range(2)]
  assert not np.array_equal(*epoch_orders)
  other_seed = data.TrainBatches(split, 3, data_seed=1)
  assert not np.array_equal(batches(0)['tokens'], other_seed(0)['tokens'])


def test_train_batches_cover_each_example_once():
  split = _split(12)
  batches = data.TrainBatches(split, 4, data_seed=3)
  for epoch in range(2):
    batch = [batches(epoch * 3 + i) for i in range(3)]
    seen = np.sort(np.concatenate([b['tokens'][:, 0] for b in batch]))
    np.testing.assert_array_equal(seen, np.arange(1, 13))
    labels = np.concatenate([b['labels'] for b in batch])
    assert labels.sum() == 6


def test_train_batches_per_replica():
  split = _split(20)
  seeds = [5, 6, 7]
  batches = data.TrainBatches(split, 4, data_seed=0, replica_seeds=seeds)
  for step in [0, 6]:
    batch = batches(step)
    assert batch['tokens'].shape == (3, 4, 4)
    assert batch['labels'].shape == (3, 4)
    for i, seed in enumerate(seeds):
      alone = data.TrainBatches(split, 4, 0, replica_seeds=[seed])(step)
      np.testing.assert_array_equal(batch['tokens'][i], alone['tokens'][0])
      np.testing.assert_array_equal(batch['labels'][i], alone['labels'][0])
  assert not np.array_equal(batches(0)['tokens'][0], batches(0)['tokens'][1])


def test_train_batches_rejects_batch_larger_than_split():
  with pytest.raises(ValueError, match='config.batch_size'):
    data.TrainBatches(_split(3), 4, data_seed=0)


def test_eval_batches_cover_every_example_once():
  split = _split(10)
  batches = list(data.eval_batches(split, 4))
  assert len(batches) == 3
  for batch in batches:
    assert batch['tokens'].shape == (4, 4)
    assert batch['labels'].shape == batch['weights'].shape == (4,)
    assert batch['weights'].dtype == np.float32
  weights = np.concatenate([b['weights'] for b in batches])
  assert weights.sum() == 10
  np.testing.assert_array_equal(weights[10:], 0)
  firsts = np.concatenate([b['tokens'][:, 0] for b in batches])
  np.testing.assert_array_equal(firsts[:10], np.arange(1, 11))
  assert (batches[-1]['tokens'][2:] == data.PAD_ID).all()
  assert (batches[-1]['labels'][2:] == 0).all()


def _load_text_dataset(config, cache, read_texts):
  """What train.train_and_evaluate does with the data: check, read, encode."""
  config.cache_dir = cache
  return data_cache.load_or_prepare(config, read_texts).dataset


def test_load_text_dataset_subsets_are_deterministic(tmp_path):
  config = _config(train_examples=30, data_seed=4)
  dataset = _load_text_dataset(config, str(tmp_path), _fake_read)
  assert len(dataset.train) == 30 and len(dataset.test) == 50
  assert dataset.train.tokens.shape == (30, 16)
  assert dataset.train.tokens.dtype == dataset.train.labels.dtype == np.int32
  assert dataset.tokenizer.get_piece_size() == dataset.vocab_size == 64
  assert '<br' not in ''.join(data.pieces(dataset.tokenizer,
                                          dataset.test.tokens[1]))
  again = _load_text_dataset(config, str(tmp_path), _fake_read)
  np.testing.assert_array_equal(again.train.tokens, dataset.train.tokens)
  reseeded = _load_text_dataset(_config(train_examples=30, data_seed=5),
                                    str(tmp_path), _fake_read)
  assert not np.array_equal(reseeded.train.tokens, dataset.train.tokens)
  # The tokenizer does not depend on the train subset.
  full = _load_text_dataset(_config(), str(tmp_path / 'other'),
                                _fake_read)
  assert (full.tokenizer.serialized_model_proto()
          == dataset.tokenizer.serialized_model_proto())


@pytest.mark.parametrize('field,value', [
    ('max_length', 1), ('train_examples', -1), ('test_examples', -2),
    ('vocab_size', 0), ('data_seed', -1), ('tokenizer_train_examples', 0),
    ('train_examples', 121), ('test_examples', 51)])
def test_load_text_dataset_rejects_bad_fields(tmp_path, field, value):
  with pytest.raises(ValueError, match=f'config.data.{field}'):
    _load_text_dataset(_config(**{field: value}), str(tmp_path),
                           _fake_read)


def test_missing_dataset_fails_fast_naming_the_dir(tmp_path):
  with pytest.raises(data.DataMissingError) as error:
    data.read_tfds_texts('imdb_reviews', 'train', str(tmp_path),
                         allow_download=False)
  assert str(tmp_path) in str(error.value)
  assert 'TFDS_DATA_DIR' in str(error.value)


def test_offline_download_fails_at_once_and_leaves_nothing(tmp_path,
                                                           monkeypatch):
  monkeypatch.setattr(data, '_network_reachable', lambda url: False)
  data_dir = tmp_path / 'tfds'
  with pytest.raises(data.DataMissingError, match='No download was tried'):
    data.read_tfds_texts('imdb_reviews', 'train', str(data_dir))
  assert not data_dir.exists()


def test_failed_download_removes_only_what_it_added(tmp_path, monkeypatch):
  monkeypatch.setattr(data, '_network_reachable', lambda url: True)
  data_dir = tmp_path / 'tfds'
  (data_dir / 'downloads').mkdir(parents=True)
  (data_dir / 'downloads' / 'earlier.tar').write_text('kept')
  (data_dir / 'other_dataset').mkdir()

  def fail(self, *args, **kwargs):
    del self, args, kwargs
    (data_dir / 'downloads' / 'imdb.tmp.123').write_text('partial')
    (data_dir / 'imdb_reviews' / 'incomplete').mkdir(parents=True)
    raise OSError('network down')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', fail)
  with pytest.raises(data.DataMissingError, match='network down'):
    data.read_tfds_texts('imdb_reviews', 'train', str(data_dir))
  assert sorted(os.listdir(data_dir)) == ['downloads', 'other_dataset']
  assert os.listdir(data_dir / 'downloads') == ['earlier.tar']


def test_network_probe_of_a_closed_port_is_false():
  assert not data._network_reachable('http://127.0.0.1:9/', timeout_s=2.0)


def test_vocab_size_that_does_not_suit_the_texts_names_the_field():
  with pytest.raises(ValueError, match='config.data.vocab_size=8 does not'):
    data.train_tokenizer('sentencepiece',
                         ['héllo wörld ßq', 'xyz 0123456789'] * 5, 8)


def test_missing_dataset_honours_tfds_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  with pytest.raises(data.DataMissingError, match=str(tmp_path)):
    data.read_tfds_texts('imdb_reviews', 'test', None, allow_download=False)


def test_read_tfds_texts_under_mock_data(monkeypatch):
  # The mock replaces download_and_prepare by a no-op and serves fake data;
  # the network probe before it would find no network here.
  monkeypatch.setattr(data, '_network_reachable', lambda url: True)
  with tfds.testing.mock_data(num_examples=5,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    texts, labels = data.read_tfds_texts('imdb_reviews', 'train', None)
  assert len(texts) == len(labels) == 5
  assert all(isinstance(t, str) for t in texts)
  assert labels.dtype == np.int32 and set(labels) <= {0, 1}


def test_word_tokenizer_ranks_words_and_is_deterministic():
  texts = ['The film was great', 'the FILM was bad', 'a film , great .']
  tokenizer = data.WordTokenizer.train(texts, 6)
  # <pad>, <unk>, then by count (film 3; the, was, great 2), ties by word.
  assert tokenizer.words == ['<pad>', '<unk>', 'film', 'great', 'the', 'was']
  assert data.WordTokenizer.train(list(reversed(texts)), 6).words == (
      tokenizer.words)
  assert tokenizer.encode('The film was awful') == [4, 2, 5, data.UNK_ID]
  assert tokenizer.encode(['great', '']) == [[3], []]
  assert tokenizer.id_to_piece(data.PAD_ID) == '<pad>'


def test_word_tokenizer_round_trips_lowercased_whitespace_words(tmp_path):
  texts = _corpus(100)[0]
  trained, serialized = data.train_tokenizer('words', texts, 50)
  assert trained.get_piece_size() == 50
  path = tmp_path / data.tokenizer_file_name('words')
  path.write_bytes(serialized)
  reloaded = data.load_tokenizer_file('words', str(path))
  assert reloaded.words == trained.words
  known = ' '.join(trained.words[2:])
  assert trained.decode(trained.encode(known.upper())) == known
  unknown = 'zzz'
  assert unknown not in trained.words
  tokens = data.encode(trained, [f'{trained.words[2]} {unknown}', known], 4)
  assert tokens.shape == (2, 4)
  assert data.pieces(trained, tokens[0]) == [trained.words[2], '<unk>']
  np.testing.assert_array_equal(tokens[1], trained.encode(known)[:4])


def test_word_vocabulary_larger_than_the_texts_is_refused_naming_fields():
  with pytest.raises(ValueError, match=r'config.data.vocab_size=100 .* only '
                     r'3 distinct words.*tokenizer_train_examples'):
    data.WordTokenizer.train(['a b c', 'a b'], 100)


def test_words_dataset_is_tokenized_by_words_and_kept_in_the_workdir(
    tmp_path):
  config = _config(tokenizer='words', vocab_size=40,
                   cache_dir=str(tmp_path / 'cache'))
  entry = data_cache.load_or_prepare(config, _fake_read)
  dataset = entry.dataset
  assert isinstance(dataset.tokenizer, data.WordTokenizer)
  workdir = tmp_path / 'workdir'
  data_cache.copy_tokenizer(entry, str(workdir), 'words')
  assert os.listdir(workdir / 'tokenizer') == ['words.txt']
  assert data.load_tokenizer(str(workdir), config).words == (
      dataset.tokenizer.words)
  first = data.pieces(dataset.tokenizer, dataset.train.tokens[0])
  text = _fake_read('', 'train', '', False)[0][0]
  expected = [w if w in dataset.tokenizer.words else '<unk>'
              for w in data.clean_text(text).lower().split()][:16]
  assert first == expected


def test_unknown_tokenizer_is_refused_naming_the_choices(tmp_path):
  with pytest.raises(ValueError, match=r"config.data.tokenizer must be one of "
                     r"\('sentencepiece', 'words'\), got 'bpe'"):
    data.check_fields(_config(tokenizer='bpe'))
