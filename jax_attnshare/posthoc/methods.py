"""Post-hoc sharing of a trained encoder: DirectShare, PostShare and SA.

Pure functions over the parameter tree of a model whose layers each hold
their own Q, K, V and O (an imported checkpoint, or a project run without
attention sharing) and its ModelConfig.

DirectShare (arXiv 2402.11819; methods sheet §3, as its released code does
it): each head (l >= 1, h) is compared with every head of strictly earlier
layers by the cosine of flattened per-head weights (strategy 'qk': W_Q^h‖W_K^h,
rows of the HF [out, in] layout; biases are left out, as Llama has none);
its best match is the first maximum in (layer, head) order. For a ratio r
the int(r·L·H) heads with the highest best-match cosine are selected (L
counts layer 0, which is never replaced). A selected head takes the Q, K, V
(kernel and bias) and O slices of its match; the output bias is per layer
and stays. A selected head that is itself the match of another selected head
keeps its own weights: the released code's `share_hash` ends up pointing
such a head at its own copy, and it means every shared head is stored once
and no link chains. `DirectSharePlan` keeps both the selected heads and the
links that are realized.

PostShare (§3.3): the regularizer is the mean over selected pairs of
‖W_Q^A−W_Q^B‖_F + ‖W_K^A−W_K^B‖_F + ‖W_V^A−W_V^B‖_F (kernels, non-squared),
and the loss 0.5·task + 0.5·regularizer; both heads of a pair train.

Shared Attention (§5): layers a..b of a span reuse the map of layer a−1 and
hold no Q/K. A span's score is the mean over its layers l of the JS
divergence between A_l and A_{a−1}, same head index (SA reuses per head).

Shape suffixes: L layers, H heads, K head width, D width, P pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_attnshare import head_links
from jax_attnshare import lisa
from jax_attnshare import model as model_lib
from jax_attnshare import sharing
from jax_attnshare.posthoc import config as posthoc_config

STRATEGIES = ('q', 'k', 'v', 'qk', 'qkv', 'total')
QKV = ('query', 'key', 'value')


def check_unshared(cfg: model_lib.ModelConfig) -> None:
  """Post-hoc sharing starts from per-layer, per-head attention weights."""
  spec = cfg.sharing
  if (not spec.attention_unshared()
      or spec.posthoc != sharing.PosthocSharing()):
    raise posthoc_config.InputError(
        f'config.sharing of the source model is {spec.to_string()!r}; '
        'post-hoc sharing needs a model whose every layer has its own query, '
        'key, value and output heads (e.g. configs/no_share.py).')


def _attention(params: Any, layer: int) -> dict:
  return params['encoder'][f'layer_{layer}']['attention']


def head_rows(params: Any, cfg: model_lib.ModelConfig,
              projection: str) -> np.ndarray:
  """Per-head weights [L, H, K, D] in the HF row layout (W^h is [K, D])."""
  return np.stack([np.asarray(_attention(params, l)[projection]['kernel'])
                   .transpose(1, 2, 0) for l in range(cfg.num_layers)])


def head_vectors(params: Any, cfg: model_lib.ModelConfig,
                 strategy: str = 'qk') -> np.ndarray:
  """The flattened per-head vectors [L, H, n] that a strategy compares."""
  if strategy not in STRATEGIES:
    raise ValueError(f'config.direct_share.strategy must be one of '
                     f'{STRATEGIES}, got {strategy!r}.')
  rows = {c[0]: head_rows(params, cfg, c).astype(np.float64) for c in QKV}
  if strategy == 'total':
    # softmax(W_Q W_Kᵀ / sqrt(d)) W_V on the weights; the released code
    # scales by the last axis of W_V (the model width d, not d_h).
    s = np.einsum('lhkd,lhjd->lhkj', rows['q'], rows['k'])
    s = s / np.sqrt(cfg.width)
    s = np.exp(s - s.max(-1, keepdims=True))
    w = np.einsum('lhkj,lhjd->lhkd', s / s.sum(-1, keepdims=True), rows['v'])
  else:
    w = np.concatenate([rows[c] for c in strategy], axis=2)
  return w.reshape(cfg.num_layers, cfg.num_heads, -1)


def weight_similarity(params: Any, cfg: model_lib.ModelConfig,
                      strategy: str = 'qk') -> np.ndarray:
  """Cosine between the head vectors of every two heads: [L, H, L, H]."""
  v = head_vectors(params, cfg, strategy)
  v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-30)
  return np.einsum('lhn,mgn->lhmg', v, v)


def best_matches(cos_LHLH: np.ndarray):
  """Best earlier-layer match of each head.

  Returns:
    (layer_LH, head_LH, cos_LH): the match of (l, h) among heads of layers
    < l, the first maximum in (layer, head) order; -1, -1, NaN for layer 0.
  """
  n, h = cos_LHLH.shape[:2]
  layer_LH = np.full((n, h), -1)
  head_LH = np.full((n, h), -1)
  value_LH = np.full((n, h), np.nan)
  for l in range(1, n):
    flat_HX = cos_LHLH[l, :, :l].reshape(h, l * h)
    best_H = flat_HX.argmax(axis=1)  # argmax returns the first maximum.
    layer_LH[l], head_LH[l] = np.divmod(best_H, h)
    value_LH[l] = flat_HX[np.arange(h), best_H]
  return layer_LH, head_LH, value_LH


@dataclasses.dataclass(frozen=True)
class DirectSharePlan:
  """Selected heads (l, h, match layer, match head, cos) and realized links.

  `links` are the selected heads, without those that are themselves a
  selected head's match, as (layer, head, source layer, source head).
  """
  ratio: float
  strategy: str
  selected: tuple[tuple[int, int, int, int, float], ...]
  links: tuple[tuple[int, int, int, int], ...]


def plan_direct_share(cos_LHLH: np.ndarray, ratio: float,
                      strategy: str = 'qk') -> DirectSharePlan:
  """The int(ratio·L·H) heads with the best earlier-layer matches."""
  n, h = cos_LHLH.shape[:2]
  count = int(ratio * n * h)
  if not 0 <= count <= (n - 1) * h:
    raise ValueError(
        f'config.direct_share.ratios: ratio {ratio} selects {count} of '
        f'{n}x{h} heads; only the {(n - 1) * h} heads of layers 1.. can be '
        'replaced.')
  layer_LH, head_LH, value_LH = best_matches(cos_LHLH)
  # The released code lists heads from the last layer down, head 0 up, and
  # sorts stably by cosine, so ties keep that order.
  order = [(l, k) for l in range(n - 1, 0, -1) for k in range(h)]
  order.sort(key=lambda lk: value_LH[lk])
  chosen = order[len(order) - count:]
  selected = tuple((l, k, int(layer_LH[l, k]), int(head_LH[l, k]),
                    float(value_LH[l, k])) for l, k in sorted(chosen))
  donors = {(s[2], s[3]) for s in selected}
  links = tuple(s[:4] for s in selected if s[:2] not in donors)
  return DirectSharePlan(ratio, strategy, selected, links)


def _with_attention(params: Any, layer: int, attention: dict) -> None:
  """Replaces one layer's attention subtree in a tree of fresh dicts."""
  params['encoder'][f'layer_{layer}'] = {
      **params['encoder'][f'layer_{layer}'], 'attention': attention}


