"""Text classification data: TFDS reading, tokenizers, batches.

Two tokenizers (config.data.tokenizer): a SentencePiece unigram model, and
the blog's base code's lower-cased whitespace words (torchtext's
`Field(lower=True)`), its vocabulary the most frequent words.

tensorflow_datasets is imported only when a dataset is read: training reads
its tokens from data_cache's prepared entries, on machines without it too.
"""

import collections
from collections.abc import Callable, Iterator, Sequence
import dataclasses
import io
import os
import re
import shutil
import socket
import threading
import time
import urllib.parse
from typing import Any

from absl import logging
import numpy as np
import sentencepiece as spm

PAD_ID = 0
UNK_ID = 1

# Tags that keep the numpy streams below apart. SeedSequence pads entropy
# with zeros, so [s, e] and [s, e, 0] alias; a distinct tag in position 1
# of equal-length lists keeps streams apart (for seeds below 2**32).
_SUBSET_STREAM = 0
_ORDER_STREAM = 1
_REPLICA_ORDER_STREAM = 2
_BUCKET_SCHEDULE_STREAM = 3

# The version of what clean_text and the tokenizers make of a text: raise
# it with any change to them, so that no prepared entry of the old tokens
# is read (data_cache keys its entries by it).
CLEANING_VERSION = 1

_BREAK_RE = re.compile(r'<br\s*/?>', re.IGNORECASE)
_SPACE_RE = re.compile(r'\s+')


class DataMissingError(FileNotFoundError):
  """The dataset is not prepared locally and could not be downloaded."""


def clean_text(text: str) -> str:
  """Replaces HTML line breaks by spaces and collapses whitespace."""
  return _SPACE_RE.sub(' ', _BREAK_RE.sub(' ', text)).strip()


def resolve_data_dir(data_dir: str | None) -> str:
  """Returns the TFDS data dir the same way tfds does when given None."""
  return (data_dir or os.environ.get('TFDS_DATA_DIR')
          or os.path.expanduser('~/tensorflow_datasets'))


def _missing_message(name: str, data_dir: str, variant_dir: str) -> str:
  return (
      f'Dataset {name!r} is not prepared in data dir {data_dir} (expected '
      f'{variant_dir}). To provide it, run once on a machine with internet: '
      f"python -c 'import tensorflow_datasets as tfds; "
      f'tfds.load("{name}", data_dir="DIR")\' and copy DIR here, or set '
      f'TFDS_DATA_DIR / --config.data.data_dir=DIR to a folder holding '
      f'{os.path.relpath(variant_dir, data_dir)}.')


def _network_reachable(url: str, timeout_s: float = 5.0) -> bool:
  """Whether a TCP connection to url's host opens within timeout_s.

  Run in a thread because name resolution ignores socket timeouts.
  """
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == 'https' else 80)
  result = []

  def connect():
    try:
      socket.create_connection((parsed.hostname, port), timeout_s).close()
      result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return bool(result)


def _entries(folder: str) -> set[str] | None:
  """The names in folder; None if it does not exist."""
  return set(os.listdir(folder)) if os.path.isdir(folder) else None


def _remove_new_entries(folder: str, before: set[str] | None) -> None:
  """Removes what appeared in folder since `before` (all of it if new)."""
  if not os.path.isdir(folder):
    return
  if before is None:
    shutil.rmtree(folder, ignore_errors=True)
    return
  for name in set(os.listdir(folder)) - before:
    path = os.path.join(folder, name)
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)


