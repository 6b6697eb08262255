"""Activation sharing across layers: SA reuses maps, CLA reuses K and V."""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jax_attnshare import model as model_lib
from jax_attnshare import sharing

jax.config.update('jax_numpy_rank_promotion', 'raise')

N, D, H, T, V = 3, 16, 4, 8, 40
K = D // H
TOKENS = jnp.array([[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 9, 9, 1, 2, 0, 0]])
MASK_B1TT = (TOKENS != 0)[:, None, None, :]


def _cfg(**spec):
  return model_lib.ModelConfig(
      vocab_size=V, max_length=T, width=D, num_layers=N, num_heads=H,
      ffn_width=2 * D, qkv_bias=True,
      sharing=sharing.SharingSpec(num_layers=N, num_heads=H, **spec))


def _maps(cfg, params):
  _, variables = model_lib.Classifier(cfg).apply(
      {'params': params}, TOKENS, mutable=[model_lib.ATTENTION_COLLECTION])
  return model_lib.attention_probs(variables[model_lib.ATTENTION_COLLECTION])


def _attention_params(params, layer):
  return params['encoder'][f'layer_{layer}']['attention']


def test_sa_layers_hold_no_query_or_key_and_reuse_the_last_map():
  cfg = _cfg(attention_map_layers=(2,))
  params = model_lib.Classifier(cfg).init(jax.random.key(0),
                                          TOKENS)['params']
  assert set(_attention_params(params, 2)) == {'value', 'output'}
  assert set(_attention_params(params, 1)) == {'query', 'key', 'value',
                                               'output'}
  probs_NBHTT = _maps(cfg, params)
  np.testing.assert_array_equal(probs_NBHTT[2], probs_NBHTT[1])
  assert not np.allclose(probs_NBHTT[1], probs_NBHTT[0])
  # Perturbing layer 1's queries changes its map and, identically, layer 2's.
  perturbed = flax.core.unfreeze(params)
  kernel = _attention_params(perturbed, 1)['query']['kernel']
  _attention_params(perturbed, 1)['query']['kernel'] = kernel * 1.5 + 0.1
  new_NBHTT = _maps(cfg, perturbed)
  assert not np.allclose(new_NBHTT[1], probs_NBHTT[1])
  np.testing.assert_array_equal(new_NBHTT[2], new_NBHTT[1])
  np.testing.assert_array_equal(new_NBHTT[0], probs_NBHTT[0])


def test_a_span_of_sa_layers_reuses_the_layer_before_it():
  cfg = _cfg(attention_map_layers=(1, 2))
  params = model_lib.Classifier(cfg).init(jax.random.key(0),
                                          TOKENS)['params']
  probs_NBHTT = _maps(cfg, params)
  np.testing.assert_array_equal(probs_NBHTT[1], probs_NBHTT[0])
  np.testing.assert_array_equal(probs_NBHTT[2], probs_NBHTT[0])


def _project(x_BTD, p):
  y_BTHK = jnp.einsum('btd,dhk->bthk', x_BTD, p['kernel'])
  return y_BTHK + p['bias'][None, None]


def _output(out_BTHK, p):
  y_BTD = jnp.einsum('bthk,hkd->btd', out_BTHK, p['kernel'])
  return y_BTD + p['bias'][None, None]


def _by_hand(params, probs_BHTT, x_BTD):
  """out = A·V·Wo + bo with V = X·Wv + bv."""
  v_BTHK = _project(x_BTD, params['value'])
  return _output(jnp.einsum('bhqt,bthk->bqhk', probs_BHTT, v_BTHK),
                 params['output'])