def direct_share(params: Any, cfg: model_lib.ModelConfig,
                 links) -> tuple[Any, model_lib.ModelConfig]:
  """DirectShare storing each shared head once (SharingSpec.head_links).

  Linked heads' slices are removed from their layers; the model computes them
  from their sources' slices, so the function is that of the unshared model
  with each linked head's Q/K/V/O slices replaced by copies of its source's.
  """
  spec = cfg.sharing.with_posthoc(head_links=tuple(sorted(links)))
  params = jax.tree.map(lambda x: x, params)  # Fresh containers.
  for layer in sorted({link[0] for link in links}):
    own = np.asarray(head_links.own_heads(spec, layer), int)
    attention = dict(_attention(params, layer))
    for c in QKV:
      attention[c] = {k: v[:, own] if k == 'kernel' else v[own]
                      for k, v in attention[c].items()}
    attention['output'] = {'kernel': attention['output']['kernel'][own],
                           'bias': attention['output']['bias']}
    _with_attention(params, layer, attention)
  return params, dataclasses.replace(cfg, sharing=spec)


def pair_distance(params: Any, links) -> jax.Array:
  """PostShare's regularizer: mean over pairs of Σ_{q,k,v} ‖W^A − W^B‖_F."""
  if not links:
    return jnp.zeros(())
  total = 0.
  for layer, head, src_layer, src_head in links:
    dst, src = _attention(params, layer), _attention(params, src_layer)
    for c in QKV:
      diff_DK = dst[c]['kernel'][:, head] - src[c]['kernel'][:, src_head]
      total = total + jnp.sqrt(jnp.sum(diff_DK ** 2))
  return total / len(links)


