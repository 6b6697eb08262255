"""The encoder: shared subtrees exist once, get summed gradients, counts match."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attnshare import attn_stats
from jax_attnshare import configs
from jax_attnshare import cost
from jax_attnshare import model as model_lib
from jax_attnshare import sharing

jax.config.update('jax_numpy_rank_promotion', 'raise')

N, D, H, T, V = 3, 16, 4, 8, 40


def _cfg(components=(), groups=None, **kw):
  groups = groups if groups is not None else (
      (tuple(range(N)),) if components else ())
  spec = sharing.SharingSpec(num_layers=N, components=tuple(components),
                             layer_groups=groups)
  base = dict(vocab_size=V, max_length=T, sharing=spec, width=D,
              num_layers=N, num_heads=H, ffn_width=2 * D)
  base.update(kw)
  return model_lib.ModelConfig(**base)


def _tokens():
  return jnp.array([[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 0, 0, 0, 0, 0, 0]])


def _init(cfg):
  return model_lib.Classifier(cfg).init(jax.random.key(0), _tokens())['params']


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


ALL_CONDITIONS = sorted(configs.BLOG_CONDITIONS.items())


@pytest.mark.parametrize('condition,components', ALL_CONDITIONS)
def test_param_count_matches_formula(condition, components):
  del condition
  comps = sharing.parse_components(components)
  for kw in ({}, {'qkv_bias': True, 'embedding_norm': True}):
    cfg = _cfg(comps, **kw)
    params = _init(cfg)
    counts = cost.param_counts(cfg)
    assert _count(params) == counts['total']
    shared = {k: v for k, v in params['encoder'].items()
              if k.startswith('shared_')}
    assert _count(shared) == counts['shared']
    attention = _count([params['encoder'][f'layer_{i}'].get('attention', {})
                        for i in range(N)])
    attention += _count({k: v for k, v in shared.items()
                         if not k.startswith('shared_ffn')})
    assert attention == counts['attention']
    embeddings = _count([params['token_embed'], params['position_embed'],
                         params.get('ln_embed', {})])
    assert embeddings == counts['embeddings']


def test_shared_subtree_exists_once_per_group():
  params = _init(_cfg(('key', 'value'), groups=((0, 1), (2,))))
  enc = params['encoder']
  assert sorted(k for k in enc if k.startswith('shared_')) == [
      'shared_key_g0', 'shared_key_g1', 'shared_value_g0', 'shared_value_g1']
  for i in range(N):
    attn = enc[f'layer_{i}']['attention']
    assert 'key' not in attn and 'value' not in attn
    assert 'query' in attn and 'output' in attn


def test_no_sharing_has_no_shared_subtree():
  params = _init(_cfg())
  assert not [k for k in params['encoder'] if k.startswith('shared_')]


def test_shared_gradient_is_sum_of_per_layer_gradients():
  """Untie the shared key into per-layer copies: grads must sum to the tied."""
  tied_cfg, untied_cfg = _cfg(('key', 'ffn')), _cfg()
  tied = _init(tied_cfg)
  untied = flax.core.unfreeze(_init(untied_cfg))
  for i in range(N):  # Copy every tied value into each layer of the untied.
    layer = untied['encoder'][f'layer_{i}']
    layer['attention']['key'] = tied['encoder']['shared_key_g0']
    layer['ffn'] = tied['encoder']['shared_ffn_g0']
    for name in ('query', 'value', 'output'):
      layer['attention'][name] = tied['encoder'][f'layer_{i}']['attention'][
          name]
    for name in ('ln_attention', 'ln_ffn'):
      layer[name] = tied['encoder'][f'layer_{i}'][name]
  for name in ('token_embed', 'position_embed', 'head'):
    untied[name] = tied[name]

  def loss(params, cfg):
    logits = model_lib.Classifier(cfg).apply({'params': params}, _tokens())
    return jnp.sum(logits ** 2)

  np.testing.assert_allclose(loss(tied, tied_cfg), loss(untied, untied_cfg),
                             rtol=1e-6)
  g_tied = jax.grad(loss)(tied, tied_cfg)
  g_untied = jax.grad(loss)(untied, untied_cfg)
  for shared, per_layer in (('shared_key_g0', ('attention', 'key')),
                            ('shared_ffn_g0', ('ffn',))):
    summed = jax.tree.map(
        lambda *xs: sum(xs),
        *[_get(g_untied['encoder'][f'layer_{i}'], per_layer)
          for i in range(N)])
    for got, want in zip(jax.tree.leaves(g_tied['encoder'][shared]),
                         jax.tree.leaves(summed)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _probs(cfg, params, tokens):
  _, variables = model_lib.Classifier(cfg).apply(
      {'params': params}, tokens, mutable=[model_lib.ATTENTION_COLLECTION])
  return model_lib.attention_probs(variables[model_lib.ATTENTION_COLLECTION])


def test_attention_rows_sum_to_one_and_padding_gets_no_mass():
  cfg = _cfg(('key',))
  params = _init(cfg)
  probs_NBHTT = _probs(cfg, params, _tokens())
  assert probs_NBHTT.shape == (N, 2, H, T, T)
  np.testing.assert_allclose(probs_NBHTT.sum(-1), 1.0, rtol=1e-5)
  mask_BT = _tokens() != 0
  padded_mass = jnp.where(mask_BT[None, :, None, None, :], 0.0, probs_NBHTT)
  assert float(padded_mass.max()) == 0.0


def test_padding_changes_nothing_with_mask_and_matters_without():
  short = jnp.array([[5, 6, 7, 0]])
  long = jnp.array([[5, 6, 7, 0, 0, 0, 0, 0]])
  for pooling in ('mean', 'max'):
    cfg = _cfg(pooling=pooling)
    params = _init(cfg)
    out = [model_lib.Classifier(cfg).apply({'params': params}, x)
           for x in (short, long)]
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-6)
  # Either unmasked attention or unmasked pooling lets padding in.
  for unmasked in ({'padding_mask': False}, {'pooling_mask': False}):
    cfg = _cfg(**unmasked)
    params = _init(cfg)
    out = [model_lib.Classifier(cfg).apply({'params': params}, x)
           for x in (short, long)]
    assert not np.allclose(out[0], out[1]), unmasked


def test_capture_does_not_change_outputs():
  cfg = _cfg(('query',))
  params = _init(cfg)
  plain = model_lib.Classifier(cfg).apply({'params': params}, _tokens())
  captured, _ = model_lib.Classifier(cfg).apply(
      {'params': params}, _tokens(), mutable=[model_lib.ATTENTION_COLLECTION])
  np.testing.assert_array_equal(plain, captured)


def test_train_flops_by_hand():
  cfg = _cfg()
  per_layer = 2 * T * (4 * D * D + 2 * D * 2 * D) + 4 * T * T * D
  assert cost.train_flops_per_example(cfg, T) == 3 * N * per_layer


def _embedding_tables(**kw):
  # 4,096 entries per table, so a sample std is within about 1% of the true.
  params = _init(_cfg(vocab_size=256, max_length=256, **kw))
  return params['token_embed']['embedding'], params['position_embed'][
      'embedding']


def test_embedding_init_std_sets_both_tables_std():
  for std in (0.5, 1.0):
    for table in _embedding_tables(embedding_init_std=std):
      assert abs(float(table.std()) / std - 1) < 0.05
      assert abs(float(table.mean())) < 0.05 * std


def test_default_embedding_init_is_flax_and_fix_touches_only_embeddings():
  for table in _embedding_tables():
    # Flax's default_embed_init: std 1/sqrt(D).
    assert abs(float(table.std()) * np.sqrt(D) - 1) < 0.05
  default = _init(_cfg())
  fixed = _init(_cfg(embedding_init_std=1.0))
  for path, leaf in jax.tree_util.tree_leaves_with_path(default):
    other = _get(fixed, [p.key for p in path])
    if path[0].key in ('token_embed', 'position_embed'):
      assert not np.allclose(leaf, other)
    else:
      np.testing.assert_array_equal(leaf, other)


@pytest.mark.parametrize('value', [-1.0, float('nan'), float('inf')])
def test_invalid_embedding_init_std_raises_naming_the_field(value):
  config = configs.classifier_config('kv', 'tiny')
  config.model.embedding_init_std = value
  with pytest.raises(ValueError, match=r'config\.model\.embedding_init_std'):
    model_lib.model_config(config, config.data.vocab_size, 0)


def test_embedding_init_std_reaches_the_model_and_defaults_to_flax():
  config = configs.classifier_config('kv', 'tiny')
  assert model_lib.model_config(config, 64, 0).embedding_init_std == 0.0
  config.model.embedding_init_std = 1.0
  assert model_lib.model_config(config, 64, 0).embedding_init_std == 1.0


def _layer0_entropy_norm_at_init(**kw):
  """Mean normalized entropy of layer 0 at init, width 64 as at `:cpu`."""
  width, length = 64, 32
  spec = sharing.SharingSpec(num_layers=1, components=(), layer_groups=())
  cfg = model_lib.ModelConfig(
      vocab_size=V, max_length=length, sharing=spec, width=width,
      num_layers=1, num_heads=2, ffn_width=2 * width, **kw)
  tokens = jax.random.randint(jax.random.key(1), (4, length), 1, V)
  params = model_lib.Classifier(cfg).init(jax.random.key(0), tokens)['params']
  stats = attn_stats.attention_stats(_probs(cfg, params, tokens),
                                     tokens != 0)
  return float(attn_stats.per_layer(stats)['entropy_norm'][0])


def test_small_default_embeddings_make_layer0_attention_uniform():
  """Logits std ~ var(x) = 2/D at Flax's init: 1 - entropy ~ (2/D)^2 / 2ln n."""
  default = _layer0_entropy_norm_at_init()
  assert default > 1 - 5e-4
  # N(0, 1) embeddings: logits std ~ 2, far from uniform.
  assert _layer0_entropy_norm_at_init(embedding_init_std=1.0) < 0.8
  # A LayerNorm on the embeddings gives layer 0 the unit-variance input that
  # later layers get from the previous block's post-LN.
  assert _layer0_entropy_norm_at_init(embedding_norm=True) < 0.95


