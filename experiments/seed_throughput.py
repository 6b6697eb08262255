"""Seed throughput: S seeds in one vmapped step versus one after another.

  python experiments/seed_throughput.py [--config=configs/kv_share.py:cpu]
      [--seeds=1,5,15] [--steps=10]

Trains on random full-length token batches (no data needed) with the model,
optimizer and batch size of the config. For each S it times one jitted
S-seed step with all seeds vmapped at once, the same step in the config's
chunks of seeds (config.seed_chunk, see steps_lib.over_seeds; the step that main
runs), and the same S seeds stepped one after another with the same jitted
code (the step at S=1), each after a compile-and-warm-up step. It also
measures the machine's float32 matmul peak with the same JAX (the best of
before and after the steps), and the
ceiling of the step's matmuls alone at the model's shapes, so the step's
efficiency is a ratio of measurements. Prints a table and one JSON line.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jax_attnshare import configs
from jax_attnshare import cost
from jax_attnshare import model as model_lib
from jax_attnshare import steps as steps_lib

_CONFIG = flags.DEFINE_string('config', 'configs/kv_share.py:cpu',
                              'Config file and arg, as for main.')
_SEEDS = flags.DEFINE_list('seeds', ['1', '5', '15'], 'Seed counts S.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.')
_MATMUL = flags.DEFINE_integer('matmul_size', 2048, 'n of the n x n matmul.')


def _best_seconds(fn, *args, repeats: int) -> float:
  """Fastest of `repeats` calls of jitted fn, after a compile-and-warm-up."""
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def matmul_peak_flops(n: int, repeats: int = 10) -> float:
  """Best float32 FLOP/s of an n x n matmul, jitted."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  return 2 * n ** 3 / _best_seconds(jax.jit(jnp.dot), a, b, repeats=repeats)


def model_matmul_flops(mcfg, num_seeds: int, batch_size: int, length: int,
                       repeats: int = 30) -> float:
  """Best FLOP/s of one layer's matmuls alone, at the model's shapes.

  The Q, K, V and output projections, Q·Kᵀ, A·V and the FFN of one layer,
  forward and backward (gradients for the weights and the input), vmapped
  over S seeds' weights, with nothing between them: the ceiling that the
  matmuls of the S-seed training step can reach on this machine, whatever
  its other ops cost.
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
    return (layer(weights, x_BTD) * r_BTD).sum()

  keys = jax.random.split(jax.random.key(0), 8)
  shapes = [(d, h, k)] * 3 + [(h, k, d), (d, f), (f, d)]
  weights = [jax.random.normal(key, (num_seeds, *s)) / np.sqrt(s[0])
             for key, s in zip(keys, shapes)]
  x_BTD, r_BTD = (jax.random.normal(key, (b, t, d)) for key in keys[6:])
  grad = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)),
                          in_axes=(0, None, None)))
  forward = 2 * b * t * (4 * d * d + 2 * t * d + 2 * d * f)
  return 3 * forward * num_seeds / _best_seconds(
      grad, weights, x_BTD, r_BTD, repeats=repeats)


def _time_steps(run_one_step, num_steps: int) -> float:
  run_one_step()  # Compile and warm up.
  start = time.perf_counter()
  for _ in range(num_steps):
    run_one_step()
  return time.perf_counter() - start


def measure(config, num_seeds: int, num_steps: int) -> dict:
  """Examples/s of S seeds: all vmapped, in the config's chunks, in turn."""
  mcfg = model_lib.model_config(config, config.data.vocab_size, 0)
  model = model_lib.make_model(mcfg)
  optimizer = steps_lib.make_optimizer(config.opt, config.num_train_steps)
  length, batch_size = config.data.max_length, config.batch_size
  rng = np.random.default_rng(0)
  batch = {'tokens': rng.integers(1, mcfg.vocab_size, (batch_size, length),
                                  dtype=np.int32),
           'labels': rng.integers(0, 2, (batch_size,), dtype=np.int32)}
  seeds = list(range(num_seeds))
  examples = num_seeds * batch_size * num_steps

  def seed_step(chunk: int) -> float:
    steps = steps_lib.SeedSteps(model, optimizer, length, num_seeds, False, chunk)
    state = [steps.init(steps_lib.seed_keys(seeds))]
    device_batch = steps.put_batch(batch)

    def one_step():
      state[0], m = steps.train(state[0], device_batch)
      m['loss'].block_until_ready()

    return examples / _time_steps(one_step, num_steps)

  one = steps_lib.SeedSteps(model, optimizer, length, 1, False)
  states = [one.init(steps_lib.seed_keys([s])) for s in seeds]
  device_batch = one.put_batch(batch)

  def sequential():
    for i, s in enumerate(states):
      states[i], m = one.train(s, device_batch)
    m['loss'].block_until_ready()

  chunk = config.seed_chunk
  row = {'seeds': num_seeds, 'seed_chunk': chunk,
         'vmap_examples_per_s': seed_step(0),
         'sequential_examples_per_s': examples / _time_steps(sequential,
                                                             num_steps)}
  # The step main runs: all seeds vmapped, or the config's chunks of them.
  row['step_examples_per_s'] = (seed_step(chunk) if chunk
                                else row['vmap_examples_per_s'])
  flops = cost.train_flops_per_example(mcfg, length)
  row.update(flops_per_example=flops,
             speedup=(row['step_examples_per_s']
                      / row['sequential_examples_per_s']),
             step_flops_per_s=row['step_examples_per_s'] * flops)
  return row


