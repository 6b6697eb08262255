"""Attention-map statistics: entropy, sparsity, head and cross-layer overlap.

Implements the methods sheet §8 on post-softmax probabilities `probs_NBHTT`
(N layers, B examples, H heads, T query and T key tokens) and a valid-token
mask `mask_BT`. Conventions shared by every statistic:

* Padding is excluded: each valid query row is restricted to valid keys and
  renormalized over them (a no-op when the model masks padding). A valid row
  with no mass on valid keys becomes uniform over them. Padded rows and
  columns may hold anything, NaN included.
* Averages go over valid queries (or valid (i, j) pairs) within an example,
  then equally over examples. Examples with no valid token are left out; if
  none is left every statistic is 0.
* Every division is guarded so that nothing is NaN; the edge cases are in the
  docstrings of the functions that meet them.

Beside them, statistics that can see padding, for models that attend to it
(the blog's base code masks nothing): `padding_mass`, the attention mass on
padded keys (mean over valid queries), and `entropy_all_tokens` and
`sparsity_all_tokens_<name>`, computed on the raw maps over all T queries and
T keys, as code that knows nothing of padding computes them (relative
thresholds then use T). These need finite maps in every row.
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# (name, kind, value): 'absolute' means tau = value, 'relative' tau = value/n_b.
SPARSITY_THRESHOLDS = (
    ('abs_0.001', 'absolute', 1e-3),
    ('abs_0.01', 'absolute', 1e-2),
    ('rel_0.1', 'relative', 0.1),
    ('rel_1', 'relative', 1.0),
)
_SPARSITY_KEYS = tuple(f'sparsity_{name}' for name, _, _ in SPARSITY_THRESHOLDS)
_ALL_TOKENS_SPARSITY_KEYS = tuple(
    f'sparsity_all_tokens_{name}' for name, _, _ in SPARSITY_THRESHOLDS)
PADDING_METRICS = (('padding_mass', 'entropy_all_tokens')
                   + _ALL_TOKENS_SPARSITY_KEYS)
# A weight counts as below tau only if below tau * (1 - rtol), so that an
# exactly uniform row renormalized with rounding error is not "below uniform".
_SPARSITY_RTOL = 1e-5
# A head whose std over valid pairs is below this fraction of its mean is
# constant (its map is then exactly uniform, since rows sum to 1).
_CONSTANT_REL_STD = 1e-5

# What attention_stats returns, by shape. [N, H] metrics that per_layer()
# averages over heads:
HEAD_METRICS = ('entropy', 'entropy_norm') + _SPARSITY_KEYS + PADDING_METRICS
# One number per layer ([N]) or per adjacent layer pair ([N - 1]), and
# per_layer()'s output:
PER_LAYER_METRICS = HEAD_METRICS + (
    'head_correlation', 'head_specialization', 'js_adjacent',
    'js_adjacent_aligned')
# Per head of each layer ([N, H]) or adjacent layer pair ([N - 1, H]):
PER_HEAD_METRICS = ('head_correlation_per_head', 'js_adjacent_per_head',
                    'js_adjacent_aligned_per_head')
# Layer x layer ([N, N]):
LAYER_MATRICES = ('js_layers', 'cosine_layers')


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den, with 0 wherever den == 0."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0.)


def _example_mean(x_B: jax.Array, n_B: jax.Array) -> jax.Array:
  """Equal-weight mean over the leading B axis, skipping n_b == 0 examples."""
  w_B = (n_B > 0).astype(x_B.dtype)
  w = w_B.reshape((-1,) + (1,) * (x_B.ndim - 1))
  return _safe_div(jnp.sum(w * x_B, axis=0), jnp.sum(w_B))


def _query_mean(x_BHT: jax.Array, valid_BT: jax.Array,
                n_B: jax.Array) -> jax.Array:
  """Mean over valid queries: [B, H, T] -> [B, H]."""
  total_BH = jnp.einsum('bht,bt->bh', x_BHT, valid_BT.astype(x_BHT.dtype))
  return _safe_div(total_BH, n_B[:, None].astype(x_BHT.dtype))


def _xlogy(x: jax.Array, y: jax.Array) -> jax.Array:
  """x * log(y) with 0 where x == 0 (and no NaN from the unused branch)."""
  pos = x > 0
  return jnp.where(pos, x * jnp.log(jnp.where(pos, y, 1.)), 0.)


def _renormalize(probs_NBHTT: jax.Array, valid_BT: jax.Array) -> jax.Array:
  """Restricts rows to valid keys, renormalizes; zeroes padded rows."""
  key_11B11T = valid_BT[None, :, None, None, :]
  query_11BT1 = valid_BT[None, :, None, :, None]
  p = jnp.where(key_11B11T, probs_NBHTT.astype(jnp.float32), 0.)
  row_sum = jnp.sum(p, axis=-1, keepdims=True)
  n_B = jnp.sum(valid_BT, axis=-1).astype(jnp.float32)
  uniform = jnp.where(key_11B11T,
                      _safe_div(1., n_B)[None, :, None, None, None], 0.)
  p = jnp.where(row_sum > 0, _safe_div(p, row_sum), uniform)
  return jnp.where(query_11BT1, p, 0.)


def _head_correlation(p_BHTT: jax.Array, pair_BTT: jax.Array,
                      n_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Weighted Pearson between heads over valid (i, j) pairs -> [B,H,H].

  Conventions: a constant head (zero variance over valid pairs; its map is
  then uniform) has correlation 0 with a non-constant head and 1 with another
  constant head, since their maps are identical. The diagonal is excluded from
  the means; with H == 1 every correlation is 0.
  """
  b, h, t, _ = p_BHTT.shape
  x_BHK = p_BHTT.reshape(b, h, t * t)
  w_BK = pair_BTT.reshape(b, t * t).astype(jnp.float32)
  total_B1 = (n_B * n_B)[:, None]
  mean_BH = _safe_div(jnp.einsum('bhk,bk->bh', x_BHK, w_BK), total_B1)
  c_BHK = (x_BHK - mean_BH[:, :, None]) * w_BK[:, None, :]
  cov_BHH = _safe_div(jnp.einsum('bhk,bgk->bhg', c_BHK, c_BHK),
                      total_B1[:, :, None])
  var_BH = jnp.diagonal(cov_BHH, axis1=1, axis2=2)
  const_BH = var_BH <= (_CONSTANT_REL_STD * mean_BH) ** 2
  std_BH = jnp.sqrt(jnp.where(const_BH, 0., var_BH))
  corr_BHH = jnp.clip(
      _safe_div(cov_BHH, std_BH[:, :, None] * std_BH[:, None, :]), -1., 1.)
  c_i, c_j = const_BH[:, :, None], const_BH[:, None, :]
  corr_BHH = jnp.where(c_i | c_j, (c_i & c_j).astype(jnp.float32), corr_BHH)
  off_BHH = corr_BHH * (1. - jnp.eye(h, dtype=jnp.float32))[None]
  per_head_BH = jnp.sum(off_BHH, axis=-1) / max(h - 1, 1)
  mean_B = jnp.sum(off_BHH, axis=(1, 2)) / max(h * (h - 1), 1)
  return mean_B, per_head_BH