def test_pytorch_init_is_torch_linear_and_embedding_defaults():
  """nn.Linear: kernel and bias U(+-1/sqrt(fan_in)); nn.Embedding: N(0, 1)."""
  cfg = _cfg(init='pytorch', qkv_bias=True, vocab_size=256, max_length=256)
  params = _init(cfg)
  for table in (params['token_embed']['embedding'],
                params['position_embed']['embedding']):
    assert abs(float(table.std()) - 1) < 0.05
  fan_ins = {('ffn', 'in'): D, ('ffn', 'out'): 2 * D,
             ('attention', 'query'): D, ('attention', 'output'): D}
  for (block, dense), fan_in in fan_ins.items():
    layer = params['encoder']['layer_0'][block][dense]
    for leaf in (layer['kernel'], layer['bias']):
      bound = 1 / np.sqrt(fan_in)
      assert float(jnp.abs(leaf).max()) <= bound
      # Uniform on +-bound: the largest draw of many is near the bound.
      assert float(jnp.abs(leaf).max()) > 0.8 * bound
    # Uniform variance bound^2 / 3.
    assert abs(float(layer['kernel'].std()) * np.sqrt(3 * fan_in) - 1) < 0.1
  head = params['head']
  assert float(jnp.abs(head['kernel']).max()) <= 1 / np.sqrt(D)
  assert float(jnp.abs(head['bias']).max()) > 0  # Flax would give zeros.


def test_invalid_init_raises_naming_the_field():
  config = configs.classifier_config('kv', 'tiny')
  config.model.init = 'torch'
  with pytest.raises(ValueError, match=r"config\.model\.init must be one of "
                     r"\('flax', 'pytorch'\), got 'torch'"):
    model_lib.model_config(config, config.data.vocab_size, 0)


@pytest.mark.parametrize('regime,attends_to_padding', [('clean', False),
                                                       ('blog', True)])
def test_only_the_blog_regime_attends_to_padding(regime, attends_to_padding):
  config = configs.classifier_config('kv', f'tiny,regime={regime}')
  cfg = model_lib.model_config(config, config.data.vocab_size, 0)
  model = model_lib.Classifier(cfg)
  unpadded = jnp.array([[5, 6, 7, 8, 9, 10, 11, 12]])
  padded = jnp.pad(unpadded, [(0, 0), (0, cfg.max_length - 8)])
  params = model.init(jax.random.key(0), padded)['params']
  logits = [model.apply({'params': params}, x) for x in (unpadded, padded)]
  assert np.allclose(logits[0], logits[1], atol=1e-5) != attends_to_padding
