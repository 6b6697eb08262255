"""Seed-vmapped steps: replica i equals a single run with seed i."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jax_attnshare import data
from jax_attnshare import model as model_lib
from jax_attnshare import sharing
from jax_attnshare import steps as steps_lib

jax.config.update('jax_numpy_rank_promotion', 'raise')

S, B, T, V = 3, 4, 8, 30
SEEDS = [7, 11, 12]


def _model():
  spec = sharing.SharingSpec(num_layers=2, components=('key',),
                             layer_groups=((0, 1),))
  return model_lib.Classifier(model_lib.ModelConfig(
      vocab_size=V, max_length=T, sharing=spec, width=16, num_layers=2,
      num_heads=2, ffn_width=32, dropout_rate=0.1))


def _opt(**kw):
  base = dict(name='adamw', learning_rate=1e-2, warmup_steps=2,
              schedule='cosine', weight_decay=0.01, clip_norm=1.0, b1=0.9,
              b2=0.999)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _batch(rng, shape):
  tokens = rng.integers(1, V, size=shape + (T,)).astype(np.int32)
  tokens[..., T - 2:] = 0  # Some padding.
  return {'tokens': tokens,
          'labels': rng.integers(0, 2, size=shape).astype(np.int32)}


# seed_chunk 0: one vmap over the 3 seeds; 2: chunks of 2 and 1 in turn
# (with per-seed batches, which the chunks must slice with the states; a
# shared batch through chunks is covered by the eval test below).
@pytest.mark.parametrize('per_seed,seed_chunk',
                         [(False, 0), (True, 0), (True, 2)])
def test_replica_equals_single_seed_run(per_seed, seed_chunk):
  model, optimizer = _model(), steps_lib.make_optimizer(_opt(), 10)
  steps = steps_lib.SeedSteps(model, optimizer, T, S, per_seed_batches=per_seed,
                              seed_chunk=seed_chunk)
  rng = np.random.default_rng(0)
  batches = [_batch(rng, (S, B) if per_seed else (B,)) for _ in range(3)]
  state = steps.init(steps_lib.seed_keys(SEEDS))
  for batch in batches:
    state, metrics_S = steps.train(state, steps.put_batch(batch))
  assert metrics_S['loss'].shape == (S,)
  single_step = jax.jit(steps_lib.train_step)
  for i, seed in enumerate(SEEDS):
    single = steps_lib.init_state(jax.random.key(seed), model, optimizer, T)
    for batch in batches:
      single, metrics = single_step(
          single, jax.tree.map(lambda x: x[i], batch) if per_seed else batch)
    np.testing.assert_allclose(metrics_S['loss'][i], metrics['loss'],
                               rtol=1e-5)
    for got, want in zip(jax.tree.leaves(state.params),
                         jax.tree.leaves(single.params)):
      np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_seed_chunks_give_the_vmapped_eval_and_statistics():
  model, optimizer = _model(), steps_lib.make_optimizer(_opt(), 10)
  vmapped, chunked = (steps_lib.SeedSteps(model, optimizer, T, S, False, chunk)
                      for chunk in (0, 2))
  params = vmapped.init(steps_lib.seed_keys(SEEDS)).params
  tokens = _batch(np.random.default_rng(1), (B,))['tokens']
  batch = {'tokens': tokens, 'labels': np.ones(B, np.int32),
           'weights': np.ones(B, np.float32)}
  for name in ('eval', 'stats', 'maps'):
    args = (params, batch if name == 'eval' else tokens)
    for got, want in zip(jax.tree.leaves(getattr(chunked, name)(*args)),
                         jax.tree.leaves(getattr(vmapped, name)(*args))):
      assert got.shape[0] == S
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _split(rng, n=40):
  return data.Split(_batch(rng, (n,))['tokens'],
                    rng.integers(0, 2, size=n).astype(np.int32))


@pytest.mark.parametrize('per_seed', [False, True])
def test_device_batches_equal_train_batches(per_seed):
  steps = steps_lib.SeedSteps(_model(), steps_lib.make_optimizer(_opt(), 10),
                              T, S, per_seed, steps_per_call=4)
  split = _split(np.random.default_rng(3))
  batches = data.TrainBatches(split, B, 0, SEEDS if per_seed else None)
  resident = steps.put_split(split)
  # Steps 8..10 cross the epoch boundary (10 steps per epoch).
  rows = steps.put_rows(np.stack([batches.rows(s) for s in range(8, 11)]))
  assert rows.shape[0] == 4
  for i, step in enumerate(range(8, 11)):
    got = jax.device_get(steps_lib.gather_batch(resident, rows[i]))
    for name, want in batches(step).items():
      np.testing.assert_array_equal(got[name], want)


@pytest.mark.parametrize('per_seed,seed_chunk', [(False, 0), (True, 2)])
def test_steps_per_call_give_the_state_of_one_step_per_call(per_seed,
                                                            seed_chunk):
  model, optimizer = _model(), steps_lib.make_optimizer(_opt(), 10)
  split = _split(np.random.default_rng(4))
  batches = data.TrainBatches(split, B, 0, SEEDS if per_seed else None)
  finals = []
  for steps_per_call in (1, 3):
    steps = steps_lib.SeedSteps(model, optimizer, T, S, per_seed, seed_chunk,
                                steps_per_call)
    state, window = steps.init(steps_lib.seed_keys(SEEDS)), steps.zero_window()
    resident, step = steps.put_split(split), 0
    while step < 7:  # Calls of 3, 3 and 1 steps.
      end = min(step + steps_per_call, 7)
      rows = steps.put_rows(np.stack([batches.rows(s)
                                      for s in range(step, end)]))
      state, window = steps.train_steps(state, window, resident, rows,
                                        end - step)
      step = end
    finals.append(jax.device_get((state.step, state.params, state.opt_state,
                                  window)))
  assert finals[1][0][0] == 7
  for got, want in zip(*map(jax.tree.leaves, finals)):
    np.testing.assert_array_equal(got, want)
  # And the same as the one-step jitted step on host batches.
  steps = steps_lib.SeedSteps(model, optimizer, T, S, per_seed, seed_chunk)
  state = steps.init(steps_lib.seed_keys(SEEDS))
  for step in range(7):
    state, _ = steps.train(state, steps.put_batch(batches(step)))
  for got, want in zip(jax.tree.leaves(jax.device_get(state.params)),
                       jax.tree.leaves(finals[1][1])):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_scanned_steps_run_without_the_host():
  """No conditional and only loops of known trip count in the program.

  XLA:GPU copies a conditional's predicate, and the condition of a loop
  whose trip count it does not know, to the host at every execution: one
  round trip per step inside the scan.
  """
  steps = steps_lib.SeedSteps(_model(), steps_lib.make_optimizer(_opt(), 10),
                              T, S, False, steps_per_call=3)
  state, window = steps.init(steps_lib.seed_keys(SEEDS)), steps.zero_window()
  split = steps.put_split(_split(np.random.default_rng(6)))
  hlo = steps.scanned_steps.lower(
      state, window, split, steps.put_rows(np.zeros((3, B), np.int32)), 0,
      steps=3, length=None).compile().as_text()
  assert 'conditional' not in hlo
  loops = re.findall(r'.* while\(.*', hlo)
  trip_counts = [re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop)
                 for loop in loops]
  assert all(trip_counts), [l for l, n in zip(loops, trip_counts) if not n]
  # The scan over the call's steps is one of them.
  assert '3' in {n[1] for n in trip_counts}


def test_resident_evaluation_sums_the_eval_batches():
  model, optimizer = _model(), steps_lib.make_optimizer(_opt(), 10)
  steps = steps_lib.SeedSteps(model, optimizer, T, S, False, seed_chunk=2)
  params = steps.init(steps_lib.seed_keys(SEEDS)).params
  split = _split(np.random.default_rng(5), n=11)  # Batches of 4, 4 and 3.
  got = steps_lib.evaluate(steps, params, steps.put_eval_split(split, B))
  sums = [jax.device_get(steps.eval(params, batch))
          for batch in data.eval_batches(split, B)]
  total = jax.tree.map(lambda *xs: sum(xs), *sums)
  np.testing.assert_allclose(got['accuracy'],
                             total['correct'] / total['count'], rtol=1e-6)
  np.testing.assert_allclose(got['loss'], total['loss_sum'] / total['count'],
                             rtol=1e-6)
  assert total['count'][0] == 11


def _unmasked_model():
  """Attends to padding, as the blog regime: a review's bucket matters."""
  spec = sharing.SharingSpec(num_layers=2, components=('key',),
                             layer_groups=((0, 1),))
  return model_lib.Classifier(model_lib.ModelConfig(
      vocab_size=V, max_length=T, sharing=spec, width=16, num_layers=2,
      num_heads=2, ffn_width=32, padding_mask=False, pooling_mask=False))


