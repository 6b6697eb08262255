"""Sharing within a layer: GQA/MQA, head maps, shared-weight attention."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attnshare import configs
from jax_attnshare import model as model_lib
from jax_attnshare import sharing

jax.config.update('jax_numpy_rank_promotion', 'raise')

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                       'configs')

N, D, H, T, V = 3, 16, 4, 8, 40
TOKENS = jnp.array([[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 9, 9, 1, 2, 0, 0]])
PROJECTIONS = ('query', 'key', 'value', 'output')


def _cfg(**spec):
  if spec.get('components'):
    spec.setdefault('layer_groups', (tuple(range(N)),))
  return model_lib.ModelConfig(
      vocab_size=V, max_length=T, width=D, num_layers=N, num_heads=H,
      ffn_width=2 * D, qkv_bias=True,
      sharing=sharing.SharingSpec(num_layers=N, num_heads=H, **spec))


def _init(cfg, seed=0):
  return model_lib.Classifier(cfg).init(jax.random.key(seed),
                                        TOKENS)['params']


def _loss(params, cfg):
  logits = model_lib.Classifier(cfg).apply({'params': params}, TOKENS)
  return jnp.sum(jnp.sin(3 * logits))


def _untie(tied, cfg):
  """The MHA tree with no sharing at all that computes the same function.

  Every layer gets its own copy of each shared projection, and every head
  its own copy of the stored head it uses. Also returns where each untied
  projection came from: (layer, projection) -> (tied path, head index, axis).
  """
  spec = cfg.sharing
  untied = flax.core.unfreeze(jax.tree.map(lambda x: x, tied))
  enc = untied['encoder']
  sources = {}
  for layer in range(N):
    attn = enc.setdefault(f'layer_{layer}', {}).setdefault('attention', {})
    for p in PROJECTIONS:
      path = ((f'shared_{p}_g{spec.group_of(layer)}',)
              if spec.is_shared(p, layer)
              else (f'layer_{layer}', 'attention', p))
      stored, index = _get(tied['encoder'], path), spec.head_index(p)
      axis = 0 if p == 'output' else 1  # The head axis of the kernel.
      attn[p] = dict(stored)
      if index is not None:
        attn[p]['kernel'] = jnp.take(stored['kernel'], np.asarray(index),
                                     axis=axis)
        if p != 'output':
          attn[p]['bias'] = jnp.take(stored['bias'], np.asarray(index),
                                     axis=0)
      sources[(layer, p)] = (path, index, axis)
  for key in [k for k in enc if k.startswith('shared_')]:
    del enc[key]
  return untied, sources


def _summed(g_untied, sources, path):
  """Sum of the untied kernel gradients of every copy of the tied `path`."""
  total = None
  for (layer, p), (src, index, axis) in sources.items():
    if src != path:
      continue
    g = np.asarray(g_untied['encoder'][f'layer_{layer}']['attention'][p][
        'kernel'])
    if index is not None:
      folded = np.zeros(g.shape[:axis] + (max(index) + 1,)
                        + g.shape[axis + 1:], g.dtype)
      for h, m in enumerate(index):
        np.add.at(folded, (slice(None),) * axis + (m,),
                  np.take(g, h, axis=axis))
      g = folded
    total = g if total is None else total + g
  return total


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


# Option -> (spec, how many tied kernels it has).
TIED = {
    'gqa2': (dict(kv_heads=2), N * 2),
    'mqa': (dict(kv_heads=1), N * 2),
    'head_maps': (dict(head_maps=(('query', (0, 0, 2, 3)),
                                  ('key', (0, 1, 1, 1)),
                                  ('value', (3, 1, 2, 3)),
                                  ('output', (0, 1, 1, 3)))), N * 4),
    'mqa_kv_across_layers_and_heads': (
        dict(kv_heads=1, components=('key', 'value')), 2),
}


@pytest.mark.parametrize('name', sorted(TIED))
def test_tied_heads_equal_untied_copies_and_sum_gradients(name):
  spec, num_tied = TIED[name]
  cfg = _cfg(**spec)
  tied = _init(cfg)
  untied, sources = _untie(tied, cfg)
  mha = _cfg()
  assert jax.tree.map(jnp.shape, untied) == jax.tree.map(jnp.shape,
                                                          _init(mha))
  np.testing.assert_allclose(_loss(tied, cfg), _loss(untied, mha), rtol=1e-5)
  g_tied = jax.grad(_loss)(tied, cfg)
  g_untied = jax.grad(_loss)(untied, mha)
  tied_paths = {path for path, index, _ in sources.values()
                if index is not None or len(path) == 1}
  assert len(tied_paths) == num_tied
  for path in tied_paths:
    # The tied gradient sums its uses inside XLA, the untied copies are
    # summed here: float32 rounding of that order reaches ~2e-6 on entries
    # of size ~1, so atol is set from the gradient's scale.
    expected = _summed(g_untied, sources, path)
    np.testing.assert_allclose(_get(g_tied['encoder'], path)['kernel'],
                               expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


def test_stored_heads_exist_once():
  params = _init(_cfg(kv_heads=1, components=('key', 'value')))
  enc = params['encoder']
  assert enc['shared_key_g0']['kernel'].shape == (D, 1, D // H)
  assert enc['shared_value_g0']['bias'].shape == (1, D // H)
  for layer in range(N):
    assert set(enc[f'layer_{layer}']['attention']) == {'query', 'output'}
  gqa = _init(_cfg(kv_heads=2))['encoder']['layer_0']['attention']
  assert gqa['key']['kernel'].shape == (D, 2, D // H)
  assert gqa['query']['kernel'].shape == (D, H, D // H)
  mapped = _init(_cfg(**TIED['head_maps'][0]))
  attn = mapped['encoder']['layer_0']['attention']
  assert attn['query']['kernel'].shape == (D, 3, D // H)
  assert attn['value']['kernel'].shape == (D, 3, D // H)
  assert attn['output']['kernel'].shape == (3, D // H, D)


def test_mqa_is_gqa_with_one_group():
  mqa = configs.load_config(f'{CONFIGS}/mqa.py:tiny')
  gqa = configs.load_config(f'{CONFIGS}/gqa.py:tiny,groups=1')
  specs = [model_lib.model_config(c, 64, 0).sharing for c in (mqa, gqa)]
  assert specs[0] == specs[1]
  assert specs[0].head_index('key') == (0,) * mqa.model.num_heads
  cfg_mqa, cfg_gqa1 = _cfg(kv_heads=1), _cfg(kv_heads=1)
  params = _init(cfg_mqa)
  np.testing.assert_array_equal(_loss(params, cfg_mqa),
                                _loss(params, cfg_gqa1))


def test_identity_head_map_equals_baseline():
  identity = tuple(range(H))
  cfg = _cfg(head_maps=tuple((p, identity) for p in PROJECTIONS))
  base = _cfg()
  params, base_params = _init(cfg), _init(base)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape,
                                                          base_params)
  jax.tree.map(np.testing.assert_array_equal, params, base_params)
  np.testing.assert_array_equal(_loss(params, cfg), _loss(params, base))
  # GQA with as many groups as heads is MHA, too.
  assert _cfg(kv_heads=H).sharing.head_index('key') is None


def test_shared_weight_logits_are_symmetric():
  cfg = _cfg(shared_weight=True)
  module = model_lib.SharedWeightQKV(cfg)
  x_BTD = jax.random.normal(jax.random.key(1), (2, T, D))
  params = module.init(jax.random.key(2), x_BTD)['params']
  # Random signed diagonals, so the symmetry is not an artefact of Dq = Dk.
  keys = iter(jax.random.split(jax.random.key(3), 3))
  params = {**params, **{
      f'{c}_scale': jax.random.normal(next(keys), (H, D // H))
      for c in ('query', 'key', 'value')}}
  q_BTHK, k_BTHK, _ = module.apply({'params': params}, x_BTD)
  logits_BHTT = jnp.einsum('bqhk,bthk->bhqt', q_BTHK, k_BTHK)
  np.testing.assert_allclose(logits_BHTT,
                             jnp.swapaxes(logits_BHTT, -1, -2), rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(q_BTHK, k_BTHK)
  # The model uses that module: Ws and three diagonals, no Q/K/V kernels.
  attn = _init(cfg)['encoder']['layer_0']['attention']
  assert set(attn) == {'qkv', 'output'}
  assert set(attn['qkv']) == {'shared', 'query_scale', 'key_scale',
                              'value_scale'}
