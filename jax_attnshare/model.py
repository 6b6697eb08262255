"""BERT-style encoder classifier whose parts are shared as a SharingSpec says.

The base follows the blog's base code (pbloem/former CTransformer): token plus
learned position embeddings, post-LN blocks, multi-head attention with per-head
width K = D / H and scale 1/sqrt(K), a ReLU FFN, mean or max pooling and a
linear head. A shared component is created once per layer group by the encoder
and handed to every block of the group, so Flax binds one parameter subtree in
all of them.

Shape suffixes: S seeds, B batch, T tokens, D width, H heads, K head width,
F FFN width, N layers, V vocab, C classes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attnshare import sharing

ATTENTION_COLLECTION = 'intermediates'
ACTIVATIONS = {'relu': nn.relu, 'gelu': nn.gelu}
POOLINGS = ('mean', 'max')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static model hyper-parameters; hashable so jit can treat it as static."""
  vocab_size: int
  max_length: int
  sharing: sharing.SharingSpec
  width: int = 128
  num_layers: int = 3
  num_heads: int = 8
  ffn_width: int = 512
  num_classes: int = 2
  dropout_rate: float = 0.0
  pooling: str = 'mean'
  padding_mask: bool = True
  qkv_bias: bool = False
  activation: str = 'relu'
  layer_norm_eps: float = 1e-5
  embedding_norm: bool = False
  pad_id: int = 0

  @property
  def head_width(self) -> int:
    return self.width // self.num_heads


def model_config(config: Any, vocab_size: int, pad_id: int) -> ModelConfig:
  """Validates `config.model`/`config.sharing` and builds the ModelConfig."""
  m = config.model
  sharing.validate_heads(m.width, m.num_heads)
  if m.num_layers < 1:
    raise ValueError(f'config.model.num_layers must be >= 1, got '
                     f'{m.num_layers}.')
  if m.pooling not in POOLINGS:
    raise ValueError(f'config.model.pooling must be one of {POOLINGS}, got '
                     f'{m.pooling!r}.')
  if m.activation not in ACTIVATIONS:
    raise ValueError(f'config.model.activation must be one of '
                     f'{sorted(ACTIVATIONS)}, got {m.activation!r}.')
  if not 0.0 <= m.dropout_rate < 1.0:
    raise ValueError(f'config.model.dropout_rate must be in [0, 1), got '
                     f'{m.dropout_rate}.')
  spec = sharing.SharingSpec.from_config(config.sharing, m.num_layers)
  return ModelConfig(
      vocab_size=vocab_size, max_length=config.data.max_length, sharing=spec,
      width=m.width, num_layers=m.num_layers, num_heads=m.num_heads,
      ffn_width=m.ffn_multiplier * m.width, num_classes=m.num_classes,
      dropout_rate=m.dropout_rate, pooling=m.pooling,
      padding_mask=m.padding_mask, qkv_bias=m.qkv_bias,
      activation=m.activation, layer_norm_eps=m.layer_norm_eps,
      embedding_norm=m.embedding_norm, pad_id=pad_id)


class FeedForward(nn.Module):
  """Position-wise FFN: Dense(F) -> activation -> Dense(D)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.config
    h_BTF = ACTIVATIONS[cfg.activation](nn.Dense(cfg.ffn_width, name='in')(x_BTD))
    return nn.Dense(cfg.width, name='out')(h_BTF)


def make_component(cfg: ModelConfig, component: str, name: str) -> nn.Module:
  """One copy of a shareable component (a projection or the FFN)."""
  if component == 'ffn':
    return FeedForward(cfg, name=name)
  if component == 'output':
    return nn.DenseGeneral(cfg.width, axis=(-2, -1), name=name)
  return nn.DenseGeneral((cfg.num_heads, cfg.head_width),
                         use_bias=cfg.qkv_bias, name=name)


class SelfAttention(nn.Module):
  """Multi-head self-attention; `shared` maps component -> bound module."""
  config: ModelConfig
  shared: dict[str, nn.Module] = dataclasses.field(default_factory=dict)

  @nn.compact
  def __call__(self, x_BTD, mask_BT):
    cfg = self.config
    proj = {c: self.shared.get(c) or make_component(cfg, c, c)
            for c in ('query', 'key', 'value', 'output')}
    q_BTHK = proj['query'](x_BTD)
    k_BTHK = proj['key'](x_BTD)
    v_BTHK = proj['value'](x_BTD)
    logits_BHTT = jnp.einsum('bqhk,bthk->bhqt', q_BTHK, k_BTHK)
    logits_BHTT = logits_BHTT / jnp.sqrt(cfg.head_width).astype(x_BTD.dtype)
    if mask_BT is not None:
      logits_BHTT = jnp.where(mask_BT[:, None, None, :], logits_BHTT,
                              jnp.finfo(logits_BHTT.dtype).min)
    probs_BHTT = jax.nn.softmax(logits_BHTT, axis=-1)
    # Sown only when the caller makes the collection mutable, so the training
    # step pays nothing for it.
    self.sow(ATTENTION_COLLECTION, 'attention_probs', probs_BHTT)
    out_BTHK = jnp.einsum('bhqt,bthk->bqhk', probs_BHTT, v_BTHK)
    return proj['output'](out_BTHK)


class EncoderBlock(nn.Module):
  """Post-LN block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""
  config: ModelConfig
  shared: dict[str, nn.Module] = dataclasses.field(default_factory=dict)

  @nn.compact
  def __call__(self, x_BTD, mask_BT, deterministic: bool):
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
    attn = {c: m for c, m in self.shared.items() if c != 'ffn'}
    a_BTD = SelfAttention(cfg, shared=attn, name='attention')(x_BTD, mask_BT)
    x_BTD = nn.LayerNorm(cfg.layer_norm_eps, name='ln_attention')(
        x_BTD + drop(a_BTD))
    ffn = self.shared.get('ffn') or FeedForward(cfg, name='ffn')
    return nn.LayerNorm(cfg.layer_norm_eps, name='ln_ffn')(
        x_BTD + drop(ffn(x_BTD)))