def _layer_stats(p_BHTT: jax.Array,
                 valid_BT: jax.Array) -> dict[str, jax.Array]:
  """Entropy, sparsity and head correlation of one layer."""
  n_B = jnp.sum(valid_BT, axis=-1).astype(jnp.float32)
  pair_BTT = valid_BT[:, :, None] & valid_BT[:, None, :]
  out = {}
  ent_BH = _query_mean(-jnp.sum(_xlogy(p_BHTT, p_BHTT), axis=-1), valid_BT,
                       n_B)
  out['entropy'] = _example_mean(ent_BH, n_B)
  # ln(1) = 0: a one-token example has normalized entropy 0 by convention.
  log_n_B1 = jnp.log(jnp.maximum(n_B, 1.))[:, None]
  out['entropy_norm'] = _example_mean(_safe_div(ent_BH, log_n_B1), n_B)
  for key, (_, kind, value) in zip(_SPARSITY_KEYS, SPARSITY_THRESHOLDS):
    tau_B = (jnp.full_like(n_B, value) if kind == 'absolute'
             else _safe_div(value, n_B))
    out[key] = _example_mean(_sparsity(p_BHTT, tau_B, pair_BTT), n_B)
  corr_B, corr_BH = _head_correlation(p_BHTT, pair_BTT, n_B)
  out['head_correlation'] = _example_mean(corr_B, n_B)
  out['head_specialization'] = 1. - out['head_correlation']
  out['head_correlation_per_head'] = _example_mean(corr_BH, n_B)
  return out


