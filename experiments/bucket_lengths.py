"""Padding against compiled shapes: length-bucket sets on IMDB's words.

  TFDS_DATA_DIR=... python experiments/bucket_lengths.py
      [--config=configs/no_share.py:regime=blog] [--config.FIELD=VALUE ...]

Reads the config's dataset and counts each review's tokens as the blog
regime's tokenizer makes them (lower-cased whitespace words; the vocabulary
does not change the count), truncated at config.data.max_length. For each
candidate set of bucket lengths (powers of two, geometric ratios, quantiles
of the training lengths, and for each number of lengths the set on a grid of
16 that pads the training reviews least, found exactly by dynamic
programming) it prints the share of padded positions when every review is
padded to its smallest bucket, the mean positions per review, and the
training FLOPs per review relative to a fixed max_length (cost.py's count at
the config's model). The config's own set is then measured on
data.TrainBatches' schedule (batches of config.batch_size, leftovers carried
to the next bucket) over one epoch, and on the test split as evaluation
batches it.
"""

from absl import app
from ml_collections import config_flags
import numpy as np

from jax_attnshare import cost
from jax_attnshare import data
from jax_attnshare import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/no_share.py:regime=blog',
    'Config file and arg, as for main; fields overridable with '
    '--config.FIELD=VALUE.')
# Bucket lengths are multiples of this (tiles of accelerator matmuls).
GRID = 16


def least_padding(lengths_N: np.ndarray, num_buckets: int,
                  max_length: int) -> tuple[int, ...]:
  """The num_buckets lengths on the grid (the last max_length) that pad
  lengths_N least, by dynamic programming over the last bucket's length."""
  candidates = sorted(set(range(GRID, max_length, GRID)) | {max_length})
  count = np.bincount(lengths_N, minlength=max_length + 1).astype(float)
  reviews = np.concatenate([[0], np.cumsum(count)])
  tokens = np.concatenate([[0], np.cumsum(count * np.arange(max_length + 1))])

  def padding(low: int, high: int) -> float:
    """Padding of the reviews longer than low, up to high, padded to high."""
    n = reviews[high + 1] - reviews[low + 1]
    return n * high - (tokens[high + 1] - tokens[low + 1])

  # best[j]: (padding, lengths) of the best set ending at candidates[j].
  best = [(padding(0, c), (c,)) for c in candidates]
  for _ in range(num_buckets - 1):
    best = [min(((pad + padding(candidates[i], c), kept + (c,))
                 for i, (pad, kept) in enumerate(best[:j])),
                default=(np.inf, ()))
            for j, c in enumerate(candidates)]
  return best[-1][1]


def candidates(lengths_N: np.ndarray, max_length: int) -> dict[str, tuple]:
  sets = {'fixed max_length': (max_length,)}
  for first in (64, 128):
    sets[f'powers of two from {first}'] = tuple(
        2 ** k for k in range(first.bit_length() - 1,
                              max_length.bit_length()) if 2 ** k < max_length
    ) + (max_length,)
  for ratio in (1.25, 1.4):
    grid = [64.0]
    while grid[-1] * ratio < max_length:
      grid.append(grid[-1] * ratio)
    sets[f'geometric x{ratio} from 64'] = tuple(
        int(round(x)) for x in grid) + (max_length,)
  for k in (4, 8):
    quantiles = np.quantile(lengths_N, np.arange(1, k) / k)
    sets[f'{k} quantiles'] = tuple(int(np.ceil(q)) for q in quantiles) + (
        max_length,)
  for k in (4, 6, 8, 10, 12):
    sets[f'least padding, {k} lengths'] = least_padding(lengths_N, k,
                                                        max_length)
  return sets


def describe(lengths_N, buckets, model_config) -> tuple[float, float, float]:
  """Padding share, positions per review, FLOPs relative to max_length."""
  padded_N = np.asarray(buckets)[np.searchsorted(buckets, lengths_N)]
  flops = {b: cost.train_flops_per_example(model_config, b) for b in buckets}
  full = cost.train_flops_per_example(model_config, buckets[-1])
  return (1 - lengths_N.sum() / padded_N.sum(), padded_N.mean(),
          np.mean([flops[b] for b in padded_N]) / full)


def main(argv):
  del argv
  config = _CONFIG.value
  model_config = train.check_config(config)
  max_length = config.data.max_length
  texts = data.read_dataset(config.data)
  lengths = {name: np.minimum([len(data.clean_text(t).lower().split())
                               for t in split.texts], max_length)
             for name, split in (('train', texts.train), ('test', texts.test))}
  train_N = lengths['train']
  print(f'{len(train_N)} training reviews, words: median '
        f'{np.median(train_N):.0f}, mean {train_N.mean():.1f} (truncated '
        f'at {max_length}); {100 * (train_N == max_length).mean():.1f}% '
        'truncated')
  print('| bucket lengths | shapes | padding | positions per review | '
        'training FLOPs vs fixed |')
  print('|---|---:|---:|---:|---:|')
  for name, buckets in candidates(train_N, max_length).items():
    pad, positions, flops = describe(train_N, buckets, model_config)
    print(f'| {name}: {",".join(map(str, buckets))} | {len(buckets)} | '
          f'{100 * pad:.1f}% | {positions:.0f} | {flops:.2f} |')
  buckets = data.bucket_lengths(config.data)
  # One token per word: the padding of encoded reviews, without a tokenizer.
  tokens = {name: (np.arange(max_length)[None] < n[:, None]).astype(np.int32)
            for name, n in lengths.items()}
  batches = data.TrainBatches(
      data.Split(tokens['train'], np.zeros(len(train_N), np.int32)),
      config.batch_size, config.data.data_seed, buckets=buckets,
      run_steps=data.bucket_run_steps(config.data))
  real, positions = batches.positions(0, batches.steps_per_epoch)
  test = data.Split(tokens['test'], np.zeros(len(tokens['test']), np.int32))
  # Rows that fill each bucket's last evaluation batch cost compute, but no
  # review sees them.
  eval_positions = sum(
      len(list(data.eval_batches(p, config.eval_batch_size)))
      * config.eval_batch_size * p.tokens.shape[1]
      for p in data.by_bucket(test, buckets))
  test_pad = describe(lengths['test'], buckets, model_config)[0]
  print(f'config.data.bucket_lengths={",".join(map(str, buckets))}: '
        f'training batches of {config.batch_size} over one epoch pad '
        f'{100 * (1 - real / positions):.1f}% ({positions:.0f} positions '
        f'per review); test reviews pad {100 * test_pad:.1f}%, and '
        f'{100 * (1 - lengths["test"].sum() / eval_positions):.1f}% of the '
        f'evaluation batches of {config.eval_batch_size} is padding, fill '
        'rows included')


if __name__ == '__main__':
  app.run(main)
