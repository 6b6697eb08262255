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


def _split_of_lengths(lengths) -> data.Split:
  """Row i: its index + 1, then PAD-free filler up to lengths[i] tokens."""
  lengths = np.asarray(lengths)
  tokens = np.zeros([len(lengths), lengths.max()], np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = 2
    tokens[i, 0] = i + 1
  return data.Split(tokens, (np.arange(len(lengths)) % 2).astype(np.int32))


def test_bucketing_off_is_one_shuffle_per_epoch_cut_in_order():
  """The orders of before bucketing, by hand: shared and per replica."""
  n, b = 10, 3
  shared = data.TrainBatches(_split(n), b, data_seed=4)
  replicas = data.TrainBatches(_split(n), b, data_seed=4, replica_seeds=[5, 9])
  one_bucket = data.TrainBatches(_split(n), b, data_seed=4, buckets=(4,),
                                 run_steps=2)
  for step in range(7):
    epoch, offset = divmod(step, 3)
    rows = slice(offset * b, (offset + 1) * b)
    order = np.random.default_rng([4, 1, epoch]).permutation(n)
    np.testing.assert_array_equal(shared.rows(step), order[rows])
    np.testing.assert_array_equal(one_bucket.rows(step), order[rows])
    for i, seed in enumerate([5, 9]):
      order = np.random.default_rng([4, 2, seed, epoch]).permutation(n)
      np.testing.assert_array_equal(replicas.rows(step)[i], order[rows])
    assert shared.length(step) == 4


def test_token_lengths_and_the_smallest_bucket_that_holds_a_review():
  tokens = np.array([[0, 0, 0, 0], [5, 0, 0, 0], [5, 6, 7, 0], [5, 0, 7, 0],
                     [5, 6, 7, 8]], np.int32)
  np.testing.assert_array_equal(data.token_lengths(tokens), [0, 1, 3, 3, 4])
  np.testing.assert_array_equal(data.bucket_index(tokens, (1, 3, 4)),
                                [0, 0, 1, 1, 2])
  np.testing.assert_array_equal(data.bucket_index(tokens, (2, 4)),
                                [0, 0, 1, 1, 1])


def test_reviews_go_to_their_smallest_bucket_when_buckets_fill_batches():
  """Bucket counts that are multiples of the batch: nothing is carried."""
  lengths = [2] * 8 + [5] * 4 + [8] * 12  # Buckets 3, 6, 8: 2, 1, 3 batches.
  split = _split_of_lengths(lengths)
  batches = data.TrainBatches(split, 4, 0, replica_seeds=[1, 2],
                              buckets=(3, 6, 8), run_steps=2)
  assert batches.steps_per_epoch == 6
  own = np.array([3, 6, 8])[data.bucket_index(split.tokens, (3, 6, 8))]
  for step in range(12):
    rows = batches.rows(step)
    assert (own[rows] == batches.length(step)).all()
    batch = batches(step)
    assert batch['tokens'].shape == (2, 4, batches.length(step))
    # Cut to the bucket, nothing real is lost.
    np.testing.assert_array_equal(
        (batch['tokens'] != data.PAD_ID).sum(-1),
        np.asarray(lengths)[rows])
  assert [batches.length(s) for s in range(6)].count(8) == 3


def test_each_epoch_visits_every_review_once_in_every_replica():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 13, size=47)
  split = _split_of_lengths(lengths)
  buckets = (3, 5, 9, 12)
  seeds = [3, 4, 5]
  batches = data.TrainBatches(split, 4, 7, replica_seeds=seeds,
                              buckets=buckets, run_steps=3)
  assert batches.steps_per_epoch == 11  # 47 // 4: 3 reviews skipped.
  own = np.asarray(buckets)[data.bucket_index(split.tokens, buckets)]
  for epoch in range(2):
    steps = range(epoch * 11, (epoch + 1) * 11)
    rows = np.stack([batches.rows(s) for s in steps], axis=1)  # [S, X, B]
    for replica in rows:
      seen = replica.ravel()
      assert len(set(seen)) == len(seen) == 44
    # Every review fits its batch's length; the ones that ride in a longer
    # bucket than their own are the leftovers carried up, under a batch per
    # bucket change.
    length_X = np.array([batches.length(s) for s in steps])
    assert (own[rows] <= length_X[None, :, None]).all()
    carried = (own[rows] < length_X[None, :, None]).sum(axis=(1, 2))
    assert (carried <= 3 * (len(buckets) - 1)).all()


