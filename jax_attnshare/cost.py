"""Closed-form cost of a ModelConfig: parameters, attention FLOPs, KV cache.

Arithmetic on the config and its SharingSpec only, so any size can be
tabulated without building a model; the tests check each parameter count
against the initialized tree. FLOPs count the multiply-adds of matrix
products as 2 and leave out gathers, sums, the softmax and elementwise
scalings.
"""

from __future__ import annotations

from jax_attnshare import lisa
from jax_attnshare import model as model_lib

ATTENTION_PARTS = ('query', 'key', 'value', 'qkv', 'output')


def component_sizes(cfg: model_lib.ModelConfig) -> dict[str, int]:
  """Parameters in one copy of each per-layer part (see sharing.PARTS)."""
  d, f, k = cfg.width, cfg.ffn_width, cfg.head_width
  bias = 1 if cfg.qkv_bias else 0
  sizes = {c: model_lib.stored_heads(cfg, c) * k * (d + bias)
           for c in ('query', 'key', 'value')}
  sizes['qkv'] = d * (d + bias) + 3 * d  # Ws (+ bias) and three diagonals.
  sizes['output'] = model_lib.stored_heads(cfg, 'output') * k * d + d
  sizes['ffn'] = d * f + f + f * d + d
  sizes['norms'] = 4 * d
  return sizes


def param_counts(cfg: model_lib.ModelConfig) -> dict[str, int]:
  """Closed-form counts: total, attention, embeddings and shared."""
  sizes = component_sizes(cfg)
  spec = cfg.sharing
  e = cfg.embedding_width if cfg.factorized else cfg.width
  embeddings = (cfg.vocab_size + cfg.max_length) * e
  embeddings += 2 * e if cfg.embedding_norm else 0
  embeddings += e * cfg.width + cfg.width if cfg.factorized else 0
  outputs = cfg.vocab_size if cfg.causal else cfg.num_classes
  head = (cfg.width + 1) * outputs
  attention = sum(spec.num_copies(c) * sizes[c] for c in ATTENTION_PARTS)
  attention += _posthoc_change(cfg)
  counted = spec.count(sizes)
  return {'total': embeddings + counted['layers'] + head
                   + _posthoc_change(cfg),
          'attention': attention, 'embeddings': embeddings,
          'shared': counted['shared']}


def _posthoc_change(cfg: model_lib.ModelConfig) -> int:
  """Parameters that post-hoc sharing removes (head links) or adds (LISA)."""
  spec, d, k = cfg.sharing, cfg.width, cfg.head_width
  bias = 1 if cfg.qkv_bias else 0
  linked = len(spec.head_links) * (3 * k * (d + bias) + k * d)
  substitutes = 0
  if spec.lisa_rank or spec.lisa_align_width:
    substitutes = len(spec.attention_map_layers) * lisa.num_params(
        d, cfg.num_heads, spec.lisa_rank, spec.lisa_align_width)
  return substitutes - linked


def attention_flops_per_token(cfg: model_lib.ModelConfig, length: int) -> int:
  """Forward FLOPs of all attention sublayers per token at `length` tokens.

  Projections cost only their stored heads (GQA computes G key heads, CLA
  layers compute no K/V, SA layers no Q/K); SA layers skip Q·Kᵀ. Q·Kᵀ and
  A·V are counted dense (T keys per query), as computed, causal or not.
  """
  spec, d, k, h = cfg.sharing, cfg.width, cfg.head_width, cfg.num_heads
  total = 0
  for layer in range(cfg.num_layers):
    parts = spec.layer_parts(layer)
    total += sum(2 * d * model_lib.stored_heads(cfg, c) * k
                 for c in ('query', 'key', 'value') if c in parts)
    total += 2 * d * d if 'qkv' in parts else 0
    total += 0 if spec.reuses_map(layer) else 2 * h * k * length  # Q·Kᵀ
    total += 2 * h * k * length  # A·V
    total += 2 * model_lib.stored_heads(cfg, 'output') * k * d
  return total


def train_flops_per_example(cfg: model_lib.ModelConfig, length: int) -> int:
  """Matmul FLOPs of one training example (forward + backward = 3x forward).

  Counts the attention sublayers and the FFN; embeddings, norms and the
  head are left out.
  """
  ffn = cfg.num_layers * 2 * 2 * cfg.width * cfg.ffn_width
  return 3 * length * (attention_flops_per_token(cfg, length) + ffn)


def kv_cache_per_token(cfg: model_lib.ModelConfig) -> int:
  """Cached K/V elements per decoded token, summed over layers.

  A layer caches the stored heads of the K and V it computes: none for a CLA
  layer that reuses them, only V for an SA layer (its map comes from an
  earlier layer's keys). Shared-weight layers cache K and V as computed.
  """
  spec, k = cfg.sharing, cfg.head_width
  total = 0
  for layer in range(cfg.num_layers):
    parts = spec.layer_parts(layer)
    if 'qkv' in parts:
      total += 2 * cfg.width
    else:
      total += sum(model_lib.stored_heads(cfg, c) * k
                   for c in ('key', 'value') if c in parts)
  return total


def summary(cfg: model_lib.ModelConfig) -> dict:
  """The 'cost' entry of summary.json at the configured length."""
  t = cfg.max_length
  return {'length': t,
          'attention_flops_per_token': attention_flops_per_token(cfg, t),
          'train_flops_per_example': train_flops_per_example(cfg, t),
          'kv_cache_per_token': kv_cache_per_token(cfg) if cfg.causal
                                else None}
