"""Prepared data: a config's tokenized splits and tokenizer, made once.

Reading IMDB through tensorflow-datasets and training a tokenizer take from
seconds to minutes and need TensorFlow, yet what they make depends only on
the config.data fields that decide the tokens. load_or_prepare makes it once
per set of those fields, as an entry of the cache folder (cache_dir), and
every later run with the same fields (each condition of a grid, a run on a
machine without TensorFlow) reads the entry with numpy alone.

An entry is a folder named after the dataset and a digest of those fields
(entry_name):
  meta.json               the fields, the source of the texts, the sizes
  splits.npz              train_tokens, train_labels, test_tokens, test_labels
  spm.model | words.txt   the tokenizer (data.tokenizer_file_name)
It is written into a temporary folder and renamed into place, so a crash or
a concurrent run never leaves half an entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from typing import Any, Callable
import zipfile
import zlib

from absl import logging
import numpy as np

from jax_attnshare import data
from jax_attnshare import workdir as workdir_lib

# The layout of an entry; entries of another are never read (it is part of
# the digest).
FORMAT = 1
META_FILE = 'meta.json'
SPLITS_FILE = 'splits.npz'
# config.data fields that do not change the tokens: the order batches are
# drawn in, and where the data is (workdir.DATA_LOCATION_FIELDS). Every
# other field is part of an entry's name, so a field added later keeps a
# stale entry from being read until it is listed here.
_NOT_TOKEN_FIELDS = ('seed_mode',) + workdir_lib.DATA_LOCATION_FIELDS
# The default folder where the TFDS data dir cannot be written.
_HOME_CACHE = os.path.join('~', '.cache', 'jax_attnshare', 'prepared')
# The default folder's name inside the TFDS data dir.
_TFDS_CACHE = 'jax_attnshare_prepared'
_SPLITS = ('train', 'test')


class CacheError(ValueError):
  """A prepared entry that cannot be read."""


def token_fields(data_config: Any) -> dict:
  """What decides the tokens: the config.data fields, and the versions.

  The cleaning version (data.CLEANING_VERSION) covers what the code makes
  of a text; the entry FORMAT how it is stored.
  """
  fields = {k: v for k, v in workdir_lib.config_dict(data_config).items()
            if k not in _NOT_TOKEN_FIELDS}
  fields['tokenizer'] = data.tokenizer_kind(data_config)
  fields['cleaning_version'] = data.CLEANING_VERSION
  fields['format'] = FORMAT
  return fields


def entry_name(data_config: Any) -> str:
  """The entry's folder name: the dataset, then a digest of token_fields."""
  text = json.dumps(token_fields(data_config), sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()[:16]
  return f'{re.sub(r"[^A-Za-z0-9_.-]", "_", data_config.dataset)}-{digest}'


def _writable(folder: str) -> bool:
  """Whether folder, or the first of its parents that exists, may be written.

  A folder whose mode lets no one write is taken as read-only even for
  root, who could write it anyway (a shared dataset copy, say).
  """
  folder = os.path.abspath(folder)
  while not os.path.exists(folder):
    folder = os.path.dirname(folder)
  mode = os.stat(folder).st_mode
  return (os.access(folder, os.W_OK | os.X_OK)
          and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)))


def cache_dir(data_config: Any) -> str:
  """config.data.cache_dir, or by default default_cache_dir's."""
  if data_config.get('cache_dir'):
    return os.path.expanduser(data_config.cache_dir)
  return default_cache_dir(data.resolve_data_dir(data_config.data_dir or None))


def default_cache_dir(tfds_dir: str) -> str:
  """A folder in the TFDS data dir, or ~/.cache/jax_attnshare/prepared.

  The latter where the data dir cannot be written (or is not local).
  """
  if '://' not in tfds_dir and _writable(tfds_dir):
    return os.path.join(tfds_dir, _TFDS_CACHE)
  return os.path.expanduser(_HOME_CACHE)


