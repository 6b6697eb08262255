"""Seed throughput: S seeds in one step, by precision and attention path.

  python experiments/seed_throughput.py [--config=configs/kv_share.py:cpu]
      [--config.FIELD=VALUE ...] [--seeds=1,5,15] [--steps=10]
      [--variants=float32/explicit,float32/fused,bfloat16/auto,...]
  python experiments/seed_throughput.py --whole_run [--config=...]
  python experiments/seed_throughput.py --estimate_runs=N [--config=...]

Trains on random full-length token batches (no data needed) with the model,
optimizer and batch size of the config (fields overridden as for main). For
each S and each variant (compute dtype / attention path, see
config.model.dtype and config.model.attention) it times the step that main
runs (SeedSteps.train_steps: the config's seed chunks and steps_per_call,
batches gathered on the device), the same with all seeds vmapped at once,
and the same S seeds stepped one after another with the same jitted code
(the step at S=1). Each program (variant, seed count, chunk) is built and
compiled once and serves every row that times it; each timing follows two
warm-up calls (the first compiles; a second would compile again if the
state's sharding changed). Rows print as they are measured; a row that
fails prints its error and the others go on.

It also measures the machine's matmul peak in each compute dtype with the
same JAX (the best of before and after the rows), and the ceiling of one
layer's matmuls alone at the model's shapes, so each row's efficiency is a
ratio of measurements in its own dtype. Ends with the table against the
final peaks and one JSON line.

--whole_run times one condition the way main runs it, without writers,
checkpoints or data reading: config.num_train_steps steps in main's calls,
every evaluation on a random test split of main's size, and the attention
statistics and heatmap maps at each; it prints its progress at each
evaluation, then where the time went.

--estimate_runs=N times the config's own step (its dtype, attention path and
seeds) and prints the training time of N runs of it, which
experiments/blog.sh prints before a full-size grid. Every step is timed at
max_length: with length buckets (the blog regime) it is an upper bound.
"""

import json
import sys
import time
import traceback

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from jax_attnshare import cost
from jax_attnshare import data
from jax_attnshare import model as model_lib
from jax_attnshare import steps as steps_lib
from jax_attnshare import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/kv_share.py:cpu',
    'Config file and arg, as for main; fields overridable with '
    '--config.FIELD=VALUE.')
_SEEDS = flags.DEFINE_list('seeds', ['1', '5', '15'], 'Seed counts S.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per measurement '
                              '(rounded up to whole calls).')
_MATMUL = flags.DEFINE_integer('matmul_size', 2048, 'n of the n x n matmul.')
_VARIANTS = flags.DEFINE_list(
    'variants', ['float32/explicit', 'float32/fused', 'bfloat16/explicit',
                 'bfloat16/fused'],
    'dtype/attention pairs to compare (config.model.dtype / '
    'config.model.attention).')
_ESTIMATE_RUNS = flags.DEFINE_integer(
    'estimate_runs', 0, 'Time the config\'s own step and print the training '
    'time of this many runs of the config.')
_WHOLE_RUN = flags.DEFINE_bool(
    'whole_run', False, 'Time the main-job equivalent of the config (train, '
    'evaluations, statistics) instead of the step table.')

# Reviews in each random split when the config takes all of IMDB's.
IMDB_SPLIT = 25_000


def _say(line: str) -> None:
  """Prints at once: a short accelerator window keeps what it printed."""
  print(line, flush=True)


def _best_seconds(fn, *args, repeats: int) -> float:
  """Fastest of `repeats` calls of jitted fn, after a compile-and-warm-up."""
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def matmul_peak_flops(n: int, dtype: str = 'float32',
                      repeats: int = 10) -> float:
  """Best FLOP/s of an n x n matmul in dtype, jitted."""
  a, b = (jax.random.normal(jax.random.key(i), (n, n), dtype) for i in (0, 1))
  return 2 * n ** 3 / _best_seconds(jax.jit(jnp.dot), a, b, repeats=repeats)