def _split_of_lengths(rng, n):
  """Reviews of 1 to T tokens, then padding."""
  tokens = rng.integers(1, V, size=(n, T)).astype(np.int32)
  lengths = rng.integers(1, T + 1, size=n)
  tokens[np.arange(T)[None] >= lengths[:, None]] = data.PAD_ID
  return data.Split(tokens, rng.integers(0, 2, size=n).astype(np.int32))


BUCKETS = (3, 5, T)


def _unmasked_steps():
  """Shared-batch SeedSteps of the unmasked model and its initial params."""
  steps = steps_lib.SeedSteps(_unmasked_model(),
                              steps_lib.make_optimizer(_opt(), 10), T, S,
                              False)
  return steps, steps.init(steps_lib.seed_keys(SEEDS)).params


def test_bucketed_device_batches_equal_train_batches():
  steps = steps_lib.SeedSteps(_unmasked_model(),
                              steps_lib.make_optimizer(_opt(), 10), T, S,
                              True, steps_per_call=2)
  split = _split_of_lengths(np.random.default_rng(3), 40)
  batches = data.TrainBatches(split, B, 0, SEEDS, BUCKETS, run_steps=2)
  resident = steps.put_split(split)
  for step in range(12):
    length = batches.length(step)
    rows = steps.put_rows(batches.rows(step)[None])
    got = jax.device_get(steps_lib.gather_batch(resident, rows[0], length))
    for name, want in batches(step).items():
      np.testing.assert_array_equal(got[name], want)