def _sparsity(p_BHTT: jax.Array, tau_B: jax.Array,
              pair_BTT: jax.Array) -> jax.Array:
  """Fraction of the pairs' weights below tau_B, per example -> [B, H]."""
  tau_B111 = (tau_B * (1. - _SPARSITY_RTOL))[:, None, None, None]
  below_BHTT = (p_BHTT < tau_B111) & pair_BTT[:, None]
  count_B = jnp.sum(pair_BTT, axis=(-2, -1)).astype(jnp.float32)
  return _safe_div(jnp.sum(below_BHTT, axis=(-2, -1)).astype(jnp.float32),
                   count_B[:, None])


def _padding_stats(raw_BHTT: jax.Array,
                   valid_BT: jax.Array) -> dict[str, jax.Array]:
  """PADDING_METRICS of one layer's raw (not renormalized) maps."""
  n_B = jnp.sum(valid_BT, axis=-1).astype(jnp.float32)
  p_BHTT = raw_BHTT.astype(jnp.float32)
  t = p_BHTT.shape[-1]
  padded_B11T = ~valid_BT[:, None, None, :]
  # Padded query rows may hold anything; they are left out of the mean.
  mass_BHT = jnp.sum(jnp.where(padded_B11T, p_BHTT, 0.), axis=-1)
  mass_BHT = jnp.where(valid_BT[:, None, :], mass_BHT, 0.)
  out = {'padding_mass': _example_mean(_query_mean(mass_BHT, valid_BT, n_B),
                                       n_B)}
  ent_BH = jnp.mean(-jnp.sum(_xlogy(p_BHTT, p_BHTT), axis=-1), axis=-1)
  out['entropy_all_tokens'] = _example_mean(ent_BH, n_B)
  all_BTT = jnp.ones(p_BHTT.shape[:1] + p_BHTT.shape[2:], bool)
  for key, (_, kind, value) in zip(_ALL_TOKENS_SPARSITY_KEYS,
                                   SPARSITY_THRESHOLDS):
    tau = value if kind == 'absolute' else value / t
    tau_B = jnp.full(n_B.shape, tau, jnp.float32)
    out[key] = _example_mean(_sparsity(p_BHTT, tau_B, all_BTT), n_B)
  return out


def _js_H(p_BHTT: jax.Array, q_BHTT: jax.Array, valid_BT: jax.Array,
          n_B: jax.Array) -> jax.Array:
  """Per-head Jensen-Shannon divergence (nats), mean over rows, examples."""
  m = 0.5 * (p_BHTT + q_BHTT)
  kl_p = jnp.sum(_xlogy(p_BHTT, p_BHTT) - _xlogy(p_BHTT, m), axis=-1)
  kl_q = jnp.sum(_xlogy(q_BHTT, q_BHTT) - _xlogy(q_BHTT, m), axis=-1)
  # Rounding can leave tiny negatives; JS >= 0 mathematically.
  js_BHT = jnp.maximum(0.5 * (kl_p + kl_q), 0.)
  return _example_mean(_query_mean(js_BHT, valid_BT, n_B), n_B)


def _cosine_H(p_BHTT: jax.Array, q_BHTT: jax.Array,
              n_B: jax.Array) -> jax.Array:
  """Per-head cosine of flattened maps (padding is already zero)."""
  dot_BH = jnp.sum(p_BHTT * q_BHTT, axis=(-2, -1))
  norm2_BH = (jnp.sum(p_BHTT ** 2, axis=(-2, -1)) *
              jnp.sum(q_BHTT ** 2, axis=(-2, -1)))
  return _example_mean(_safe_div(dot_BH, jnp.sqrt(norm2_BH)), n_B)