def postshare_loss(task_loss: jax.Array, distance: jax.Array) -> jax.Array:
  """The released PostShare trainer's weighting (0.5, 0.5)."""
  return 0.5 * task_loss + 0.5 * distance


def span_scores(js_NN: np.ndarray) -> list[tuple[int, int, float]]:
  """(start, end, score) of every SA span 1 <= start <= end < N, best first.

  Layers start..end reuse the map of layer start − 1; the score is their
  mean JS divergence (same head index) to that map.
  """
  n = js_NN.shape[0]
  spans = [(a, b, float(np.mean([js_NN[a - 1, l] for l in range(a, b + 1)])))
           for a in range(1, n) for b in range(a, n)]
  return sorted(spans, key=lambda s: (s[2], s[0], s[1]))


def select_spans(js_NN: np.ndarray, top_k: int = 0,
                 threshold: float = float('inf')
                 ) -> list[tuple[int, int, float]]:
  """The best-scoring spans with score <= threshold; top_k of them (0: all)."""
  if top_k < 0:
    raise ValueError(f'config.sa.top_k must be >= 0 (0 = all), got {top_k}.')
  spans = [s for s in span_scores(js_NN) if s[2] <= threshold]
  return spans[:top_k] if top_k else spans


def span_max_js(js_NN: np.ndarray, start: int, end: int) -> float:
  """The largest JS of a span's layers to the map they reuse (start − 1)."""
  return float(max(js_NN[start - 1, l] for l in range(start, end + 1)))


def lisa_spans(js_NN: np.ndarray, threshold: float
               ) -> list[tuple[int, int, float]]:
  """The spans LISA's rule admits, best first.

  Every layer of the span is within JS < threshold of the map it reuses
  (same head, as SA reuses per head); for one layer that is the JS to the
  layer before it, the paper's adjacent-layer criterion.
  """
  return [s for s in span_scores(js_NN)
          if span_max_js(js_NN, s[0], s[1]) < threshold]


def shared_attention(params: Any, cfg: model_lib.ModelConfig,
                     layers) -> tuple[Any, model_lib.ModelConfig]:
  """SA: `layers` reuse the previous computed map; their Q/K are dropped."""
  layers = tuple(sorted(set(layers)))
  spec = dataclasses.replace(cfg.sharing, attention_map_layers=layers)
  params = jax.tree.map(lambda x: x, params)  # Fresh containers.
  for layer in layers:
    attention = dict(_attention(params, layer))
    del attention['query'], attention['key']
    _with_attention(params, layer, attention)
  return params, dataclasses.replace(cfg, sharing=spec)


def with_lisa(params: Any, cfg: model_lib.ModelConfig, rank: int,
              align_width: int, key: jax.Array
              ) -> tuple[Any, model_lib.ModelConfig]:
  """Adds fresh LISA modules (zero output: plain SA) to an SA model's tree."""
  spec = cfg.sharing.with_posthoc(lisa_rank=rank,
                                  lisa_align_width=align_width)
  cfg = dataclasses.replace(cfg, sharing=spec)
  tokens_BT = jnp.zeros((1, min(cfg.max_length, 8)), jnp.int32)
  fresh = model_lib.make_model(cfg).init(key, tokens_BT)['params']
  params = jax.tree.map(lambda x: x, params)
  for layer in spec.attention_map_layers:
    _with_attention(params, layer, {
        **_attention(params, layer),
        lisa.SCOPE: _attention(fresh, layer)[lisa.SCOPE]})
  return params, cfg


def qk_compression(base_params: Any, lisa_params: Any, layers) -> float:
  """Q/K parameters of `layers` in the unshared tree over LISA's there.

  The unshared layers' query and key kernels and biases against the
  low-rank query_lr and key_lr kernels that replace them (the paper's "6x
  compression of Q and K"); the alignment MLP is not Q/K and not counted.
  """
  def size(tree):
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))
  full = sum(size(_attention(base_params, l)[c])
             for l in layers for c in ('query', 'key'))
  low = sum(size(_attention(lisa_params, l)[lisa.SCOPE].get(c, {}))
            for l in layers for c in ('query_lr', 'key_lr'))
  return full / low if low else float('inf')


def tree_size(params: Any) -> tuple[int, int]:
  """(parameters, bytes) actually held by a tree."""
  leaves = jax.tree.leaves(params)
  return (sum(int(np.size(x)) for x in leaves),
          sum(int(np.asarray(x).nbytes) for x in leaves))
