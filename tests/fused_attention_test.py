"""Fused attention (jax.nn.dot_product_attention) computes the explicit map's.

config.model.attention='fused' fuses every layer whose map no one needs in
the call ('auto' does so where cuDNN's kernel applies, on an NVIDIA GPU);
'explicit' always materialises the softmax. Both must give the same logits,
loss and gradients for every kind of model, and the steps that read maps
must still see every layer's.
"""

import functools
import logging
import os
import re
import subprocess
import sys

import jax
from jax._src.cudnn import fused_attention_stablehlo
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attnshare import configs
from jax_attnshare import model as model_lib
from jax_attnshare import steps as steps_lib

jax.config.update('jax_numpy_rank_promotion', 'raise')

T, V = 16, 100
# Padding at the ends, and an all-padding row (an eval batch's filler) whose
# every query has no key to attend to.
TOKENS = np.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20],
                   [3, 4, 9, 9, 1, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                   [0] * T], np.int32)
LABELS = np.array([0, 1, 1], np.int32)

# name -> (task, config.model fields, config.sharing fields)
MODELS = {
    'masked': ('classify', {}, {}),
    'unmasked': ('classify', {'padding_mask': False}, {}),
    'causal': ('lm', {}, {}),
    'gqa': ('classify', {'num_heads': 4}, {'kv_heads': 2}),
    'mqa': ('lm', {'num_heads': 4}, {'kv_heads': 1}),
    'head_map': ('classify', {'num_heads': 4},
                 {'head_map': 'query:0,0,2,2;output:0,1,1,3'}),
    'shared_weight': ('classify', {}, {'shared_weight': True,
                                       'components': 'none'}),
    'sa': ('classify', {'num_layers': 3}, {'attention_map_layers': '2'}),
    'sa_causal': ('lm', {'num_layers': 4}, {'attention_map_layers': '2-3'}),
    'cla': ('lm', {'num_layers': 4}, {'kv_activation_every': 2}),
}


def _model(name, attention, dtype='float32'):
  task, model_fields, sharing_fields = MODELS[name]
  c = (configs.lm_config('tiny') if task == 'lm'
       else configs.classifier_config('kv', 'tiny'))
  c.model.update(attention=attention, dtype=dtype, **model_fields)
  c.sharing.update(sharing_fields)
  return model_lib.make_model(model_lib.model_config(c, V, 0))


def _loss(params, model):
  out = model.apply({'params': params}, TOKENS)
  batch = {'tokens': TOKENS, 'labels': LABELS}
  loss_X, _, w_X = steps_lib.objective(model.config)(out, batch)
  return (loss_X * w_X).sum() / w_X.sum()


@pytest.mark.parametrize('name', sorted(MODELS))
def test_fused_matches_explicit(name):
  fused, explicit = _model(name, 'fused'), _model(name, 'explicit')
  params = explicit.init(jax.random.key(0), TOKENS)['params']
  np.testing.assert_allclose(fused.apply({'params': params}, TOKENS),
                             explicit.apply({'params': params}, TOKENS),
                             rtol=1e-5, atol=1e-5)
  (loss_f, grads_f), (loss_e, grads_e) = (
      jax.value_and_grad(_loss)(params, m) for m in (fused, explicit))
  np.testing.assert_allclose(loss_f, loss_e, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(grads_f), jax.tree.leaves(grads_e)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name,fused_layers', [
    ('masked', 2), ('causal', 3), ('sa', 1), ('sa_causal', 1), ('cla', 4)])
