"""Closed-form parameters, FLOPs and KV cache for every sharing option."""

import jax
import pytest

from jax_attnshare import cost
from jax_attnshare import model as model_lib
from jax_attnshare import sharing

jax.config.update('jax_numpy_rank_promotion', 'raise')

N, D, H, T, V = 3, 16, 4, 8, 40
K = D // H
ALL = tuple(range(N))
ATTENTION = ('query', 'key', 'value', 'qkv', 'output')

# Option name -> (SharingSpec fields, ModelConfig fields).
OPTIONS = {
    'gqa2': (dict(kv_heads=2), {}),
    'mqa_kv_across_layers': (dict(kv_heads=1, components=('key', 'value')),
                             {}),
    'head_maps': (dict(head_maps=(('query', (0, 0, 2, 3)),
                                  ('output', (0, 1, 1, 3)))), {}),
    'head_map_across_layers': (dict(head_maps=(('key', (0, 0, 2, 2)),),
                                    components=('key', 'output'),
                                    layer_groups=((0, 1), (2,))), {}),
    'shared_weight': (dict(shared_weight=True), {}),
    'shared_weight_across_layers': (dict(
        shared_weight=True, components=('query', 'key', 'value')), {}),
    'sa': (dict(attention_map_layers=(1, 2)), {}),
    'sa_shared_query': (dict(attention_map_layers=(2,),
                             components=('query', 'value')), {}),
    'cla2_mqa': (dict(kv_activation_every=2, kv_heads=1), {}),
    'albert_all': (dict(components=sharing.COMPONENTS),
                   dict(embedding_width=8)),
    'norms_in_groups': (dict(components=('norms',),
                             layer_groups=((0, 1), (2,))),
                        dict(embedding_width=8, embedding_norm=True)),
}


