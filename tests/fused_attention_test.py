"""Fused attention (jax.nn.dot_product_attention) computes the explicit map's.

config.model.attention='fused' fuses every layer whose map no one needs in
the call ('auto' does so where cuDNN's kernel applies, on an NVIDIA GPU);
'explicit' always materialises the softmax. Both must give the same logits,
loss and gradients for every kind of model, and the steps that read maps
must still see every layer's.
"""

import jax
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


def test_cudnn_probe_refuses_where_the_kernel_does_not_compile():
  # No cuDNN on a CPU: the probe says so instead of failing the run.
  assert not model_lib.cudnn_compiles(2, 8, 16)