def test_resident_evaluation_by_bucket_sums_each_buckets_batches():
  steps, params = _unmasked_steps()
  split = _split_of_lengths(np.random.default_rng(5), 13)
  got = steps_lib.evaluate(steps,
                           params, steps.put_eval_split(split, B, BUCKETS))
  # Each review alone at its own bucket's length.
  bucket_N = data.bucket_index(split.tokens, BUCKETS)
  correct = np.zeros(S)
  for tokens, label, b in zip(split.tokens, split.labels, bucket_N):
    out = steps.eval(params, {'tokens': tokens[None, :BUCKETS[b]],
                              'labels': label[None],
                              'weights': np.ones(1, np.float32)})
    correct += jax.device_get(out['correct'])
  np.testing.assert_allclose(got['accuracy'], correct / 13)
  unbucketed = steps_lib.evaluate(steps, params, steps.put_eval_split(split, B))
  # Padding changes what the unmasked model computes.
  assert not np.allclose(got['loss'], unbucketed['loss'])


def test_bucketed_statistics_are_the_mean_over_reviews_at_their_buckets():
  steps, params = _unmasked_steps()
  tokens = _split_of_lengths(np.random.default_rng(6), 10).tokens
  got = steps_lib.attention_statistics(steps, params, tokens, 4, BUCKETS)
  bucket_N = data.bucket_index(tokens, BUCKETS)
  alone = [jax.device_get(steps.stats(params, t[None, :BUCKETS[b]]))
           for t, b in zip(tokens, bucket_N)]
  for name in ('entropy', 'padding_mass', 'head_correlation', 'js_adjacent',
               'sparsity_all_tokens_rel_1'):
    np.testing.assert_allclose(
        got[name], np.mean([a[name] for a in alone], axis=0), rtol=1e-5,
        atol=1e-6, err_msg=name)