def config(spec=None, **kw):
  spec = dict(spec or {})
  if spec.get('components') and 'layer_groups' not in spec:
    spec['layer_groups'] = (ALL,)
  base = dict(vocab_size=V, max_length=T, width=D, num_layers=N, num_heads=H,
              ffn_width=2 * D,
              sharing=sharing.SharingSpec(num_layers=N, num_heads=H, **spec))
  base.update(kw)
  return model_lib.ModelConfig(**base)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _tokens():
  return jax.numpy.array([[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 0, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize('name', sorted(OPTIONS))
@pytest.mark.parametrize('causal,bias', [(False, False), (True, True)])
def test_tree_matches_closed_form(name, causal, bias):
  spec, kw = OPTIONS[name]
  cfg = config(spec, causal=causal, qkv_bias=bias, **kw)
  params = model_lib.make_model(cfg).init(jax.random.key(0),
                                          _tokens())['params']
  counts = cost.param_counts(cfg)
  enc = params['encoder']
  shared = {k: v for k, v in enc.items() if k.startswith('shared_')}
  attention = _count([enc.get(f'layer_{i}', {}).get('attention', {})
                      for i in range(N)])
  attention += _count({k: v for k, v in shared.items()
                       if k.split('_')[1] in ATTENTION})
  embeddings = _count({k: v for k, v in params.items()
                       if k not in ('encoder', 'head', 'lm_head')})
  assert _count(params) == counts['total']
  assert _count(shared) == counts['shared']
  assert attention == counts['attention']
  assert embeddings == counts['embeddings']


def test_counts_by_hand():
  """The formulas of the issue, written out for D=16, H=4, K=4, N=3."""
  base = cost.param_counts(config())['attention']
  assert base == N * (3 * D * D + D * D + D)
  # GQA stores G of H key/value heads: K/V cost D·G·K each.
  assert cost.param_counts(config(dict(kv_heads=2)))['attention'] == (
      N * (D * D + 2 * D * 2 * K + D * D + D))
  # Shared weight: d² + 3d (+ bias d) instead of 3d² (+ 3d).
  sizes = cost.component_sizes(config(dict(shared_weight=True)))
  assert sizes['qkv'] == D * D + 3 * D
  assert cost.component_sizes(config(dict(shared_weight=True),
                                     qkv_bias=True))['qkv'] == (
                                         D * D + D + 3 * D)
  # SA layers 1, 2 keep V and O only; CLA2 layer 1 keeps Q and O only.
  sa = cost.param_counts(config(dict(attention_map_layers=(1, 2))))
  assert sa['attention'] == base - 2 * 2 * D * D
  cla = cost.param_counts(config(dict(kv_activation_every=2)))
  assert cla['attention'] == base - 2 * D * D
  # ALBERT: factorized embeddings (V + T)·E + E·D + D.
  albert = config(dict(components=sharing.COMPONENTS), embedding_width=8)
  assert cost.param_counts(albert)['embeddings'] == (V + T) * 8 + 8 * D + D


def test_copies_and_layer_counts_by_hand():
  sizes = {'key': 10, 'ffn': 100, 'layer_norms': 1}
  spec = sharing.SharingSpec(num_layers=4, components=('key',),
                             layer_groups=((0, 1), (2,)))
  # key: two group copies + layer 3's own; ffn and norms: one per layer.
  assert cost.num_copies(spec, 'key') == 3
  assert cost.layer_counts(spec, sizes) == {
      'layers': 3 * 10 + 4 * 100 + 4, 'shared': 20}


@pytest.mark.parametrize('spec,kw,flops_t8,flops_t5', [
    ({}, {}, 110592, 66240),
    (dict(kv_heads=2), dict(causal=True), 108544, 64960),
    (dict(attention_map_layers=(1, 2), posthoc=sharing.PosthocSharing(
        lisa_rank=2, lisa_align_width=3)), {}, 106496, 62720),
    (dict(attention_map_layers=(2,),
          posthoc=sharing.PosthocSharing(lisa_rank=1)), dict(causal=True),
     113152, 68200),
    (dict(kv_activation_every=2, kv_heads=1), {}, 90112, 53440),
    (dict(posthoc=sharing.PosthocSharing(
        head_links=((1, 0, 0, 2), (2, 3, 0, 1)))), {}, 110592, 66240),
])
def test_forward_flops_pinned(spec, kw, flops_t8, flops_t5):
  """The numbers of the post-hoc study's forward_flops before it moved."""
  cfg = config(spec, **kw)
  assert cost.forward_flops(cfg, 8) == flops_t8
  assert cost.forward_flops(cfg, 5) == flops_t5


def test_forward_flops_by_hand():
  # Attention + FFN per token; an LM adds its output layer.
  per_token = cost.attention_flops_per_token(config(), T) + N * 4 * D * 2 * D
  assert cost.forward_flops(config(), T) == T * per_token
  assert cost.forward_flops(config(causal=True), T) == T * (
      per_token + 2 * D * V)


def test_attention_flops_by_hand():
  mha = N * (2 * 4 * D * D + 2 * 2 * H * K * T)
  assert cost.attention_flops_per_token(config(), T) == mha
  # MQA computes one key and one value head; SA skips Q, K and Q·Kᵀ.
  assert cost.attention_flops_per_token(config(dict(kv_heads=1)), T) == (
      mha - N * 2 * 2 * D * (H - 1) * K)
  sa = config(dict(attention_map_layers=(2,)))
  assert cost.attention_flops_per_token(sa, T) == (
      mha - 2 * 2 * D * D - 2 * H * K * T)
  sw = config(dict(shared_weight=True))
  assert cost.attention_flops_per_token(sw, T) == mha - N * 2 * 2 * D * D


def test_kv_cache_per_token():
  def kv(spec):
    return cost.summary(config(spec, causal=True))['kv_cache_per_token']

  assert kv({}) == N * 2 * D
  assert kv(dict(kv_heads=2)) == N * 2 * 2 * K
  assert kv(dict(kv_heads=1)) == N * 2 * K
  # SA layers cache V only; CLA2 layer 1 caches nothing.
  assert kv(dict(attention_map_layers=(1, 2))) == 2 * D + 2 * D
  assert kv(dict(kv_activation_every=2)) == 2 * 2 * D
  assert kv(dict(kv_activation_every=2, kv_heads=1)) == 2 * 2 * K
  # Sharing K/V weights across layers does not shrink the cache.
  assert kv(dict(components=('key', 'value'))) == kv({})
  assert cost.summary(config())['kv_cache_per_token'] is None