def _tfds_files(data_config: Any) -> str | None:
  """A digest of the dataset's files in the TFDS data dir; None if absent.

  Their names and sizes: read without tensorflow-datasets, which a machine
  that only trains lacks, and the same on a copy of the folder.
  """
  data_dir = data.resolve_data_dir(data_config.data_dir or None)
  folder = os.path.join(data_dir, data_config.dataset.partition(':')[0])
  if not os.path.isdir(folder):
    return None
  digest = hashlib.sha256()
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(root, name)
      digest.update(f'{os.path.relpath(path, folder)}\0'
                    f'{os.path.getsize(path)}\0'.encode())
  return digest.hexdigest()[:16]


_TFDS_READER = 'tensorflow_datasets'


def source(data_config: Any, read_texts: Callable | None) -> dict | None:
  """Where the texts come from, as far as is known without reading them.

  For tensorflow-datasets (read_texts None): its files in the data dir, or
  None when they are not on this machine. For any other reader (tests'
  fakes): its name.
  """
  if read_texts is not None:
    name = getattr(read_texts, '__qualname__', type(read_texts).__qualname__)
    return {'reader': f'{read_texts.__module__}.{name}'}
  files = _tfds_files(data_config)
  return None if files is None else {'reader': _TFDS_READER, 'files': files}


def _current(prepared_from: dict, now: dict | None) -> bool:
  """Whether an entry prepared from `prepared_from` holds the data `now`.

  Without the dataset's files here (now None), any entry that
  tensorflow-datasets made is taken: a machine that only trains has the
  entry alone.
  """
  if now is None:
    return prepared_from.get('reader') == _TFDS_READER
  return prepared_from == now


@dataclasses.dataclass(frozen=True)
class Entry:
  """A prepared entry: its folder, its meta.json, and the data it holds."""
  path: str
  meta: dict
  dataset: data.TextDataset


def load_or_prepare(data_config: Any,
                    read_texts: Callable | None = None) -> Entry:
  """The entry for data_config's token fields, prepared first if need be.

  read_texts: data.read_tfds_texts's stand-in (tests); None reads the
  dataset through tensorflow-datasets, imported only if the entry must be
  prepared. Raises ValueError naming a bad config.data field, CacheError
  for an entry that cannot be read, and data.DataMissingError when the
  dataset cannot be had.
  """
  data.check_fields(data_config)
  path = os.path.join(cache_dir(data_config), entry_name(data_config))
  now = source(data_config, read_texts)
  if os.path.isdir(path):
    meta = _read_meta(path)
    if _current(meta['source'], now):
      return _read_entry(path, meta, data_config)
    logging.warning('%s was prepared from %s, but the data is now %s: '
                    'preparing it again.', path, meta['source'], now)
    return _prepare(path, data_config, read_texts, replace=True)
  return _prepare(path, data_config, read_texts, replace=False)


def _how_to_rebuild(path: str) -> str:
  return (f'delete {path} and the next run prepares it again (or run '
          'python -m jax_attnshare.prepare with the same --config and '
          'overrides)')


def _unreadable(path: str, file: str, error: Exception) -> CacheError:
  reason = ' '.join(f'{type(error).__name__}: {error}'.split())
  return CacheError(f'{os.path.join(path, file)} is unreadable ({reason}); '
                    f'{_how_to_rebuild(path)}.')


def _read_meta(path: str) -> dict:
  try:
    with open(os.path.join(path, META_FILE), encoding='utf-8') as f:
      meta = json.load(f)
    missing = [k for k in ('source', 'splits', 'prepared') if k not in meta]
    if missing:
      raise KeyError(f'no {", ".join(missing)}')
    return meta
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise _unreadable(path, META_FILE, e) from e