def model_matmul_flops(mcfg, num_seeds: int, batch_size: int, length: int,
                       repeats: int = 30) -> float:
  """Best FLOP/s of one layer's matmuls alone, at the model's shapes.

  The Q, K, V and output projections, Q·Kᵀ, A·V and the FFN of one layer,
  forward and backward (gradients for the weights and the input), vmapped
  over S seeds' weights, in the model's compute dtype, with nothing between
  them: the ceiling that the matmuls of the S-seed training step can reach
  on this machine, whatever its other ops cost.
  """
  b, t, d = batch_size, length, mcfg.width
  h, k, f = mcfg.num_heads, mcfg.head_width, mcfg.ffn_width

  def layer(weights, x_BTD):
    wq, wk, wv, wo, w_in, w_out = weights
    q, kk, v = (jnp.einsum('btd,dhk->bthk', x_BTD, w) for w in (wq, wk, wv))
    a_BHTT = jnp.einsum('bqhk,bthk->bhqt', q, kk)
    o_BTHK = jnp.einsum('bhqt,bthk->bqhk', a_BHTT, v)
    y_BTD = jnp.einsum('bqhk,hkd->bqd', o_BTHK, wo)
    return (y_BTD @ w_in) @ w_out

  def loss(weights, x_BTD, r_BTD):
    # A random cotangent, so no backward matmul is simplified away.
    return (layer(weights, x_BTD) * r_BTD).sum().astype(jnp.float32)

  dtype = mcfg.compute_dtype
  keys = jax.random.split(jax.random.key(0), 8)
  shapes = [(d, h, k)] * 3 + [(h, k, d), (d, f), (f, d)]
  weights = [(jax.random.normal(key, (num_seeds, *s)) / np.sqrt(s[0])).astype(
      dtype) for key, s in zip(keys, shapes)]
  x_BTD, r_BTD = (jax.random.normal(key, (b, t, d), dtype)
                  for key in keys[6:])
  grad = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)),
                          in_axes=(0, None, None)))
  forward = 2 * b * t * (4 * d * d + 2 * t * d + 2 * d * f)
  return 3 * forward * num_seeds / _best_seconds(
      grad, weights, x_BTD, r_BTD, repeats=repeats)


def _time_calls(run_one_call, num_calls: int) -> float:
  # Two warm-up calls: the first compiles, and a second would compile again
  # if the state's sharding after a call differed from init's.
  run_one_call()
  run_one_call()
  start = time.perf_counter()
  for _ in range(num_calls):
    run_one_call()
  return time.perf_counter() - start


def variant_config(config, variant: str):
  """The config with variant 'dtype/attention' applied."""
  dtype, _, attention = variant.partition('/')
  out = config.copy_and_resolve_references()
  out.model.update(dtype=dtype, attention=attention)
  return out


def attention_path(mcfg) -> str:
  """What the step's attention runs: 'explicit', 'fused (xla)', 'auto: ...'."""
  implementation = model_lib.fused_implementation(mcfg)
  if mcfg.attention == 'fused':
    return f'fused ({implementation})'
  if mcfg.attention == 'auto':
    return ('auto: fused (cudnn)' if implementation == 'cudnn'
            else 'auto: explicit')
  return 'explicit'


def _random_split(rng, n: int, vocab_size: int, length: int) -> data.Split:
  """Full-length random reviews: the most attention work per example."""
  return data.Split(rng.integers(1, vocab_size, (n, length), dtype=np.int32),
                    rng.integers(0, 2, (n,), dtype=np.int32))


def _seed_steps(config, num_seeds: int, seed_chunk: int):
  """SeedSteps and model config of the config's model and optimizer."""
  mcfg = train.check_config(config)
  optimizer = steps_lib.make_optimizer(config.opt, config.num_train_steps)
  steps = steps_lib.SeedSteps(model_lib.make_model(mcfg), optimizer,
                              config.data.max_length, num_seeds, False,
                              seed_chunk, config.steps_per_call)
  return mcfg, steps


class Programs:
  """Each timed program built once: its SeedSteps, states and device data.

  Keyed by (variant, seeds, seed chunk): the S=1 program that times S seeds
  in turn serves every S of its variant, and a jitted program compiles on
  its first call only, so rows after the first reuse what it compiled.
  """

  def __init__(self, config):
    self.config = config
    batch_size = config.batch_size
    self.split = _random_split(np.random.default_rng(0), 4 * batch_size,
                               config.data.vocab_size, config.data.max_length)
    self.rows = np.stack([np.arange(batch_size)] * config.steps_per_call)
    self._built = {}

  def seconds(self, variant: str, seeds: int, chunk: int, calls: int,
              replicas: int = 1) -> tuple[model_lib.ModelConfig, float]:
    """Seconds for `calls` calls of `replicas` S-seed states in turn."""
    key = (variant, seeds, chunk)
    if key not in self._built:
      mcfg, steps = _seed_steps(variant_config(self.config, variant), seeds,
                                chunk)
      self._built[key] = (mcfg, steps, [], steps.put_split(self.split),
                          steps.put_rows(self.rows))
    mcfg, steps, states, resident, rows = self._built[key]
    while len(states) < replicas:
      first = len(states) * seeds
      states.append(steps.init(steps_lib.seed_keys(range(first,
                                                         first + seeds))))
    count = self.config.steps_per_call

    def one_call():
      for i in range(replicas):
        states[i], window = steps.train_steps(
            states[i], steps.zero_window(), resident, rows, count)
      window['loss'].block_until_ready()

    return mcfg, _time_calls(one_call, calls)