def attention_stats(probs_NBHTT: jax.Array,
                    mask_BT: jax.Array) -> dict[str, jax.Array]:
  """All §8 statistics of one batch of attention maps.

  Args:
    probs_NBHTT: post-softmax attention probabilities.
    mask_BT: True for real tokens, False for padding.

  Returns:
    entropy, entropy_norm, sparsity_<name> and PADDING_METRICS [N, H];
    head_correlation,
    head_specialization [N]; head_correlation_per_head [N, H]; js_layers,
    cosine_layers [N, N]; js_adjacent, js_adjacent_aligned [N - 1];
    js_adjacent_per_head, js_adjacent_aligned_per_head [N - 1, H].
    js_adjacent_aligned_per_head[l, h] is min over heads h' of layer l of the
    JS between head h of layer l + 1 and h' (JS averaged over the batch
    before the min, so one head matching per batch).
  """
  valid_BT = mask_BT.astype(bool)
  n_B = jnp.sum(valid_BT, axis=-1).astype(jnp.float32)
  p_NBHTT = _renormalize(probs_NBHTT, valid_BT)
  n, _, h = p_NBHTT.shape[:3]
  # lax.map keeps one layer's (or pair's) temporaries alive at a time.
  out = lax.map(lambda p: _layer_stats(p, valid_BT), p_NBHTT)
  out.update(lax.map(lambda p: _padding_stats(p, valid_BT), probs_NBHTT))

  js_layers = jnp.zeros((n, n), jnp.float32)
  cosine_layers = jnp.ones((n, n), jnp.float32)
  js_adj_LH = jnp.zeros((0, h), jnp.float32)
  aligned_LH = jnp.zeros((0, h), jnp.float32)
  if n > 1:  # N is static; with one layer there are no pairs to map over.
    rows, cols = np.triu_indices(n, 1)

    def pair(ij):
      p, q = p_NBHTT[ij[0]], p_NBHTT[ij[1]]
      return _js_H(p, q, valid_BT, n_B), _cosine_H(p, q, n_B)

    js_PH, cos_PH = lax.map(pair, jnp.asarray(np.stack([rows, cols], -1)))
    js_P, cos_P = js_PH.mean(-1), cos_PH.mean(-1)
    js_layers = js_layers.at[rows, cols].set(js_P).at[cols, rows].set(js_P)
    cosine_layers = (cosine_layers.at[rows, cols].set(cos_P)
                     .at[cols, rows].set(cos_P))
    adjacent = np.flatnonzero(cols == rows + 1)  # pairs (l, l + 1), in order
    js_adj_LH = js_PH[adjacent]

    def aligned(l):
      upper_BHTT, lower_BHTT = p_NBHTT[l + 1], p_NBHTT[l]
      # js_GH[g, h]: head h of layer l + 1 against head g of layer l.
      js_GH = lax.map(
          lambda g: _js_H(upper_BHTT, lower_BHTT[:, g][:, None], valid_BT,
                          n_B), jnp.arange(h))
      return js_GH.min(axis=0)

    aligned_LH = lax.map(aligned, jnp.arange(n - 1))

  out['js_layers'] = js_layers
  out['cosine_layers'] = cosine_layers
  out['js_adjacent'] = js_adj_LH.mean(-1)
  out['js_adjacent_per_head'] = js_adj_LH
  out['js_adjacent_aligned'] = aligned_LH.mean(-1)
  out['js_adjacent_aligned_per_head'] = aligned_LH
  return out


def per_layer(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """One number per layer (or adjacent pair) for each PER_LAYER_METRICS key.

  [.., N, H] metrics are averaged over heads; [.., N] and [.., N - 1] ones
  pass through. PER_HEAD_METRICS are returned unchanged. Leading axes (e.g.
  a vmapped seed axis S) are kept.
  """
  out = {k: v for k, v in stats.items() if k in PER_HEAD_METRICS}
  for key in PER_LAYER_METRICS:
    value = stats[key]
    out[key] = value.mean(axis=-1) if key in HEAD_METRICS else value
  return out


def head_pair_similarity(probs_NBHTT: jax.Array,
                         mask_BT: jax.Array) -> dict[str, jax.Array]:
  """JS divergence and cosine between every two heads of any two layers.

  Same conventions as attention_stats (padding excluded; JS per valid query
  row, cosine of flattened maps; means over rows, then examples).

  Returns:
    js [N, H, N, H] and cosine [N, H, N, H]; [l, h, m, g] compares head h of
    layer l with head g of layer m.
  """
  valid_BT = mask_BT.astype(bool)
  n_B = jnp.sum(valid_BT, axis=-1).astype(jnp.float32)
  p_NBHTT = _renormalize(probs_NBHTT, valid_BT)
  n, _, h = p_NBHTT.shape[:3]

  def against(index):
    q_B1TT = p_NBHTT[index // h][:, index % h][:, None]
    return lax.map(lambda p: (_js_H(p, q_B1TT, valid_BT, n_B),
                              _cosine_H(p, q_B1TT, n_B)), p_NBHTT)

  # js_XNH[x, m, g]: head g of layer m against head x % h of layer x // h.
  js_XNH, cos_XNH = lax.map(against, jnp.arange(n * h))
  return {'js': js_XNH.reshape(n, h, n, h),
          'cosine': cos_XNH.reshape(n, h, n, h)}