def test_only_layers_whose_map_no_one_reads_are_fused(name, fused_layers,
                                                      monkeypatch):
  calls = []
  original = jax.nn.dot_product_attention

  def spy(*args, **kwargs):
    calls.append(kwargs['implementation'])
    return original(*args, **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', spy)
  model = _model(name, 'fused')
  params = _model(name, 'explicit').init(jax.random.key(0), TOKENS)['params']
  model.apply({'params': params}, TOKENS)
  # jax's XLA implementation off a GPU (float32 here); cuDNN's on an NVIDIA
  # GPU in bfloat16.
  assert calls == ['xla'] * fused_layers
  calls.clear()
  _model(name, 'explicit').apply({'params': params}, TOKENS)
  steps_lib.maps_step(params, TOKENS, model)
  # 'auto' fuses only into cuDNN's kernel, which a CPU does not have.
  _model(name, 'auto', 'bfloat16').apply({'params': params}, TOKENS)
  assert not calls


@pytest.mark.parametrize('name', ['masked', 'sa', 'causal'])
def test_maps_step_reads_every_layers_map_when_fused(name):
  fused, explicit = _model(name, 'fused'), _model(name, 'explicit')
  params = explicit.init(jax.random.key(0), TOKENS)['params']
  probs_NBHTT = steps_lib.maps_step(params, TOKENS, fused)
  assert probs_NBHTT.shape[0] == fused.config.num_layers
  np.testing.assert_array_equal(probs_NBHTT,
                                steps_lib.maps_step(params, TOKENS, explicit))


@pytest.mark.parametrize('name', ['masked', 'causal', 'gqa'])
def test_fused_matches_explicit_in_bfloat16(name):
  fused = _model(name, 'fused', 'bfloat16')
  explicit = _model(name, 'explicit', 'bfloat16')
  params = explicit.init(jax.random.key(0), TOKENS)['params']
  got = fused.apply({'params': params}, TOKENS)
  assert got.dtype == jnp.float32
  # Both round Q, K, V and the map to bfloat16 (8 bits) the same way.
  np.testing.assert_allclose(got, explicit.apply({'params': params}, TOKENS),
                             rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('field,value', [('dtype', 'float16'),
                                         ('attention', 'flash')])
def test_bad_precision_fields_name_the_field(field, value):
  c = configs.classifier_config('kv', 'tiny')
  c.model[field] = value
  with pytest.raises(ValueError, match=f'config.model.{field}'):
    model_lib.model_config(c, V, 0)


@pytest.fixture
def cudnn_version(monkeypatch):
  """A cuDNN version for tracing on a machine without cuDNN.

  jax asks the installed cuDNN for its version while it traces the call
  (check_cudnn_version) and a CPU jaxlib has none; with a version stood in,
  tracing goes on to the batching rules and the lowering for CUDA, where
  the failures this file guards against happened. Nothing here compiles.
  """
  monkeypatch.setattr(fused_attention_stablehlo, 'check_cudnn_version',
                      lambda: 91000)
  model_lib.cudnn_compiles.cache_clear()
  yield
  model_lib.cudnn_compiles.cache_clear()


def _cudnn_calls(lowered_text):
  """Shapes of Q in the cuDNN forward and backward calls of a CUDA module."""
  return {name: re.findall(rf'custom_call @__cudnn\$fmhaSoftmax{name}\(.*?: '
                           r'\(tensor<([0-9x]+)xbf16>', lowered_text)
          for name in ('', 'Backward')}


# (regime, config arg, fields, seed_chunk, per_seed): each regime's full
# size, bfloat16. clean: 256 tokens, padding masked; blog: no mask, its
# 32 tokens and 512; the LM: causal and masked. seed_chunk 5 maps over
# chunks of 5 seeds (lax.map).
FULL_SIZE = [
    ('clean', '', {}, 0, False),
    ('clean', '', {'attention': 'fused'}, 5, True),
    ('blog', 'regime=blog', {}, 0, True),
    ('blog', 'regime=blog', {'max_length': 512}, 0, True),
    ('lm', '', {}, 0, False),
]


@pytest.mark.parametrize('regime,arg,fields,seed_chunk,per_seed', FULL_SIZE)
def test_cudnn_training_step_traces_and_lowers_at_full_size(
    regime, arg, fields, seed_chunk, per_seed, cudnn_version, monkeypatch):
  """The seed-vmapped step's cuDNN attention, forward and backward.

  jax's own batching rules for the kernel fail under the seeds' vmap (a
  mask, shared lengths, an unbatched cotangent); the fold hands cuDNN one
  batch of all the seeds' rows.
  """
  # What fused_implementation answers on a GPU where the probe compiles.
  monkeypatch.setattr(model_lib, 'fused_implementation',
                      lambda cfg, lengths=(): 'cudnn')
  c = (configs.lm_config(arg) if regime == 'lm'
       else configs.classifier_config('kv', arg))
  c.data.max_length = fields.pop('max_length', c.data.max_length)
  c.model.update(fields)
  assert c.model.dtype == 'bfloat16'
  cfg = model_lib.model_config(c, c.data.vocab_size, 0)
  steps = steps_lib.SeedSteps(
      model_lib.make_model(cfg),
      steps_lib.make_optimizer(c.opt, c.num_train_steps), c.data.max_length,
      c.num_seeds, per_seed, seed_chunk)
  state = steps.restore_target(steps_lib.seed_keys(range(c.num_seeds)))
  rows = ((c.num_seeds,) if per_seed else ()) + (c.batch_size,)
  batch = {'tokens': jax.ShapeDtypeStruct(rows + (c.data.max_length,),
                                          jnp.int32),
           'labels': jax.ShapeDtypeStruct(rows, jnp.int32)}
  lowered = steps.train.trace(state, batch).lower(
      lowering_platforms=('cuda',))
  calls = _cudnn_calls(lowered.as_text())
  folded = (seed_chunk or c.num_seeds) * c.batch_size
  q_shape = f'{folded}x{c.data.max_length}x{cfg.num_heads}x{cfg.head_width}'
  # Every layer fused; the backward runs the forward again (_kernel).
  assert calls == {'': [q_shape] * 2 * cfg.num_layers,
                   'Backward': [q_shape] * cfg.num_layers}


@pytest.mark.parametrize('length,causal,masked', [
    (256, False, True), (32, False, False), (512, False, False),
    (256, True, True)])
def test_cudnn_probe_is_the_kernel_call_and_lowers_for_cuda(
    length, causal, masked, cudnn_version):
  probe, args = model_lib.cudnn_probe(8, 16, length, causal, masked)
  calls = _cudnn_calls(probe.trace(*args).lower(
      lowering_platforms=('cuda',)).as_text())
  assert calls == {'': [f'4x{length}x8x16'], 'Backward': [f'4x{length}x8x16']}


def test_cudnn_probe_refusal_is_logged_with_its_reason(cudnn_version,
                                                        caplog):
  # No cuDNN kernel on a CPU: the probe says why instead of failing the
  # run, and it got past tracing (a batching failure would say so).
  with caplog.at_level(logging.WARNING):
    assert not model_lib.cudnn_compiles(8, 16, (32, 256), False, True)
  assert re.search(r"does not compile here for .*'masked': True.* at length "
                   r"32 \(NotImplementedError: .*not found for platform cpu",
                   caplog.text)


def test_batch_folded_calls_fn_once_on_all_vmapped_rows():
  def scaled_plus_rows(x_BN, s_B):
    # The rows fn sees tell a folded call from a vmapped one.
    return x_BN * s_B[:, None] + x_BN.shape[0]

  folded = model_lib.batch_folded(scaled_plus_rows)
  x_ABN = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
  s_B = np.arange(4, dtype=np.float32)
  # Two vmaps deep, s unbatched in both: one call on all 2 * 3 * 4 rows.
  got = jax.vmap(jax.vmap(folded, in_axes=(0, None)), in_axes=(0, None))(
      x_ABN, s_B)
  np.testing.assert_array_equal(got, x_ABN * s_B[:, None] + 24)


def _explicit_attention(q_BTHK, k_BTHK, v_BTHK, mask_B1TT):
  """The explicit path's formula, by hand."""
  logits_BHTT = jnp.einsum('bqhk,bthk->bhqt', q_BTHK, k_BTHK) / np.sqrt(
      q_BTHK.shape[-1])
  logits_BHTT = jnp.where(mask_B1TT, logits_BHTT, jnp.finfo(jnp.float32).min)
  return jnp.einsum('bhqt,bthk->bqhk', jax.nn.softmax(logits_BHTT), v_BTHK)


@pytest.mark.parametrize('task,seed_chunk', [('classify', 0), ('lm', 2)])
def test_fused_attention_under_the_seed_vmap_matches_explicit(task,
                                                              seed_chunk):
  """The fold and the custom gradient, run with XLA's kernel on a CPU.

  Three seeds' Q, K, V; the batch's tokens (with an all-padding row) and
  the loss's cotangent shared by the seeds, as in the step; all seeds in
  one vmap, or in chunks of 2 (lax.map).
  """
  cfg = _model('causal' if task == 'lm' else 'masked', 'fused').config
  mask_B1TT = model_lib.attention_mask(cfg, TOKENS != 0)
  qkv_S = [jax.random.normal(key, (3,) + TOKENS.shape + (2, 8))
           for key in jax.random.split(jax.random.key(0), 3)]

  def per_seed(attention):
    def loss(q_BTHK, k_BTHK, v_BTHK):
      return attention(q_BTHK, k_BTHK, v_BTHK, mask_B1TT).sum()

    def outputs(q_BTHK, k_BTHK, v_BTHK):
      return (attention(q_BTHK, k_BTHK, v_BTHK, mask_B1TT),
              jax.grad(loss, argnums=(0, 1, 2))(q_BTHK, k_BTHK, v_BTHK))

    return jax.jit(steps_lib.over_seeds(outputs, (True,) * 3, seed_chunk))(
        *qkv_S)

  got = per_seed(functools.partial(model_lib.fused_attention, cfg))
  want = per_seed(_explicit_attention)
  for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-5, atol=1e-5)


_SHARDED_SCRIPT = '''
import re, jax, jax.numpy as jnp
from jax._src.cudnn import fused_attention_stablehlo
from jax_attnshare import configs, model as model_lib, steps as steps_lib
fused_attention_stablehlo.check_cudnn_version = lambda: 91000
model_lib.fused_implementation = lambda cfg, lengths=(): "cudnn"
assert jax.device_count() == 2
c = configs.classifier_config("kv", None)
cfg = model_lib.model_config(c, c.data.vocab_size, 0)
steps = steps_lib.SeedSteps(
    model_lib.make_model(cfg),
    steps_lib.make_optimizer(c.opt, c.num_train_steps), 256, 15,
    per_seed_batches=True, seed_chunk=1)
def sharded(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=steps.seed_sharding)
state = jax.tree.map(sharded, jax.eval_shape(steps.init,
                                             steps_lib.seed_keys(range(15))))
batch = {"tokens": sharded(jax.ShapeDtypeStruct((16, 32, 256), jnp.int32)),
         "labels": sharded(jax.ShapeDtypeStruct((16, 32), jnp.int32))}
text = steps.train.trace(state, batch).lower(
    lowering_platforms=("cuda",)).as_text()
print(sorted(re.findall(
    r"custom_call @__cudnn.fmhaSoftmax(\\w*)\\(.*?: \\(tensor<([0-9x]+)xbf16>",
    text)))
'''


@pytest.mark.slow
def test_cudnn_training_step_traces_in_seed_chunks_on_two_devices():
  """shard_map over the devices, lax.map over seed chunks of 1 inside.

  15 seeds on two (simulated) devices: 8 each, one chunk of 32 rows at a
  time. Tracing and lowering for CUDA only (see cudnn_version).
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  result = subprocess.run([sys.executable, '-c', _SHARDED_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.stdout.strip() == str(
      [('', '32x256x8x16')] * 6 + [('Backward', '32x256x8x16')] * 3), (
          result.stderr[-3000:])