def measure(programs: Programs, variant: str, num_seeds: int,
            num_steps: int) -> dict:
  """Examples/s of S seeds: the config's step, all vmapped, in turn."""
  config = programs.config
  per_call = config.steps_per_call
  calls = -(-num_steps // per_call)
  examples = num_seeds * config.batch_size * calls * per_call
  chunk = config.seed_chunk
  mcfg, step_s = programs.seconds(variant, num_seeds, chunk, calls)
  vmap_s = (programs.seconds(variant, num_seeds, 0, calls)[1] if chunk
            else step_s)
  sequential_s = (step_s if num_seeds == 1 and not chunk
                  else programs.seconds(variant, 1, 0, calls, num_seeds)[1])
  flops = cost.train_flops_per_example(mcfg, config.data.max_length)
  return {'seeds': num_seeds, 'seed_chunk': chunk, 'dtype': mcfg.dtype,
          'attention': attention_path(mcfg), 'steps_per_call': per_call,
          'step_examples_per_s': examples / step_s,
          'vmap_examples_per_s': examples / vmap_s,
          'sequential_examples_per_s': examples / sequential_s,
          'flops_per_example': flops, 'speedup': sequential_s / step_s,
          'step_flops_per_s': examples * flops / step_s}


def _step_name(config) -> str:
  chunk = config.seed_chunk
  return f'chunks of {chunk}' if chunk else 'all vmapped'


def _table_header(config) -> list[str]:
  return [f'| seeds | dtype | attention | step ({_step_name(config)}) ex/s | '
          'all vmapped ex/s | sequential ex/s | step vs sequential | step '
          'GFLOP/s | of its dtype\'s matmul peak |',
          '|---:|---|---|---:|---:|---:|---:|---:|---:|']


def _table_row(row: dict, peaks: dict[str, float]) -> str:
  if 'error' in row:
    return (f'| {row["seeds"]} | {row["variant"]} | | error: '
            f'{row["error"]} | | | | | |')
  return (f'| {row["seeds"]} | {row["dtype"]} | {row["attention"]} | '
          f'{row["step_examples_per_s"]:.0f} | '
          f'{row["vmap_examples_per_s"]:.0f} | '
          f'{row["sequential_examples_per_s"]:.0f} | {row["speedup"]:.2f}x | '
          f'{row["step_flops_per_s"] / 1e9:.1f} | '
          f'{100 * row["step_flops_per_s"] / peaks[row["dtype"]]:.0f}% |')


def _guarded(measure_row, seeds: int, variant: str) -> dict:
  """measure_row(), or the row of its error: one failure loses one row."""
  try:
    return measure_row()
  # Out of memory, a kernel that does not compile at this size, ...: the
  # other rows still say what they measured.
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc(file=sys.stderr)
    message = str(e).splitlines()[0] if str(e) else ''
    return {'seeds': seeds, 'variant': variant,
            'error': f'{type(e).__name__}: {message}'[:300]}


def step_table(config, seeds: list[int], variants: list[str],
               num_steps: int, matmul_size: int) -> dict:
  """Measures and prints every (S, variant) row, then the summary."""
  dtypes = sorted({v.partition('/')[0] for v in variants})
  peaks = {d: matmul_peak_flops(matmul_size, d) for d in dtypes}
  programs = Programs(config)
  _say(f'config {_config_name()}; device {jax.devices()[0].device_kind}; '
       'matmul peak ' + ', '.join(f'{d} {p / 1e9:.1f} GFLOP/s'
                                  for d, p in peaks.items())
       + f' ({matmul_size}x{matmul_size}, before the rows); the config\'s '
       f'step: {_step_name(config)} (config.seed_chunk={config.seed_chunk}), '
       f'{config.steps_per_call} steps per call')
  for line in _table_header(config):
    _say(line)
  rows = []
  for s in seeds:
    for v in variants:
      row = _guarded(lambda s=s, v=v: measure(programs, v, s, num_steps), s, v)
      rows.append(row)
      _say(_table_row(row, peaks))
  # A shared machine's speed drifts: the best peak of before and after, so
  # a step's fraction of it is never flattered.
  peaks = {d: max(p, matmul_peak_flops(matmul_size, d))
           for d, p in peaks.items()}
  # Seeds vmapped together in the step that main runs (at the largest S).
  together = config.seed_chunk or max(seeds)
  ceilings = {}
  for d in dtypes:
    mcfg = model_lib.model_config(variant_config(config, f'{d}/explicit'),
                                  config.data.vocab_size, 0)
    ceilings[d] = model_matmul_flops(mcfg, together, config.batch_size,
                                     config.data.max_length)
  measured = [r for r in rows if 'error' not in r]
  if measured:
    _say(f'{measured[0]["flops_per_example"] / 1e6:.1f} MFLOP per training '
         'example')
  for d in dtypes:
    _say(f'{d}: matmul peak {peaks[d] / 1e9:.1f} GFLOP/s (best of before and '
         f'after the rows); one layer\'s {d} matmuls alone at the model\'s '
         f'shapes, {together} seed(s) vmapped: {ceilings[d] / 1e9:.1f} '
         f'GFLOP/s = {100 * ceilings[d] / peaks[d]:.0f}% of peak, the most '
         'the step could reach if nothing else cost time')
  for line in _table_header(config) + [_table_row(r, peaks) for r in rows]:
    _say(line)
  result = {'config': _config_name(), 'device': jax.devices()[0].device_kind,
            'matmul_peak_flops_per_s': peaks,
            'matmul_ceiling_flops_per_s': ceilings, 'rows': rows}
  _say(json.dumps(result))
  return result


def whole_run(config) -> dict:
  """Seconds of main's work for the config: train, evaluations, statistics."""
  rng = np.random.default_rng(0)
  length = config.data.max_length
  train_split = _random_split(rng, config.data.train_examples or IMDB_SPLIT,
                              config.data.vocab_size, length)
  test_split = _random_split(rng, config.data.test_examples or IMDB_SPLIT,
                             config.data.vocab_size, length)
  mcfg, steps = _seed_steps(config, config.num_seeds, config.seed_chunk)
  batches = data.TrainBatches(train_split, config.batch_size,
                              config.data.data_seed)
  phase_s = dict.fromkeys(('setup', 'train', 'eval', 'attention_stats'), 0.0)
  start = time.perf_counter()
  state = steps.init(steps_lib.seed_keys(range(config.num_seeds)))
  resident = steps.put_split(train_split)
  test = steps.put_eval_split(test_split, config.eval_batch_size)
  window, step = steps.zero_window(), 0
  jax.block_until_ready((state, resident, test))
  phase_s['setup'] = time.perf_counter() - start
  _say(f'setup {phase_s["setup"]:.1f} s; {config.num_train_steps} steps, '
       f'{len(train.evaluation_steps(config))} evaluations to go')
  while step < config.num_train_steps:
    start = time.perf_counter()
    end = train.call_end(config, batches, step, train.window_end(config, step))
    rows = steps.put_rows(np.stack([batches.rows(s)
                                    for s in range(step, end)]))
    state, window = steps.train_steps(state, window, resident, rows,
                                      end - step)
    step = end
    evaluates = train.evaluates_at(config, step)
    if step % config.log_every_steps == 0 or evaluates or (
        step % config.ckpt_every_steps == 0):
      jax.device_get(window)  # main reads the window's metrics here
      window = steps.zero_window()
    phase_s['train'] += time.perf_counter() - start
    if evaluates:
      start = time.perf_counter()
      steps_lib.evaluate(steps, state.params, test)
      phase_s['eval'] += time.perf_counter() - start
      start = time.perf_counter()
      steps_lib.attention_statistics(
          steps, state.params, test_split.tokens[:config.stats_examples],
          config.stats_batch_size)
      jax.device_get(steps.maps(state.params, steps.put_shared(
          test_split.tokens[config.heatmap_example][None])))
      phase_s['attention_stats'] += time.perf_counter() - start
      examples = step * config.batch_size * config.num_seeds
      _say(f'step {step}: ' + ', '.join(f'{name} {s:.1f} s'
                                        for name, s in phase_s.items())
           + f' so far ({examples / phase_s["train"]:.0f} train examples/s, '
           'compilation included)')
  total = sum(phase_s.values())
  return {'dtype': mcfg.dtype, 'attention': attention_path(mcfg),
          'num_seeds': config.num_seeds,
          'num_train_steps': config.num_train_steps,
          'steps_per_call': config.steps_per_call,
          'evaluations': len(train.evaluation_steps(config)),
          'test_examples': len(test_split), 'wall_s': total,
          'phase_s': phase_s,
          'train_examples_per_s': (config.num_train_steps * config.batch_size
                                   * config.num_seeds / phase_s['train']),
          'eval_and_stats_fraction': (phase_s['eval']
                                      + phase_s['attention_stats']) / total}


def _config_name() -> str:
  return config_flags.get_config_filename(flags.FLAGS['config'])


def _print_whole_run(result: dict) -> None:
  p = result['phase_s']
  _say(f'config {_config_name()}; device '
       f'{jax.devices()[0].device_kind}; {result["dtype"]}, attention '
       f'{result["attention"]}; {result["num_seeds"]} seeds x '
       f'{result["num_train_steps"]} steps ({result["steps_per_call"]} per '
       f'call), {result["evaluations"]} evaluations on '
       f'{result["test_examples"]} random test reviews; no writers, '
       'checkpoints or data reading')
  _say('| wall s | setup s | train s | eval s | statistics s | train ex/s | '
       'eval + statistics |')
  _say('|---:|---:|---:|---:|---:|---:|---:|')
  _say(f'| {result["wall_s"]:.1f} | {p["setup"]:.1f} | {p["train"]:.1f} | '
       f'{p["eval"]:.1f} | {p["attention_stats"]:.1f} | '
       f'{result["train_examples_per_s"]:.0f} | '
       f'{100 * result["eval_and_stats_fraction"]:.0f}% |')
  _say(json.dumps(result))


def _print_estimate(config, num_runs: int) -> None:
  """Training time of num_runs runs of the config, from its measured step."""
  variant = f'{config.model.dtype}/{config.model.attention}'
  row = measure(Programs(config), variant, config.num_seeds, _STEPS.value)
  examples = config.num_train_steps * config.batch_size * config.num_seeds
  train_s = examples / row['step_examples_per_s']
  _say(f'config {_config_name()}; device {jax.devices()[0].device_kind}; '
       f'{row["dtype"]}, {row["attention"]}, {config.num_seeds} seeds: '
       f'{row["step_examples_per_s"]:.0f} examples/s')
  _say(f'Expected: {num_runs} runs x {config.num_train_steps} steps = '
       f'{num_runs * train_s / 60:.1f} min of training '
       f'({train_s / 60:.1f} min per run); evaluations and statistics come '
       'on top (--whole_run times them for one run).')
  if len(data.bucket_lengths(config.data)) > 1:
    _say(f'Every step timed at max_length {config.data.max_length}: with '
         'config.data.bucket_lengths most steps are shorter, so this is an '
         'upper bound (docs/regimes.md: 0.40 of the FLOPs on IMDB).')
  _say(json.dumps({'config': _config_name(), 'runs': num_runs,
                   'train_s_per_run': train_s, **row}))


def _checked_flags(config) -> tuple[list[int], list[str]]:
  """--seeds and --variants, each variant's config checked (ValueError)."""
  train.check_config(config)
  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    seeds = []
  if not seeds or min(seeds) < 1:
    raise ValueError(f'--seeds must be positive integers, got '
                     f'{",".join(_SEEDS.value)!r}.')
  for variant in _VARIANTS.value:
    if variant.count('/') != 1:
      raise ValueError(f'--variants: {variant!r} is not dtype/attention '
                       '(e.g. bfloat16/auto).')
    model_lib.model_config(variant_config(config, variant),
                           config.data.vocab_size, 0)
  return seeds, list(_VARIANTS.value)


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    seeds, variants = _checked_flags(config)
  except ValueError as e:
    print(f'seed_throughput.py: {e}', file=sys.stderr)
    sys.exit(2)
  if _WHOLE_RUN.value:
    _print_whole_run(whole_run(config))
  elif _ESTIMATE_RUNS.value:
    _print_estimate(config, _ESTIMATE_RUNS.value)
  else:
    step_table(config, seeds, variants, _STEPS.value, _MATMUL.value)


if __name__ == '__main__':
  app.run(main)