def test_sa_output_follows_the_formula_when_the_reused_map_changes():
  cfg = _cfg(attention_map_layers=(2,))
  attention = model_lib.SelfAttention(cfg, layer=2)
  keys = jax.random.split(jax.random.key(1), 3)
  x_BTD = jax.random.normal(keys[0], (2, T, D))
  probs_BHTT = jax.nn.softmax(jax.random.normal(keys[1], (2, H, T, T)))
  delta_BHTT = 0.1 * jax.random.normal(keys[2], (2, H, T, T))
  params = attention.init(jax.random.key(2), x_BTD, MASK_B1TT,
                          model_lib.Carry(probs=probs_BHTT))['params']
  assert set(params) == {'value', 'output'}

  def out(p_BHTT):
    y_BTD, carry = attention.apply({'params': params}, x_BTD, MASK_B1TT,
                                   model_lib.Carry(probs=p_BHTT))
    assert carry.probs is p_BHTT  # Passed on to later SA layers.
    return y_BTD

  np.testing.assert_allclose(out(probs_BHTT),
                             _by_hand(params, probs_BHTT, x_BTD),
                             rtol=1e-5, atol=1e-5)
  # Linear in the map: the change is exactly delta·V·Wo.
  change = out(probs_BHTT + delta_BHTT) - out(probs_BHTT)
  delta_BTHK = jnp.einsum('bhqt,bthk->bqhk', delta_BHTT,
                          _project(x_BTD, params['value']))
  expected = jnp.einsum('bthk,hkd->btd', delta_BTHK,
                        params['output']['kernel'])
  np.testing.assert_allclose(change, expected, rtol=1e-4, atol=1e-5)


def test_cla_layers_reuse_keys_and_values_with_their_own_queries():
  cfg = _cfg(kv_activation_every=2, kv_heads=2)
  params = model_lib.Classifier(cfg).init(jax.random.key(0),
                                          TOKENS)['params']
  assert set(_attention_params(params, 1)) == {'query', 'output'}
  for layer in (0, 2):
    assert _attention_params(params, layer)['key']['kernel'].shape == (
        D, 2, K)

  keys = jax.random.split(jax.random.key(3), 3)
  x_BTD = jax.random.normal(keys[0], (2, T, D))
  k_BTMK, v_BTMK = (jax.random.normal(k, (2, T, 2, K)) for k in keys[1:])
  attention = model_lib.SelfAttention(cfg, layer=1)
  carry = model_lib.Carry(kv=(k_BTMK, v_BTMK))
  p = attention.init(jax.random.key(4), x_BTD, MASK_B1TT, carry)['params']
  y_BTD, new_carry = attention.apply({'params': p}, x_BTD, MASK_B1TT, carry)
  assert new_carry.kv[0] is k_BTMK and new_carry.kv[1] is v_BTMK

  group = np.array([0, 0, 1, 1])  # Query head h uses K/V head h // 2.
  q_BTHK = _project(x_BTD, p['query'])
  logits = jnp.einsum('bqhk,bthk->bhqt', q_BTHK, k_BTMK[:, :, group])
  logits = jnp.where(MASK_B1TT, logits / np.sqrt(K), -1e30)
  probs_BHTT = jax.nn.softmax(logits)
  np.testing.assert_allclose(new_carry.probs, probs_BHTT, rtol=1e-5,
                             atol=1e-6)
  out_BTHK = jnp.einsum('bhqt,bthk->bqhk', probs_BHTT, v_BTMK[:, :, group])
  np.testing.assert_allclose(y_BTD, _output(out_BTHK, p['output']),
                             rtol=1e-4, atol=1e-5)


def test_computing_layers_pass_on_their_keys_and_values():
  cfg = _cfg(kv_activation_every=2)
  attention = model_lib.SelfAttention(cfg, layer=2)
  x_BTD = jax.random.normal(jax.random.key(5), (2, T, D))
  p = attention.init(jax.random.key(6), x_BTD, MASK_B1TT,
                     model_lib.Carry())['params']
  _, carry = attention.apply({'params': p}, x_BTD, MASK_B1TT,
                             model_lib.Carry())
  np.testing.assert_allclose(carry.kv[0], _project(x_BTD, p['key']),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(carry.kv[1], _project(x_BTD, p['value']),
                             rtol=1e-5, atol=1e-6)