def _misfit(splits: dict[str, data.Split], tokenizer, meta: dict,
            data_config: Any) -> tuple[str, str] | None:
  """(file, what is wrong) if the entry does not fit data_config."""
  vocab_size = data_config.vocab_size
  if tokenizer.get_piece_size() != vocab_size:
    return (data.tokenizer_file_name(data.tokenizer_kind(data_config)),
            f'{tokenizer.get_piece_size()} pieces, not config.data.'
            f'vocab_size={vocab_size}')
  for split, values in splits.items():
    if (values.tokens.shape[1] != data_config.max_length
        or len(values) != meta['splits'].get(split)
        or (len(values) and values.tokens.max() >= vocab_size)):
      return (SPLITS_FILE, f'its {split} tokens {values.tokens.shape} do not '
              f'fit {META_FILE} and config.data')
  return None


def _read_entry(path: str, meta: dict, data_config: Any) -> Entry:
  """The entry's arrays and tokenizer, checked against data_config."""
  start = time.time()
  kind = data.tokenizer_kind(data_config)
  try:
    with np.load(os.path.join(path, SPLITS_FILE), allow_pickle=False) as npz:
      splits = {split: data.Split(npz[f'{split}_tokens'].astype(np.int32),
                                  npz[f'{split}_labels'].astype(np.int32))
                for split in _SPLITS}
  # BadZipFile, zlib.error and EOFError: truncated or damaged (the zip's
  # CRC); KeyError: an array missing; ValueError: not an array, or shapes
  # that disagree.
  except (OSError, zipfile.BadZipFile, zlib.error, EOFError, KeyError,
          ValueError) as e:
    raise _unreadable(path, SPLITS_FILE, e) from e
  file = data.tokenizer_file_name(kind)
  try:
    tokenizer = data.load_tokenizer_file(kind, os.path.join(path, file))
  except (OSError, RuntimeError, ValueError) as e:
    raise _unreadable(path, file, e) from e
  misfit = _misfit(splits, tokenizer, meta, data_config)
  if misfit:
    raise CacheError(f'{os.path.join(path, misfit[0])} is not what it '
                     f'should be ({misfit[1]}); {_how_to_rebuild(path)}.')
  logging.info('Read prepared data %s in %.2fs: %d train, %d test examples '
               '(prepared %s from %s).', path, time.time() - start,
               len(splits['train']), len(splits['test']),
               meta['prepared'].get('time'), meta['source'])
  return Entry(path, meta, data.TextDataset(
      splits['train'], splits['test'], tokenizer, data_config.vocab_size))


def _read_texts(data_config: Any, read_texts: Callable | None,
                path: str) -> data.DatasetTexts:
  """The texts to prepare from, through tensorflow-datasets unless given."""
  if read_texts is None:
    try:
      # pylint: disable-next=g-import-not-at-top,unused-import
      import tensorflow_datasets
    except ImportError as e:
      folder, name = os.path.split(path)
      raise data.DataMissingError(
          f'No prepared data for these config.data fields in {folder} '
          f'({name}), and reading {data_config.dataset} needs '
          f'tensorflow-datasets, which cannot be imported here ({e}). '
          'Prepare it where it can: python -m jax_attnshare.prepare with '
          'the same --config and overrides, and '
          '--config.data.cache_dir=DIR; then copy DIR/'
          f'{name} into {folder} here, or pass '
          '--config.data.cache_dir=DIR.') from e
    read_texts = data.read_tfds_texts
  return data.read_dataset(data_config, read_texts,
                           data_config.tokenizer_train_examples)