class Encoder(nn.Module):
  """The stack of blocks; creates each shared component once per group."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, mask_BT, deterministic: bool):
    cfg = self.config
    spec = cfg.sharing
    groups = [{c: make_component(cfg, c, f'shared_{c}_g{g}')
               for c in spec.components}
              for g in range(len(spec.layer_groups))]
    for layer in range(cfg.num_layers):
      g = spec.group_of(layer)
      shared = groups[g] if g is not None else {}
      x_BTD = EncoderBlock(cfg, shared=shared, name=f'layer_{layer}')(
          x_BTD, mask_BT, deterministic)
    return x_BTD


class Classifier(nn.Module):
  """Embeddings -> encoder -> masked pooling -> linear head (logits).

  With `num_classes=0` there is no head and the pooled vector is returned
  (a sentence encoder, as for imported pretrained models).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BT, deterministic: bool = True):
    cfg = self.config
    valid_BT = tokens_BT != cfg.pad_id
    mask_BT = valid_BT if cfg.padding_mask else None
    positions_T = jnp.arange(tokens_BT.shape[1])
    x_BTD = (nn.Embed(cfg.vocab_size, cfg.width, name='token_embed')(tokens_BT)
             + nn.Embed(cfg.max_length, cfg.width,
                        name='position_embed')(positions_T)[None])
    if cfg.embedding_norm:
      x_BTD = nn.LayerNorm(cfg.layer_norm_eps, name='ln_embed')(x_BTD)
    x_BTD = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)(x_BTD)
    x_BTD = Encoder(cfg, name='encoder')(x_BTD, mask_BT, deterministic)
    pooled_BD = pool(x_BTD, mask_BT, cfg.pooling)
    if not cfg.num_classes:
      return pooled_BD
    return nn.Dense(cfg.num_classes, name='head')(pooled_BD)


def pool(x_BTD, mask_BT, pooling: str):
  """Mean or max over tokens; padded tokens are left out when masked."""
  if mask_BT is None:
    return x_BTD.mean(axis=1) if pooling == 'mean' else x_BTD.max(axis=1)
  m_BT1 = mask_BT[..., None]
  if pooling == 'mean':
    count_B1 = jnp.maximum(m_BT1.sum(axis=1), 1)
    return jnp.where(m_BT1, x_BTD, 0).sum(axis=1) / count_B1
  return jnp.where(m_BT1, x_BTD, jnp.finfo(x_BTD.dtype).min).max(axis=1)


def attention_probs(intermediates) -> jax.Array:
  """Stacks the sown maps into probs_NBHTT, in layer order."""
  layers = intermediates['encoder']
  return jnp.stack([layers[f'layer_{i}']['attention']['attention_probs'][0]
                    for i in range(len(layers))
                    if f'layer_{i}' in layers])


def component_sizes(cfg: ModelConfig) -> dict[str, int]:
  """Parameters in one copy of each per-layer component (closed form)."""
  d, f = cfg.width, cfg.ffn_width
  qkv = d * d + (d if cfg.qkv_bias else 0)
  return {'query': qkv, 'key': qkv, 'value': qkv, 'output': d * d + d,
          'ffn': d * f + f + f * d + d, 'layer_norms': 4 * d}


def param_counts(cfg: ModelConfig) -> dict[str, int]:
  """Closed-form counts: total, attention, embeddings and shared."""
  sizes = component_sizes(cfg)
  spec = cfg.sharing
  embeddings = (cfg.vocab_size + cfg.max_length) * cfg.width
  embeddings += 2 * cfg.width if cfg.embedding_norm else 0
  head = (cfg.width + 1) * cfg.num_classes
  attention = sum(spec.num_copies(c) * sizes[c]
                  for c in ('query', 'key', 'value', 'output'))
  counted = spec.count(sizes)
  return {'total': embeddings + counted['layers'] + head,
          'attention': attention, 'embeddings': embeddings,
          'shared': counted['shared']}


def train_flops_per_example(cfg: ModelConfig, length: int) -> int:
  """Matmul FLOPs of one training example (forward + backward = 3x forward).

  Counts the Q/K/V/O projections, the two attention products (QK^T and AV)
  and the FFN; embeddings, norms, softmax and the head are left out.
  """
  d, f, t = cfg.width, cfg.ffn_width, length
  per_layer = 2 * t * (4 * d * d + 2 * d * f) + 2 * 2 * t * t * d
  return 3 * cfg.num_layers * per_layer