def test_the_bucket_schedule_is_shared_and_each_replica_draws_its_own():
  rng = np.random.default_rng(1)
  split = _split_of_lengths(rng.integers(1, 13, size=60))
  kwargs = dict(buckets=(4, 8, 12), run_steps=2)
  seeds = [3, 4]
  both = data.TrainBatches(split, 4, 7, replica_seeds=seeds, **kwargs)
  lengths = [both.length(s) for s in range(30)]
  assert len(set(lengths)) == 3
  for i, seed in enumerate(seeds):
    alone = data.TrainBatches(split, 4, 7, replica_seeds=[seed], **kwargs)
    assert [alone.length(s) for s in range(30)] == lengths
    for step in (0, 17, 29):
      np.testing.assert_array_equal(alone.rows(step)[0], both.rows(step)[i])
  assert any(not np.array_equal(*both.rows(s)) for s in range(15))
  shared = data.TrainBatches(split, 4, 7, **kwargs)
  assert [shared.length(s) for s in range(30)] == lengths
  assert shared.rows(0).shape == (4,)
  # The schedule depends on the data seed and the epoch only.
  other = data.TrainBatches(split, 4, 8, replica_seeds=seeds, **kwargs)
  assert [other.length(s) for s in range(30)] != lengths
  assert lengths[:15] != lengths[15:]


def test_bucket_runs_hold_run_steps_steps_of_one_bucket():
  split = _split_of_lengths([2] * 40 + [6] * 40)  # 10 batches each.
  runs = data.TrainBatches(split, 4, 0, buckets=(3, 6), run_steps=5)
  singles = data.TrainBatches(split, 4, 0, buckets=(3, 6), run_steps=1)
  for batches, boundaries in ((runs, {5, 10, 15}), (singles, set(range(20)))):
    lengths = [batches.length(s) for s in range(20)]
    assert lengths.count(3) == lengths.count(6) == 10
    changes = {s for s in range(1, 20) if lengths[s] != lengths[s - 1]}
    # Runs of 5 steps: the bucket changes only where a run ends.
    assert changes <= boundaries
  assert len({s for s in range(1, 20)
              if singles.length(s) != singles.length(s - 1)}) > 3


def test_positions_count_real_tokens_and_padding():
  split = _split_of_lengths([1, 3, 4, 4])
  batches = data.TrainBatches(split, 2, 0, buckets=(3, 4))
  # Bucket 3: rows of 1 and 3 tokens (padding 2 of 6); bucket 4: no padding.
  real, positions = batches.positions(0, 2)
  assert (real, positions) == (3.0, 3.5)
  unbucketed = data.TrainBatches(split, 2, 0)
  assert unbucketed.positions(0, 2) == (3.0, 4.0)


def test_by_bucket_cuts_each_bucket_to_its_length_in_order():
  split = _split_of_lengths([1, 6, 2, 3, 6])
  parts = data.by_bucket(split, (3, 4, 6))
  assert [p.tokens.shape for p in parts] == [(3, 3), (2, 6)]
  np.testing.assert_array_equal(parts[0].tokens[:, 0], [1, 3, 4])
  np.testing.assert_array_equal(parts[1].labels, [1, 0])
  assert data.by_bucket(split, (6,)) == [split]


@pytest.mark.parametrize('text,match', [
    ('16,8', 'must increase'),
    ('8,x', 'must be comma-separated ints'),
    ('0,16', 'must increase'),
    ('8,12', 'must end at config.data.max_length=16'),
])
def test_bad_bucket_lengths_name_the_field(text, match):
  with pytest.raises(ValueError, match=f'config.data.bucket_lengths {match}'):
    data.check_fields(_config(bucket_lengths=text))


def test_bucket_lengths_parse_and_default_to_max_length():
  assert data.bucket_lengths(_config(bucket_lengths='4, 8,16')) == (4, 8, 16)
  assert data.bucket_lengths(_config(bucket_lengths='')) == (16,)
  assert data.bucket_lengths(_config()) == (16,)  # A config before buckets.
  with pytest.raises(ValueError, match='config.data.bucket_run_steps'):
    data.check_fields(_config(bucket_run_steps=0))