def read_tfds_texts(
    name: str, split: str, data_dir: str | None, allow_download: bool = True
) -> tuple[list[str], np.ndarray]:
  """Reads all (text, label) pairs of a supervised TFDS text split."""
  # Imported here: only reading needs TensorFlow.
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import tensorflow_datasets as tfds
  # pylint: enable=g-import-not-at-top
  data_dir = resolve_data_dir(data_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  # Checked before any download so an offline machine fails in seconds
  # instead of retrying the network for minutes.
  if not builder.is_prepared():
    message = _missing_message(name, data_dir, os.fspath(builder.data_path))
    if not allow_download:
      raise DataMissingError(
          message + ' (config.data.allow_download is False.)')
    homepage = builder.info.homepage
    if not _network_reachable(homepage):
      raise DataMissingError(
          f'{message} No download was tried: {homepage} is not reachable '
          'from this machine.')
    logging.info('Downloading %s into %s (set config.data.allow_download='
                 'False to fail fast offline).', name, data_dir)
    before = _entries(data_dir)
    downloads = os.path.join(data_dir, 'downloads')
    downloads_before = _entries(downloads)
    try:
      builder.download_and_prepare()
    # requests' ConnectionError is an OSError; tfds imports some download
    # helpers lazily, so a missing optional dependency surfaces here.
    except (OSError, ImportError) as e:
      # Partial downloads would only mislead the next attempt.
      _remove_new_entries(downloads, downloads_before)
      _remove_new_entries(data_dir, before)
      raise DataMissingError(f'{message} Download failed: {e!r}') from e
  dataset = builder.as_dataset(split=split, as_supervised=True)
  texts, labels = [], []
  try:
    for text_batch, label_batch in tfds.as_numpy(dataset.batch(1024)):
      texts.extend(t.decode('utf-8') for t in text_batch)
      labels.append(label_batch)
  except tf.errors.OpError as e:  # DataLossError: a truncated record.
    paths = [os.fspath(p) for p in builder.info.splits[split].filepaths]
    damaged = [p for p in paths if not _readable(p)] or paths
    reason = e.message.strip().splitlines()[0].split("' failed with ")[-1]
    reason = reason.split(' [Op:')[0]
    raise DataMissingError(
        f'{", ".join(damaged)} cannot be read ({reason}): the prepared '
        f'{name!r} is damaged. Delete {os.fspath(builder.data_path)} and '
        f'prepare it again (run once with internet: python -c \'import '
        f'tensorflow_datasets as tfds; tfds.load("{name}", '
        f'data_dir="{data_dir}")\').') from None
  labels = np.concatenate(labels) if labels else np.zeros([0])
  return texts, labels.astype(np.int32)


def _readable(path: str) -> bool:
  """Whether every record of a tfrecord file reads."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    for _ in tf.data.TFRecordDataset(path):
      pass
  except tf.errors.OpError:
    return False
  return True


# SentencePiece's errors when vocab_size does not suit the texts: too small
# for their characters, or more pieces than the texts can give.
_VOCAB_SIZE_ERROR_RE = re.compile(r'Vocabulary size (is smaller|too high).*')


def _train_sentencepiece(train_texts: Sequence[str], vocab_size: int,
                         model: io.BytesIO) -> None:
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(train_texts),
      model_writer=model,
      model_type='unigram',
      vocab_size=vocab_size,
      normalization_rule_name='nmt_nfkc_cf',
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1,
      character_coverage=1.0,
      # By default spm silently skips texts over 4192 bytes (~3% of IMDB).
      max_sentence_length=max(
          [4192] + [len(t.encode('utf-8')) for t in train_texts]),
      num_threads=os.cpu_count() or 1,
      train_extremely_large_corpus=False,
      minloglevel=2)


TOKENIZERS = ('sentencepiece', 'words')
# The file each tokenizer is kept in: in a workdir's tokenizer/ folder and
# in a prepared entry (data_cache).
_TOKENIZER_FILES = {'sentencepiece': 'spm.model', 'words': 'words.txt'}


class WordTokenizer:
  """Lower-cased whitespace words; ids by descending training frequency.

  Id 0 is <pad>, 1 is <unk> (any word outside the vocabulary), then the
  vocab_size - 2 most frequent training words, ties in alphabetical order
  (torchtext's build_vocab order). The methods used here mirror
  SentencePieceProcessor's, so either tokenizer serves encode() and pieces().
  """

  def __init__(self, words: Sequence[str]):
    self.words = list(words)
    self._ids = {w: i for i, w in enumerate(self.words)}

  @classmethod
  def train(cls, texts: Sequence[str], vocab_size: int) -> 'WordTokenizer':
    counts = collections.Counter(w for t in texts for w in t.lower().split())
    if len(counts) < vocab_size - 2:
      raise ValueError(
          f'config.data.vocab_size={vocab_size} does not suit the '
          f'{len(texts)} tokenizer training texts: they have only '
          f'{len(counts)} distinct words, and the vocabulary holds '
          f'vocab_size - 2 words plus <pad> and <unk>. Lower '
          'config.data.vocab_size or raise '
          'config.data.tokenizer_train_examples.')
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return cls(['<pad>', '<unk>'] + [w for w, _ in ranked[:vocab_size - 2]])

  def get_piece_size(self) -> int:
    return len(self.words)

  def id_to_piece(self, i: int) -> str:
    return self.words[i]

  def encode(self, texts: str | Sequence[str]):
    """Ids of one text, or a list of them for a list of texts."""
    if isinstance(texts, str):
      return [self._ids.get(w, UNK_ID) for w in texts.lower().split()]
    return [self.encode(t) for t in texts]

  def decode(self, ids: Sequence[int]) -> str:
    return ' '.join(self.words[i] for i in ids if i != PAD_ID)

  def serialized(self) -> bytes:
    return ''.join(w + '\n' for w in self.words).encode('utf-8')


def load_tokenizer_file(kind: str, path: str):
  """The `kind` tokenizer kept in the file at `path`."""
  if kind == 'words':
    with open(path, encoding='utf-8') as f:
      return WordTokenizer(f.read().splitlines())
  return spm.SentencePieceProcessor(model_file=path)


def train_tokenizer(kind: str, texts: Sequence[str], vocab_size: int):
  """Returns (tokenizer, the bytes of its file) trained on `texts`.

  Raises ValueError naming config.data.vocab_size when it does not suit them.
  """
  check_tokenizer(kind)
  start = time.time()
  if kind == 'words':
    tokenizer = WordTokenizer.train(texts, vocab_size)
    serialized = tokenizer.serialized()
  else:
    model = io.BytesIO()
    try:
      _train_sentencepiece(texts, vocab_size, model)
    except RuntimeError as e:
      reason = _VOCAB_SIZE_ERROR_RE.search(str(e))
      if not reason:
        raise
      raise ValueError(
          f'config.data.vocab_size={vocab_size} does not suit the '
          f'{len(texts)} tokenizer training texts (SentencePiece: '
          f'{reason.group(0)}). Change config.data.vocab_size.') from None
    serialized = model.getvalue()
    tokenizer = spm.SentencePieceProcessor(model_proto=serialized)
  logging.info('Trained %s tokenizer (vocab %d) on %d texts in %.1fs', kind,
               vocab_size, len(texts), time.time() - start)
  return tokenizer, serialized


def tokenizer_kind(data_config: Any) -> str:
  """config.data.tokenizer; 'sentencepiece' for configs written before it."""
  return data_config.get('tokenizer', 'sentencepiece')


def check_tokenizer(kind: str) -> None:
  if kind not in TOKENIZERS:
    raise ValueError(f'config.data.tokenizer must be one of {TOKENIZERS}, '
                     f'got {kind!r}.')


def tokenizer_file_name(kind: str) -> str:
  """The name of the file a `kind` tokenizer is kept in."""
  check_tokenizer(kind)
  return _TOKENIZER_FILES[kind]


def tokenizer_path(workdir: str, kind: str) -> str:
  """Where a run in `workdir` keeps its tokenizer of kind `kind`."""
  return os.path.join(workdir, 'tokenizer', tokenizer_file_name(kind))


def load_tokenizer(workdir: str, data_config: Any):
  """The tokenizer a finished or running training run in workdir wrote."""
  kind = tokenizer_kind(data_config)
  return load_tokenizer_file(kind, tokenizer_path(workdir, kind))


def encode(tokenizer, texts: Sequence[str],
           max_length: int) -> np.ndarray:
  """Returns int32 ids [N, max_length]: truncated at the end, PAD padded."""
  tokens = np.full([len(texts), max_length], PAD_ID, np.int32)
  for row, ids in zip(tokens, tokenizer.encode(list(texts))):
    ids = ids[:max_length]
    row[:len(ids)] = ids
  return tokens


def pieces(tokenizer, token_ids: np.ndarray) -> list[str]:
  """Returns the piece strings of the non-pad tokens of one example."""
  return [tokenizer.id_to_piece(int(i)) for i in token_ids if i != PAD_ID]


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """Tokenized examples: tokens [N, T] int32 and labels [N] int32."""
  tokens: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.tokens.ndim != 2 or self.labels.shape != self.tokens.shape[:1]:
      raise ValueError(f'Bad split shapes: tokens {self.tokens.shape}, '
                       f'labels {self.labels.shape}')

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True, eq=False)
class TextDataset:
  """Train and test splits with the tokenizer that made them."""
  train: Split
  test: Split
  tokenizer: Any  # spm.SentencePieceProcessor or WordTokenizer
  vocab_size: int


# (field, minimum) of config.data: the fields that pick the texts, which
# post-hoc studies share with training, and the tokenizer's, which only
# training has.
_SUBSET_FIELDS = (('train_examples', 0), ('test_examples', 0),
                  ('data_seed', 0))
_TOKENIZER_FIELDS = (('vocab_size', 3), ('max_length', 2),
                     ('tokenizer_train_examples', 1))


def _check(config: Any, checks: Sequence[tuple[str, int]]) -> None:
  for field, minimum in checks:
    value = getattr(config, field)
    if not isinstance(value, int) or value < minimum:
      raise ValueError(
          f'config.data.{field} must be an int >= {minimum}, got {value!r}')


def check_subset_fields(config: Any) -> None:
  """Raises ValueError naming the first invalid field read_dataset reads."""
  _check(config, _SUBSET_FIELDS)


def check_fields(config: Any) -> None:
  """Raises ValueError naming the first invalid config.data field."""
  _check(config, _TOKENIZER_FIELDS + _SUBSET_FIELDS)
  check_tokenizer(tokenizer_kind(config))
  bucket_lengths(config)
  bucket_run_steps(config)


def bucket_lengths(data_config: Any) -> tuple[int, ...]:
  """config.data.bucket_lengths as ints, ascending, the last max_length.

  '' (and configs written before the field) = (max_length,): one bucket,
  every batch padded to max_length. Raises ValueError naming the field.
  """
  text = data_config.get('bucket_lengths', '')
  max_length = data_config.max_length
  if not str(text).strip():
    return (max_length,)
  example = f"e.g. '{max(max_length // 4, 1)},{max_length}'"
  try:
    lengths = tuple(int(x) for x in str(text).split(','))
  except ValueError:
    raise ValueError(f'config.data.bucket_lengths must be comma-separated '
                     f'ints ({example}), got {text!r}.') from None
  if lengths[0] < 1 or any(a >= b for a, b in zip(lengths, lengths[1:])):
    raise ValueError(f'config.data.bucket_lengths must increase from >= 1 '
                     f'({example}), got {text!r}.')
  if lengths[-1] != max_length:
    raise ValueError(
        f'config.data.bucket_lengths must end at config.data.max_length='
        f'{max_length}, the bucket of the longest (truncated) reviews, got '
        f'{text!r}.')
  return lengths


def bucket_run_steps(data_config: Any) -> int:
  """config.data.bucket_run_steps; 1 for configs written before it."""
  steps = data_config.get('bucket_run_steps', 1)
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f'config.data.bucket_run_steps must be an int >= 1, got '
                     f'{steps!r}.')
  return steps


def _subset_index(split_size: int, size: int, data_seed: int,
                 split: str) -> np.ndarray:
  """Sorted indices of the seeded subset of `size` examples; 0 = all.

  The one place a split's examples are picked, so training and post-hoc
  studies with the same config.data fields see the same texts.
  """
  field = f'{split}_examples'
  if size > split_size:
    raise ValueError(f'config.data.{field}={size} exceeds the split size '
                     f'{split_size}')
  if size == 0:
    return np.arange(split_size)
  split_id = ('train', 'test').index(split)
  return np.sort(np.random.default_rng(
      [data_seed, _SUBSET_STREAM, split_id]).choice(
          split_size, size, replace=False))


@dataclasses.dataclass(frozen=True, eq=False)
class SplitTexts:
  """One split's cleaned texts and labels, after the configured subset."""
  texts: list[str]
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetTexts:
  """The texts of both splits, read but not yet tokenized.

  tokenizer_texts are the full train split's first texts, so the tokenizer
  does not depend on train_examples and a workdir's tokenizer stays valid.
  """
  train: SplitTexts
  test: SplitTexts
  tokenizer_texts: list[str]


def read_dataset(
    data_config: Any,
    read_texts: Callable[..., tuple[list[str], np.ndarray]] = read_tfds_texts,
    tokenizer_texts: int = 0
) -> DatasetTexts:
  """Reads, cleans and subsets the train and test splits; writes nothing.

  Keeps the full train split's first `tokenizer_texts` texts for training a
  tokenizer. Reads only the config.data fields of check_subset_fields (and
  dataset, data_dir, allow_download).
  """
  check_subset_fields(data_config)
  splits, first_texts = {}, []
  for split in ('train', 'test'):
    start = time.time()
    texts, labels = read_texts(data_config.dataset, split,
                               data_config.data_dir or None,
                               data_config.allow_download)
    texts = [clean_text(t) for t in texts]
    logging.info('Read %d %s texts in %.1fs', len(texts), split,
                 time.time() - start)
    index = _subset_index(len(texts),
                          getattr(data_config, f'{split}_examples'),
                          data_config.data_seed, split)
    if split == 'train':
      first_texts = texts[:tokenizer_texts]
    splits[split] = SplitTexts([texts[i] for i in index],
                               np.asarray(labels, np.int32)[index])
  return DatasetTexts(splits['train'], splits['test'], first_texts)


def token_lengths(tokens_NT: np.ndarray) -> np.ndarray:
  """The positions each row needs: up to its last non-pad token [N]."""
  real_NT = tokens_NT != PAD_ID
  last = tokens_NT.shape[1] - np.argmax(real_NT[:, ::-1], axis=1)
  return np.where(real_NT.any(axis=1), last, 0)


def bucket_index(tokens_NT: np.ndarray,
                 buckets: Sequence[int]) -> np.ndarray:
  """Index in `buckets` of the smallest bucket that holds each row [N]."""
  return np.searchsorted(np.asarray(buckets), token_lengths(tokens_NT))


def by_bucket(split: Split, buckets: Sequence[int]) -> list[Split]:
  """The split's reviews by bucket, in order, cut to the bucket's length.

  One Split per bucket that holds any review, shortest first; with one
  bucket, the split's own arrays.
  """
  if len(buckets) == 1:
    return [split]
  index_N = bucket_index(split.tokens, buckets)
  return [Split(split.tokens[index_N == b, :length],
                split.labels[index_N == b])
          for b, length in enumerate(buckets) if (index_N == b).any()]


class TrainBatches:
  """Training batches that depend only on the step, so resume needs no state.

  Each review belongs to the smallest of `buckets` (lengths, ascending, the
  last the split's) that holds it; a batch is cut to its bucket's length.
  Each epoch, each order (one, or with replica_seeds one per replica)
  shuffles the shortest bucket's reviews and cuts them into batches; the
  len % batch_size reviews left over join the next bucket's, where they are
  shuffled in (so a few reviews per epoch ride in a longer bucket than
  their own), and the last bucket's leftovers are skipped. So each epoch
  visits every review once but len(split) % batch_size of them, in
  len(split) // batch_size steps. Which bucket a step draws from is shared
  by the replicas (their batches have one shape): each bucket's batches
  form runs of up to run_steps steps, the runs of all buckets in a seeded
  random order, and the k-th step in a bucket takes each order's k-th batch
  of it. With one bucket this is a shuffle of the split per epoch, cut into
  batches in order. With replica_seeds, batches get a leading replica axis.
  """

  def __init__(self, split: Split, batch_size: int, data_seed: int,
               replica_seeds: Sequence[int] | None = None,
               buckets: Sequence[int] | None = None, run_steps: int = 1):
    if not 1 <= batch_size <= len(split):
      raise ValueError(f'config.batch_size must be in [1, {len(split)}] '
                       f'(the train split size), got {batch_size}')
    self.split = split
    self.batch_size = batch_size
    self.steps_per_epoch = len(split) // batch_size
    self.buckets = tuple(buckets or (split.tokens.shape[1],))
    if self.buckets[-1] != split.tokens.shape[1]:
      raise ValueError(f'The last bucket length {self.buckets[-1]} must be '
                       f'the split\'s length {split.tokens.shape[1]}.')
    if run_steps < 1:
      raise ValueError(f'config.data.bucket_run_steps must be >= 1, got '
                       f'{run_steps}')
    self.run_steps = run_steps
    # Tokens of each row that a batch keeps (its length: buckets hold it).
    self.lengths = token_lengths(split.tokens)
    index_N = bucket_index(split.tokens, self.buckets)
    self._members = [np.flatnonzero(index_N == b)
                     for b in range(len(self.buckets))]
    # Batches per epoch of each bucket, with the reviews carried into it.
    self._batch_counts, carried = [], 0
    for members in self._members:
      count, carried = divmod(carried + len(members), batch_size)
      self._batch_counts.append(count)
    self._data_seed = data_seed
    self._replica_seeds = (None if replica_seeds is None
                           else [int(s) for s in replica_seeds])
    self._cached_epoch = -1
    self._rows_OXB = np.zeros([0, 0, batch_size], int)
    self._bucket_X = np.zeros([0], int)

  def _order_batches(self, rng: np.random.Generator) -> np.ndarray:
    """One order's batches of an epoch, bucket by bucket: [N // B, B]."""
    batches, carried = [], np.zeros([0], int)
    for members, count in zip(self._members, self._batch_counts):
      pool = rng.permutation(np.concatenate([carried, members]))
      batches.append(pool[:count * self.batch_size])
      carried = pool[count * self.batch_size:]
    return np.concatenate(batches).reshape(-1, self.batch_size)

  def _schedule(self, epoch: int) -> np.ndarray:
    """The bucket of each step of `epoch` [steps_per_epoch]."""
    runs = [(b, min(self.run_steps, count - first))
            for b, count in enumerate(self._batch_counts)
            for first in range(0, count, self.run_steps)]
    order = np.random.default_rng(
        [self._data_seed, _BUCKET_SCHEDULE_STREAM, epoch]).permutation(
            len(runs))
    return np.concatenate([np.full(runs[i][1], runs[i][0]) for i in order])

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [orders, steps X, B] and buckets [X] of `epoch`, cached."""
    if epoch != self._cached_epoch:
      if self._replica_seeds is None:
        seeds = [[self._data_seed, _ORDER_STREAM, epoch]]
      else:
        seeds = [[self._data_seed, _REPLICA_ORDER_STREAM, s, epoch]
                 for s in self._replica_seeds]
      batches_OXB = np.stack([self._order_batches(np.random.default_rng(s))
                              for s in seeds])
      bucket_X = self._schedule(epoch)
      # The k-th step of bucket b takes its k-th batch.
      first = np.cumsum([0] + self._batch_counts[:-1])
      index_X = np.empty_like(bucket_X)
      for b in range(len(self.buckets)):
        steps = np.flatnonzero(bucket_X == b)
        index_X[steps] = first[b] + np.arange(len(steps))
      self._rows_OXB, self._bucket_X = batches_OXB[:, index_X], bucket_X
      self._cached_epoch = epoch
    return self._rows_OXB, self._bucket_X

  def _locate(self, step: int) -> tuple[int, int]:
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    return divmod(step, self.steps_per_epoch)

  def rows(self, step: int) -> np.ndarray:
    """The split's rows in the batch of 0-based `step`: [(S,) B] ints.

    Training gathers them from the split on the device (steps.SeedSteps).
    """
    epoch, offset = self._locate(step)
    rows = self._epoch(epoch)[0][:, offset]
    return rows[0] if self._replica_seeds is None else rows

  def length(self, step: int) -> int:
    """The length (bucket) of the batch of 0-based `step`."""
    epoch, offset = self._locate(step)
    return self.buckets[self._epoch(epoch)[1][offset]]

  def positions(self, first: int, end: int) -> tuple[float, float]:
    """Mean real tokens and positions per example of steps [first, end).

    1 - their ratio is the share of padding in those batches.
    """
    real = total = 0
    for step in range(first, end):
      rows = self.rows(step)
      real += int(self.lengths[rows].sum())
      total += rows.size * self.length(step)
    orders = 1 if self._replica_seeds is None else len(self._replica_seeds)
    examples = max((end - first) * orders * self.batch_size, 1)
    return real / examples, total / examples

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """Returns the batch of 0-based `step`: tokens [(S,) B, T], labels."""
    rows = self.rows(step)
    return {'tokens': self.split.tokens[rows][..., :self.length(step)],
            'labels': self.split.labels[rows]}


def eval_batches(split: Split,
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Yields the split in order, the last batch padded with weight-0 rows."""
  for start in range(0, len(split), batch_size):
    tokens = split.tokens[start:start + batch_size]
    labels = split.labels[start:start + batch_size]
    weights = np.ones([len(labels)], np.float32)
    pad = batch_size - len(labels)
    if pad:
      # One static shape for every batch: one compiled eval step.
      tokens = np.pad(tokens, [(0, pad), (0, 0)], constant_values=PAD_ID)
      labels = np.pad(labels, [(0, pad)])
      weights = np.pad(weights, [(0, pad)])
    yield {'tokens': tokens, 'labels': labels, 'weights': weights}
