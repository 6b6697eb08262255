"""Mixed precision: bfloat16 compute, float32 parameters and statistics."""

import jax
import jax.numpy as jnp
import numpy as np

from jax_attnshare import configs
from jax_attnshare import data
from jax_attnshare import model as model_lib
from jax_attnshare import steps as steps_lib
from jax_attnshare import workdir as workdir_lib

jax.config.update('jax_numpy_rank_promotion', 'raise')

V, SEEDS = 100, [0, 1]


def _config(dtype):
  c = configs.classifier_config('kv', 'tiny')
  c.model.dtype = dtype
  return c


def _learnable_split(n=64, length=16):
  """Label 1 iff token 2 appears: a model learns it in a few dozen steps."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, V, size=(n, length)).astype(np.int32)
  labels = (np.arange(n) % 2).astype(np.int32)
  tokens[labels == 1, rng.integers(length)] = 2
  tokens[:, -3:] = data.PAD_ID
  return data.Split(tokens, labels)


def _floating_dtypes(tree):
  return {x.dtype for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_run_trains_with_float32_params_and_optimizer_state():
  c = _config('bfloat16')
  c.opt.update(warmup_steps=0, schedule='constant', learning_rate=3e-3)
  mcfg = model_lib.model_config(c, V, data.PAD_ID)
  optimizer = steps_lib.make_optimizer(c.opt, 40)
  steps = steps_lib.SeedSteps(model_lib.make_model(mcfg), optimizer,
                              c.data.max_length, len(SEEDS), False,
                              steps_per_call=10)
  split = _learnable_split()
  batches = data.TrainBatches(split, 16, 0)
  state, resident = steps.init(steps_lib.seed_keys(SEEDS)), steps.put_split(
      split)
  losses = []
  for call in range(4):
    rows = steps.put_rows(np.stack([batches.rows(s)
                                    for s in range(10 * call, 10 * call + 10)]))
    state, window = steps.train_steps(state, steps.zero_window(), resident,
                                      rows, 10)
    losses.append(jax.device_get(window['loss']) / 10)
  assert np.all(losses[-1] < 0.7 * losses[0]), losses
  assert _floating_dtypes(state.params) == {jnp.dtype(jnp.float32)}
  assert _floating_dtypes(state.opt_state) == {jnp.dtype(jnp.float32)}


def _traced(dtype: str):
  """(model, tokens, params, the forward's jaxpr text) at compute dtype."""
  mcfg = model_lib.model_config(_config(dtype), V, data.PAD_ID)
  model = model_lib.make_model(mcfg)
  tokens = _learnable_split().tokens[:4]
  params = model.init(jax.random.key(0), tokens)['params']
  jaxpr = str(jax.make_jaxpr(lambda p: model.apply({'params': p}, tokens))(
      params))
  return model, tokens, params, jaxpr


def test_bfloat16_model_computes_in_bfloat16_and_returns_float32():
  model, tokens, params, jaxpr = _traced('bfloat16')
  assert 'bf16' in jaxpr
  assert model.apply({'params': params}, tokens).dtype == jnp.float32
  # Maps and their statistics are float32.
  probs_NBHTT = steps_lib.maps_step(params, tokens, model)
  assert probs_NBHTT.dtype == jnp.float32
  np.testing.assert_allclose(probs_NBHTT.sum(-1), 1.0, rtol=1e-5)
  stats = steps_lib.stats_step(params, tokens, model)
  assert _floating_dtypes(stats) == {jnp.dtype(jnp.float32)}


def test_float32_model_has_no_bfloat16():
  assert 'bf16' not in _traced('float32')[3]


def test_bfloat16_logits_stay_near_float32():
  tokens = _learnable_split().tokens[:8]
  outs = []
  for dtype in ('float32', 'bfloat16'):
    model = model_lib.make_model(model_lib.model_config(_config(dtype), V,
                                                        data.PAD_ID))
    params = model.init(jax.random.key(0), tokens)['params']
    outs.append(model.apply({'params': params}, tokens))
  np.testing.assert_allclose(outs[1], outs[0], atol=0.05)


def test_presets_choose_the_dtype():
  assert configs.classifier_config('kv', None).model.dtype == 'bfloat16'
  assert configs.lm_config(None).model.dtype == 'bfloat16'
  for arg in ('cpu', 'tiny'):
    assert configs.classifier_config('kv', arg).model.dtype == 'float32'
    assert configs.lm_config(arg).model.dtype == 'float32'


def test_dtype_is_part_of_the_experiment_and_steps_per_call_is_not():
  base = workdir_lib.config_dict(_config('float32'))
  other = workdir_lib.config_dict(_config('bfloat16'))
  assert workdir_lib.config_hash(base) != workdir_lib.config_hash(other)
  calls = _config('float32')
  calls.steps_per_call = 7
  assert workdir_lib.config_hash(base) == workdir_lib.config_hash(
      workdir_lib.config_dict(calls))

