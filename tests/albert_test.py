"""ALBERT: factorized embedding, all-shared blocks (norms too), the grid."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jax_attnshare import configs
from jax_attnshare import cost
from jax_attnshare import model as model_lib
from jax_attnshare import sharing

jax.config.update('jax_numpy_rank_promotion', 'raise')

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                       'configs')

N, D, H, T, V, E = 3, 16, 4, 8, 40, 8
TOKENS = jnp.array([[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 9, 9, 1, 2, 0, 0]])


def _cfg(components=(), embedding_width=E):
  spec = sharing.SharingSpec(
      num_layers=N, num_heads=H, components=components,
      layer_groups=(tuple(range(N)),) if components else ())
  return model_lib.ModelConfig(
      vocab_size=V, max_length=T, sharing=spec, width=D, num_layers=N,
      num_heads=H, ffn_width=2 * D, embedding_width=embedding_width)


def _loss(params, cfg):
  logits = model_lib.Classifier(cfg).apply({'params': params}, TOKENS)
  return jnp.sum(jnp.sin(3 * logits))


def test_factorized_embedding_is_projected_to_the_width():
  params = model_lib.Classifier(_cfg()).init(jax.random.key(0),
                                             TOKENS)['params']
  assert params['token_embed']['embedding'].shape == (V, E)
  assert params['position_embed']['embedding'].shape == (T, E)
  assert params['embed_projection']['kernel'].shape == (E, D)
  plain = model_lib.Classifier(_cfg(embedding_width=0)).init(
      jax.random.key(0), TOKENS)['params']
  assert 'embed_projection' not in plain
  assert plain['token_embed']['embedding'].shape == (V, D)


def test_all_shared_block_exists_once_and_sums_layer_gradients():
  """Untie the all-shared block into N equal copies: same loss, and each
  shared leaf's gradient is the sum of the copies' gradients."""
  tied_cfg = _cfg(sharing.COMPONENTS)
  untied_cfg = _cfg()
  tied = model_lib.Classifier(tied_cfg).init(jax.random.key(0),
                                             TOKENS)['params']
  enc = tied['encoder']
  assert sorted(enc) == [f'shared_{c}_g0' for c in sorted(sharing.COMPONENTS)]
  assert set(enc['shared_norms_g0']) == {'ln_attention', 'ln_ffn'}
  layer = {'attention': {c: enc[f'shared_{c}_g0']
                         for c in ('query', 'key', 'value', 'output')},
           'ffn': enc['shared_ffn_g0'], **enc['shared_norms_g0']}
  untied = flax.core.unfreeze(
      {**tied, 'encoder': {f'layer_{i}': layer for i in range(N)}})
  np.testing.assert_allclose(_loss(tied, tied_cfg),
                             _loss(untied, untied_cfg), rtol=1e-6)
  g_tied = jax.grad(_loss)(tied, tied_cfg)['encoder']
  g_layers = jax.grad(_loss)(untied, untied_cfg)['encoder']
  summed = jax.tree.map(lambda *xs: sum(xs),
                        *[g_layers[f'layer_{i}'] for i in range(N)])
  pairs = [(g_tied['shared_norms_g0'][n], summed[n])
           for n in ('ln_attention', 'ln_ffn')]
  pairs += [(g_tied['shared_ffn_g0'], summed['ffn'])]
  pairs += [(g_tied[f'shared_{c}_g0'], summed['attention'][c])
            for c in ('query', 'key', 'value', 'output')]
  for got, want in pairs:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-6), got, want)


def test_grid_configs_share_what_albert_table_4_says():
  counts = {}
  for variant, components in configs.ALBERT_VARIANTS.items():
    config = configs.load_config(
        f'{CONFIGS}/albert_grid.py:tiny,variant={variant}')
    cfg = model_lib.model_config(config, config.data.vocab_size, 0)
    assert cfg.sharing.components == sharing.parse_components(components)
    assert cfg.embedding_width == 32 and cfg.factorized
    counts[variant] = cost.param_counts(cfg)['total']
  # The FFN (8·D² here) outweighs the attention (4·D²).
  assert counts['none'] > counts['attention'] > counts['ffn'] > counts['all']