def _prepare(path: str, data_config: Any, read_texts: Callable | None,
             replace: bool) -> Entry:
  """Reads the texts, trains the tokenizer, encodes; writes the entry.

  replace: whether an entry at `path` is stale (else it can only be one
  that a concurrent run has just written).
  """
  start = time.time()
  texts = _read_texts(data_config, read_texts, path)
  read_s = time.time() - start
  kind = data.tokenizer_kind(data_config)
  tokenizer, serialized = data.train_tokenizer(
      kind, texts.tokenizer_texts, data_config.vocab_size)
  tokenizer_s = time.time() - start - read_s
  splits = {}
  for split in _SPLITS:
    split_texts = getattr(texts, split)
    tokens = data.encode(tokenizer, split_texts.texts, data_config.max_length)
    splits[split] = data.Split(tokens, split_texts.labels)
    logging.info('Encoded %d %s texts; %.1f%% fill max_length %d.',
                 len(tokens), split, 100 * np.mean(tokens[:, -1] != data.PAD_ID)
                 if len(tokens) else 0.0, data_config.max_length)
  meta = {
      'format': FORMAT, 'fields': token_fields(data_config),
      # After reading: tensorflow-datasets may have just downloaded them.
      'source': source(data_config, read_texts),
      'splits': {split: len(splits[split]) for split in _SPLITS},
      'prepared': {
          'time': time.strftime('%Y-%m-%d %H:%M:%S %z'),
          'host': socket.gethostname(),
          'seconds': {'read': round(read_s, 2),
                      'tokenizer': round(tokenizer_s, 2),
                      'encode': round(time.time() - start - read_s
                                      - tokenizer_s, 2)},
          'versions': workdir_lib.versions(
              ('tensorflow-datasets', 'sentencepiece', 'numpy'))}}
  _write_entry(path, meta, splits, data.tokenizer_file_name(kind),
               serialized, replace)
  logging.info('Prepared %s in %.1fs (reading %.1fs, tokenizer %.1fs).',
               path, time.time() - start, read_s, tokenizer_s)
  return Entry(path, meta, data.TextDataset(
      splits['train'], splits['test'], tokenizer, data_config.vocab_size))


def _write_entry(path: str, meta: dict, splits: dict[str, data.Split],
                 tokenizer_file: str, tokenizer_bytes: bytes,
                 replace: bool) -> None:
  """Writes the entry in a temporary folder and renames it into place.

  replace: move the (stale) entry at `path` away first. Else an entry
  there was renamed into place by a concurrent run since load_or_prepare
  looked, and is kept: it holds the same data.
  """
  parent, name = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.tmp-')
  try:
    # uint16 and compression make the full clean regime's entry (a 16k
    # vocabulary, 50,000 reviews at 256 tokens) 14 MB, not 51, so that it
    # travels with a checkout; reading it takes a quarter second more.
    dtype = np.uint16 if meta['fields']['vocab_size'] <= 2**16 else np.int32
    np.savez_compressed(os.path.join(tmp, SPLITS_FILE), **{
        f'{split}_{array}': getattr(values, array).astype(
            dtype if array == 'tokens' else np.int32)
        for split, values in splits.items()
        for array in ('tokens', 'labels')})
    with open(os.path.join(tmp, tokenizer_file), 'wb') as f:
      f.write(tokenizer_bytes)
    workdir_lib.write_json(os.path.join(tmp, META_FILE), meta)
    if replace and os.path.isdir(path):
      stale = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.stale-')
      os.replace(path, os.path.join(stale, name))
      shutil.rmtree(stale, ignore_errors=True)
    try:
      os.rename(tmp, path)
    except OSError:
      if not os.path.isdir(path):
        raise
      logging.info('%s was prepared meanwhile by another run; it is kept.',
                   path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def copy_tokenizer(entry: Entry, workdir: str, kind: str) -> None:
  """Puts the entry's tokenizer in the workdir, as data.load_tokenizer reads.

  Raises ValueError if the workdir holds another tokenizer: its run was
  trained on other tokens.
  """
  source_path = os.path.join(entry.path, data.tokenizer_file_name(kind))
  with open(source_path, 'rb') as f:
    contents = f.read()
  path = data.tokenizer_path(workdir, kind)
  if os.path.exists(path):
    with open(path, 'rb') as f:
      if f.read() == contents:
        return
    raise ValueError(
        f'{path} differs from the tokenizer of the prepared data '
        f'({source_path}), so the run in {workdir} was trained on other '
        'tokens (a tokenizer trained on another machine, or by an older '
        'version of this code): resume it where it was trained, or use '
        'another --workdir.')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
  with os.fdopen(fd, 'wb') as f:
    f.write(contents)
  os.replace(tmp, path)