def main(argv):
  del argv
  config = configs.load_config(_CONFIG.value)
  peak = matmul_peak_flops(_MATMUL.value)
  rows = [measure(config, int(s), _STEPS.value) for s in _SEEDS.value]
  # A shared machine's speed drifts: the best peak of before and after, so
  # the step's fraction of it is never flattered.
  peak = max(peak, matmul_peak_flops(_MATMUL.value))
  chunk = config.seed_chunk
  # Seeds vmapped together in the step that main runs (at the largest S).
  together = chunk or max(r['seeds'] for r in rows)
  ceiling = model_matmul_flops(
      model_lib.model_config(config, config.data.vocab_size, 0), together,
      config.batch_size, config.data.max_length)
  step = f'chunks of {chunk}' if chunk else 'all vmapped'
  print(f'config {_CONFIG.value}; device {jax.devices()[0].device_kind}; '
        f'float32 matmul peak {peak / 1e9:.1f} GFLOP/s '
        f'({_MATMUL.value}x{_MATMUL.value}); '
        f'{rows[0]["flops_per_example"] / 1e6:.1f} MFLOP per training '
        f'example; the config\'s step: {step} (config.seed_chunk={chunk})')
  print(f'matmul ceiling: one layer\'s matmuls alone at the model\'s shapes, '
        f'{together} seed(s) vmapped: {ceiling / 1e9:.1f} GFLOP/s = '
        f'{100 * ceiling / peak:.0f}% of peak, the most the step could reach '
        'if nothing else cost time')
  print(f'| seeds | all vmapped ex/s | step ({step}) ex/s | sequential ex/s | '
        'step vs sequential | step GFLOP/s | of peak |')
  print('|---:|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f'| {r["seeds"]} | {r["vmap_examples_per_s"]:.0f} | '
          f'{r["step_examples_per_s"]:.0f} | '
          f'{r["sequential_examples_per_s"]:.0f} | {r["speedup"]:.2f}x | '
          f'{r["step_flops_per_s"] / 1e9:.1f} | '
          f'{100 * r["step_flops_per_s"] / peak:.0f}% |')
  print(json.dumps({'config': _CONFIG.value,
                    'device': jax.devices()[0].device_kind,
                    'matmul_peak_flops_per_s': peak,
                    'matmul_ceiling_flops_per_s': ceiling, 'rows': rows}))


if __name__ == '__main__':
  app.run(main)