def test_unbucketed_statistics_are_the_plain_mean_of_equal_chunks():
  steps, params = _unmasked_steps()
  tokens = _split_of_lengths(np.random.default_rng(6), 12).tokens
  got = steps_lib.attention_statistics(steps, params, tokens, 4)
  chunks = [jax.device_get(steps.stats(params, tokens[i:i + 4]))
            for i in range(0, 12, 4)]
  want = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *chunks)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_too_many_steps_for_one_call_are_refused():
  steps = steps_lib.SeedSteps(_model(), steps_lib.make_optimizer(_opt(), 10),
                              T, S, False, steps_per_call=2)
  with pytest.raises(ValueError, match='steps_per_call=2'):
    steps.put_rows(np.zeros((3, B), np.int32))


def test_negative_seed_chunk_names_the_field():
  with pytest.raises(ValueError, match='config.seed_chunk'):
    steps_lib.SeedSteps(_model(), steps_lib.make_optimizer(_opt(), 10), T, S, False,
                        seed_chunk=-1)


def test_zero_steps_per_call_names_the_field():
  with pytest.raises(ValueError, match='config.steps_per_call'):
    steps_lib.SeedSteps(_model(), steps_lib.make_optimizer(_opt(), 10), T, S,
                        False, steps_per_call=0)


@pytest.mark.parametrize('num_seeds,devices,layout', [
    (15, 8, (16, 2, 1)), (4, 2, (4, 2, 0)), (3, 1, (3, 3, 0)),
    (1, 4, (4, 1, 3))])
def test_seed_layout_pads_to_a_multiple_of_the_devices(num_seeds, devices,
                                                       layout):
  got = steps_lib.seed_layout(num_seeds, devices)
  assert (got.padded_seeds, got.seeds_per_device, got.padding) == layout
  assert got.describe() == {'devices': devices, 'seeds_per_device': layout[1],
                            'padding': layout[2]}
  np.testing.assert_array_equal(got.pad_index()[:num_seeds],
                                np.arange(num_seeds))


def test_seed_keys_are_the_single_seed_keys_and_differ():
  keys = steps_lib.seed_keys(SEEDS)
  for i, seed in enumerate(SEEDS):
    np.testing.assert_array_equal(jax.random.key_data(keys[i]),
                                  jax.random.key_data(jax.random.key(seed)))
  model, optimizer = _model(), steps_lib.make_optimizer(_opt(), 10)
  state = jax.vmap(lambda k: steps_lib.init_state(k, model, optimizer, T))(keys)
  kernel = state.params['encoder']['shared_key_g0']['kernel']
  assert not np.allclose(kernel[0], kernel[1])


def test_overfits_one_batch():
  model, optimizer = _model(), steps_lib.make_optimizer(
      _opt(warmup_steps=0, schedule='constant'), 30)
  state = steps_lib.init_state(jax.random.key(0), model, optimizer, T)
  batch = _batch(np.random.default_rng(1), (B,))
  step = jax.jit(steps_lib.train_step)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.2 * losses[0]


def test_eval_step_ignores_padding_rows():
  model = _model()
  params = model.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32))[
      'params']
  batch = _batch(np.random.default_rng(2), (B,))
  weights = np.array([1, 1, 0, 0], np.float32)
  out = steps_lib.eval_step(params, {**batch, 'weights': weights}, model)
  half = {k: v[:2] for k, v in batch.items()}
  ref = steps_lib.eval_step(params, {**half, 'weights': weights[:2]}, model)
  for key in ('loss_sum', 'correct', 'count'):
    np.testing.assert_allclose(out[key], ref[key], rtol=1e-5)


@pytest.mark.parametrize('field,value', [
    ('name', 'sgd'), ('schedule', 'step'), ('warmup_steps', 11)])
def test_bad_optimizer_fields_name_the_field(field, value):
  with pytest.raises(ValueError, match=f'config.opt.{field}'):
    steps_lib.make_optimizer(_opt(**{field: value}), 10)


