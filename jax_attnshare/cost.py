"""Closed-form cost of a ModelConfig: parameters, FLOPs, KV cache.

Arithmetic on the config and its SharingSpec only (copies of each part,
parameter counts, matmul FLOPs), so any size can be tabulated without
building a model; the tests check each parameter count against the
initialized tree. FLOPs count the multiply-adds of matrix products as 2 and
leave out gathers, sums, the softmax and elementwise scalings.
"""

from __future__ import annotations

from typing import Mapping

from jax_attnshare import lisa
from jax_attnshare import model as model_lib
from jax_attnshare import sharing


def num_copies(spec: sharing.SharingSpec, part: str) -> int:
  """How many copies of `part` the parameter tree holds."""
  owners = {('group', spec.group_of(layer))
            if spec.is_shared(part, layer) else ('layer', layer)
            for layer in range(spec.num_layers)
            if part in spec.layer_parts(layer)}
  return len(owners)


def layer_counts(spec: sharing.SharingSpec,
                 sizes: Mapping[str, int]) -> dict[str, int]:
  """Closed-form parameter counts of the per-layer components.

  Args:
    spec: the sharing spec.
    sizes: parameters of one copy of each part (plus any per-layer parts
      that are never shared, under other names).
  Returns:
    'layers' (all per-layer parameters) and 'shared' (parameters in shared
    copies).
  """
  layers = shared = 0
  for name, size in sizes.items():
    if name not in sharing.PARTS:
      layers += spec.num_layers * size
      continue
    layers += num_copies(spec, name) * size
    if name in spec.shared_parts:
      groups = {spec.group_of(layer) for layer in range(spec.num_layers)
                if name in spec.layer_parts(layer)} - {None}
      shared += len(groups) * size
  return {'layers': layers, 'shared': shared}


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
  attention = sum(num_copies(spec, c) * sizes[c]
                  for c in sharing.ATTENTION_PARTS)
  attention += _posthoc_change(cfg)
  counted = layer_counts(spec, sizes)
  return {'total': embeddings + counted['layers'] + head
                   + _posthoc_change(cfg),
          'attention': attention, 'embeddings': embeddings,
          'shared': counted['shared']}


def _posthoc_change(cfg: model_lib.ModelConfig) -> int:
  """Parameters that post-hoc sharing removes (head links) or adds (LISA)."""
  posthoc, d, k = cfg.sharing.posthoc, cfg.width, cfg.head_width
  bias = 1 if cfg.qkv_bias else 0
  linked = len(posthoc.head_links) * (3 * k * (d + bias) + k * d)
  substitutes = 0
  if posthoc.has_lisa:
    substitutes = len(cfg.sharing.attention_map_layers) * lisa.num_params(
        d, cfg.num_heads, posthoc.lisa_rank, posthoc.lisa_align_width)
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


def _ffn_flops_per_token(cfg: model_lib.ModelConfig) -> int:
  """Forward FLOPs of all FFN sublayers per token (two D x F products)."""
  return cfg.num_layers * 2 * 2 * cfg.width * cfg.ffn_width


def train_flops_per_example(cfg: model_lib.ModelConfig, length: int) -> int:
  """Matmul FLOPs of one training example (forward + backward = 3x forward).

  Counts the attention sublayers and the FFN; embeddings, norms and the
  head are left out.
  """
  return 3 * length * (attention_flops_per_token(cfg, length)
                       + _ffn_flops_per_token(cfg))


def forward_flops(cfg: model_lib.ModelConfig, length: int) -> int:
  """Matmul FLOPs of one forward of one sequence of `length` tokens.

  Counts the attention sublayers, the FFN, LISA's modules in the SA layers
  and an LM's output layer; embeddings, norms and a classifier's head are
  left out.
  """
  posthoc = cfg.sharing.posthoc
  per_token = attention_flops_per_token(cfg, length) + _ffn_flops_per_token(
      cfg)
  if posthoc.has_lisa:
    per_token += len(cfg.sharing.attention_map_layers) * lisa.flops_per_token(
        cfg.width, cfg.num_heads, posthoc.lisa_rank, posthoc.lisa_align_width,
        length)
  if cfg.causal:
    per_token += 2 * cfg.width * cfg.vocab_size
  return length * per_token


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