_TWO_DEVICE_SCRIPT = '''
import jax, numpy as np
from jax_attnshare import data, model as model_lib, sharing, steps as steps_lib
import ml_collections
assert jax.device_count() == 2
spec = sharing.SharingSpec(num_layers=1, components=("key",),
                           layer_groups=((0,),))
model = model_lib.Classifier(model_lib.ModelConfig(
    vocab_size=20, max_length=8, sharing=spec, width=8, num_layers=1,
    num_heads=2, ffn_width=16))
opt = steps_lib.make_optimizer(ml_collections.ConfigDict(dict(
    name="adam", learning_rate=1e-2, warmup_steps=0, schedule="constant",
    weight_decay=0.0, clip_norm=1.0, b1=0.9, b2=0.999)), 5)
batch = {"tokens": np.arange(1, 17, dtype=np.int32).reshape(2, 8),
         "labels": np.array([0, 1], np.int32)}
steps = steps_lib.SeedSteps(model, opt, 8, 4, per_seed_batches=False)
state = steps.init(steps_lib.seed_keys([0, 1, 2, 3]))
state, _ = steps.train(state, steps.put_batch(batch))
kernel = state.params["encoder"]["shared_key_g0"]["kernel"]
assert len(kernel.sharding.device_set) == 2, kernel.sharding
single = steps_lib.init_state(jax.random.key(3), model, opt, 8)
single, _ = jax.jit(steps_lib.train_step)(single, batch)
np.testing.assert_allclose(
    kernel[3], single.params["encoder"]["shared_key_g0"]["kernel"],
    rtol=1e-5, atol=1e-6)
# 3 seeds on 2 devices: padded with a repeat of replica 0, in chunks of 1
# on each device, with per-seed batches.
chunked = steps_lib.SeedSteps(model, opt, 8, 3, per_seed_batches=True,
                              seed_chunk=1)
assert chunked.layout.describe() == {
    "devices": 2, "seeds_per_device": 2, "padding": 1}
batches = {k: np.stack([v, v[::-1], v[::-1] + 1]) for k, v in batch.items()}
state = chunked.init(steps_lib.seed_keys([0, 1, 3]))
state, metrics = chunked.train(state, chunked.put_batch(batches))
assert metrics["loss"].shape == (4,)
assert chunked.real(jax.device_get(metrics))["loss"].shape == (3,)
real = chunked.real(jax.device_get(state))
kernel = real.params["encoder"]["shared_key_g0"]["kernel"]
assert kernel.shape[0] == 3
single = steps_lib.init_state(jax.random.key(3), model, opt, 8)
single, _ = jax.jit(steps_lib.train_step)(
    single, {k: v[2] for k, v in batches.items()})
np.testing.assert_allclose(
    kernel[2], single.params["encoder"]["shared_key_g0"]["kernel"],
    rtol=1e-5, atol=1e-6)
# The same replica through train_steps: rows gathered on the devices.
split = data.Split(batches["tokens"][2], batches["labels"][2])
calls = steps_lib.SeedSteps(model, opt, 8, 3, per_seed_batches=True,
                            seed_chunk=1, steps_per_call=2)
state = calls.init(steps_lib.seed_keys([0, 1, 3]))
rows = np.zeros((1, 3, 2), np.int32) + np.arange(2, dtype=np.int32)
state, window = calls.train_steps(state, calls.zero_window(),
                                  calls.put_split(split), calls.put_rows(rows),
                                  1)
kernel = calls.real(jax.device_get(state)).params["encoder"][
    "shared_key_g0"]["kernel"]
np.testing.assert_allclose(
    kernel[2], single.params["encoder"]["shared_key_g0"]["kernel"],
    rtol=1e-5, atol=1e-6)
print("sharded ok")
'''


def test_seed_axis_is_sharded_over_devices():
  """With two (simulated) devices, replicas split across them, unchanged.

  Also padded (3 seeds) and in seed chunks on each device.
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  result = subprocess.run([sys.executable, '-c', _TWO_DEVICE_SCRIPT],
                          env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert 'sharded ok' in result.stdout, result.stderr[-3000:]
