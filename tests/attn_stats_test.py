"""Tests for jax_attnshare.attn_stats against hand-computed values."""

import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np
import pytest
from scipy.spatial import distance

from jax_attnshare import attn_stats

SPARSITY_KEYS = [f'sparsity_{n}' for n, _, _ in attn_stats.SPARSITY_THRESHOLDS]


_jitted = jax.jit(attn_stats.attention_stats)


def _stats(probs, mask):
  out = _jitted(jnp.asarray(probs, jnp.float32), jnp.asarray(mask, bool))
  return {k: np.asarray(v) for k, v in out.items()}


def _random_maps(rng, shape, n):
  """Dirichlet rows over n keys: [..., n, n]."""
  return rng.dirichlet(np.ones(n), size=shape + (n,)).astype(np.float32)


def _pad(probs_NBHnn, positions, t, rng, nan=True):
  """Embeds maps at `positions` of T=t tokens; garbage everywhere else.

  Valid rows get 30% of their mass moved to padded columns (so the stats must
  renormalize) and padded rows are random, with a NaN when `nan`.
  """
  lead = probs_NBHnn.shape[:-2]
  out = rng.uniform(size=lead + (t, t)).astype(np.float32)
  out /= out.sum(-1, keepdims=True)
  pad_cols = np.setdiff1d(np.arange(t), positions)
  out[..., pad_cols] *= 0.3 / out[..., pad_cols].sum(-1, keepdims=True)
  valid = out[..., positions, :]
  valid[..., positions] = 0.7 * probs_NBHnn
  out[..., positions, :] = valid
  if nan:
    out[..., pad_cols[0], 0] = np.nan
  mask = np.zeros(t, bool)
  mask[positions] = True
  return out, mask


def test_uniform_attention_entropy_is_log_n():
  t, lengths = 6, (5, 3)
  mask = np.zeros((2, t), bool)
  mask[0, [0, 2, 3, 4, 5]] = True
  mask[1, :3] = True
  # Uniform over all T keys: uniform over the valid ones after renormalizing.
  probs = np.full((3, 2, 3, t, t), 1. / t, np.float32)
  s = _stats(probs, mask)
  np.testing.assert_allclose(s['entropy'], np.mean(np.log(lengths)), rtol=1e-5)
  np.testing.assert_allclose(s['entropy_norm'], 1., rtol=1e-5)
  # Exactly uniform is not below uniform; constant heads are identical.
  np.testing.assert_array_equal(s['sparsity_rel_1'], 0.)
  np.testing.assert_allclose(s['head_correlation'], 1.)


def test_one_hot_rows():
  n = 5  # plus one padded token
  probs = np.zeros((3, 2, 3, n + 1, n + 1), np.float32)
  probs[..., np.arange(n), (np.arange(n) + 2) % n] = 1.
  s = _stats(probs, np.arange(n + 1)[None].repeat(2, 0) < n)
  np.testing.assert_array_equal(s['entropy'], 0.)
  np.testing.assert_array_equal(s['entropy_norm'], 0.)
  for key in SPARSITY_KEYS:
    np.testing.assert_allclose(s[key], 1. - 1. / n, rtol=1e-6)


def test_sparsity_matches_hand_count():
  rows = np.array([[0.5, 0.3, 0.195, 0.005],
                   [0.97, 0.02, 0.0095, 0.0005],
                   [0.25, 0.25, 0.25, 0.25],
                   [1., 0., 0., 0.]], np.float32)
  s = _stats(rows[None, None, None], np.ones((1, 4), bool))
  # abs 0.001: 0.0005 and three zeros; abs 0.01: + 0.005, 0.0095;
  # rel 0.1 (tau 0.025): + 0.02; rel 1 (tau 0.25): + 0.195.
  expected = {'abs_0.001': 4, 'abs_0.01': 6, 'rel_0.1': 7, 'rel_1': 8}
  for name, count in expected.items():
    np.testing.assert_allclose(s[f'sparsity_{name}'], [[count / 16]])


def test_sparsity_is_monotone_in_threshold():
  rng = np.random.default_rng(0)
  n = 6  # taus: 0.001 < 0.01 < 0.1 / 6 < 1 / 6, the order of the keys.
  probs = rng.dirichlet(np.full(n, 0.3), size=(3, 2, 3, n)).astype(np.float32)
  s = _stats(probs, np.ones((2, n), bool))
  stacked = np.stack([s[k] for k in SPARSITY_KEYS])
  assert np.all(np.diff(stacked, axis=0) >= 0)
  assert stacked[-1].min() > 0 and stacked[0].max() < 1


def test_identical_heads_correlate_fully():
  rng = np.random.default_rng(1)
  one = _random_maps(rng, (3, 2, 1), 6)
  s = _stats(np.repeat(one, 3, axis=2), np.ones((2, 6), bool))
  np.testing.assert_allclose(s['head_correlation'], 1., rtol=1e-5)
  np.testing.assert_allclose(s['head_correlation_per_head'], 1., rtol=1e-5)
  np.testing.assert_allclose(s['head_specialization'], 0., atol=1e-5)


def test_head_correlation_is_pearson_on_valid_entries():
  rng = np.random.default_rng(2)
  positions, t = np.array([0, 2, 4, 5]), 6
  maps = [_random_maps(rng, (1, 1, 2), 4) for _ in range(2)]
  padded = [_pad(m, positions, t, rng) for m in maps]
  probs = np.concatenate([p for p, _ in padded], axis=1)
  mask = np.stack([m for _, m in padded])
  s = _stats(probs, mask)
  r = [np.corrcoef(m[0, 0, 0].ravel(), m[0, 0, 1].ravel())[0, 1] for m in maps]
  np.testing.assert_allclose(s['head_correlation'], [np.mean(r)], rtol=1e-4)
  np.testing.assert_allclose(s['head_correlation_per_head'],
                             [[np.mean(r)] * 2], rtol=1e-4)


def test_constant_head_correlation_convention():
  rng = np.random.default_rng(3)
  uniform = np.full((1, 1, 1, 4, 4), 0.25, np.float32)
  varied = _random_maps(rng, (1, 1, 1), 4)
  probs = np.concatenate([uniform, varied, uniform], axis=2)
  s = _stats(probs, np.ones((1, 4), bool))
  # Pairs: (u, v) = 0, (u, u) = 1, (v, u) = 0.
  np.testing.assert_allclose(s['head_correlation'], [1. / 3], rtol=1e-6)
  np.testing.assert_allclose(s['head_correlation_per_head'],
                             [[0.5, 0., 0.5]], rtol=1e-6)


def test_identical_layers_have_zero_js_and_unit_cosine():
  rng = np.random.default_rng(4)
  probs = np.repeat(_random_maps(rng, (1, 2, 3), 6), 3, axis=0)
  s = _stats(probs, np.ones((2, 6), bool))
  np.testing.assert_allclose(s['js_layers'], 0., atol=1e-6)
  np.testing.assert_allclose(s['cosine_layers'], 1., rtol=1e-5)
  np.testing.assert_allclose(s['js_adjacent'], 0., atol=1e-6)
  np.testing.assert_allclose(s['js_adjacent_aligned'], 0., atol=1e-6)


def test_js_and_cosine_match_scipy_and_numpy():
  p = np.array([[0.5, 0.5, 0.], [0.1, 0.2, 0.7], [1., 0., 0.]], np.float32)
  q = np.array([[0., 0.2, 0.8], [0.3, 0.3, 0.4], [1., 0., 0.]], np.float32)
  s = _stats(np.stack([p, q])[:, None, None], np.ones((1, 3), bool))
  js = np.mean([distance.jensenshannon(a, b) ** 2 for a, b in zip(p, q)])
  cos = (p * q).sum() / np.sqrt((p * p).sum() * (q * q).sum())
  np.testing.assert_allclose(s['js_layers'], [[0., js], [js, 0.]], rtol=1e-5)
  np.testing.assert_allclose(s['js_adjacent'], [js], rtol=1e-5)
  np.testing.assert_allclose(s['js_adjacent_per_head'], [[js]], rtol=1e-5)
  np.testing.assert_allclose(s['cosine_layers'], [[1., cos], [cos, 1.]],
                             rtol=1e-5)


def test_padding_changes_nothing():
  rng = np.random.default_rng(5)
  core = _random_maps(rng, (3, 1, 3), 4)
  padded, mask = _pad(core, np.array([0, 2, 3, 5]), 6, rng)
  base = _stats(core, np.ones((1, 4), bool))
  with_pad = _stats(padded, mask[None])
  for key, value in base.items():
    if key not in attn_stats.PADDING_METRICS:  # They exist to see padding.
      np.testing.assert_allclose(with_pad[key], value, rtol=1e-5, atol=1e-6,
                                 err_msg=key)


def test_examples_weigh_equally_and_empty_ones_not_at_all():
  rng = np.random.default_rng(6)
  t = 6
  a, mask_a = _pad(_random_maps(rng, (3, 1, 3), 5), np.arange(5), t, rng)
  b, mask_b = _pad(_random_maps(rng, (3, 1, 3), 2), np.array([1, 4]), t, rng)
  empty = rng.uniform(size=a.shape).astype(np.float32)
  batch = np.concatenate([a, b, empty], axis=1)
  s = _stats(batch, np.stack([mask_a, mask_b, np.zeros(t, bool)]))
  sa, sb = _stats(a, mask_a[None]), _stats(b, mask_b[None])
  for key, value in s.items():
    if 'aligned' in key:  # A min over batch means: not linear in examples.
      continue
    np.testing.assert_allclose(value, (sa[key] + sb[key]) / 2, rtol=1e-5,
                               atol=1e-6, err_msg=key)


def test_head_aligned_js():
  rng = np.random.default_rng(7)
  probs = _random_maps(rng, (3, 2, 3), 6)
  mask = np.ones((2, 6), bool)
  s = _stats(probs, mask)
  assert np.all(s['js_adjacent_aligned_per_head']
                <= s['js_adjacent_per_head'] + 1e-7)
  assert np.all(s['js_adjacent_aligned'] <= s['js_adjacent'] + 1e-7)
  probs[1] = probs[0][:, [2, 0, 1]]
  s = _stats(probs, mask)
  np.testing.assert_allclose(s['js_adjacent_aligned'][0], 0., atol=1e-6)
  assert s['js_adjacent'][0] > 0.01


def test_jit_and_vmap_over_seeds():
  rng = np.random.default_rng(8)
  probs_S = jnp.asarray(_random_maps(rng, (2, 3, 2, 3), 6))
  mask = jnp.asarray([[True] * 6, [True, True, False, True, False, True]])
  fn = jax.jit(jax.vmap(attn_stats.attention_stats, in_axes=(0, None)))
  batched = fn(probs_S, mask)
  for seed in range(2):
    single = jax.jit(attn_stats.attention_stats)(probs_S[seed], mask)
    for key, value in single.items():
      np.testing.assert_allclose(batched[key][seed], value, rtol=1e-5,
                                 atol=1e-6, err_msg=key)
  layer = attn_stats.per_layer(batched)
  assert set(layer) >= set(attn_stats.PER_LAYER_METRICS)
  assert layer['entropy'].shape == (2, 3)
  assert layer['js_adjacent'].shape == (2, 2)
  np.testing.assert_allclose(layer['entropy'], batched['entropy'].mean(-1))
  assert layer['js_adjacent_per_head'].shape == (2, 2, 3)


@pytest.mark.parametrize('n_layers,n_heads', [(1, 1), (2, 1), (1, 3)])
def test_no_nan_in_degenerate_cases(n_layers, n_heads):
  rng = np.random.default_rng(9)
  probs = rng.uniform(size=(n_layers, 3, n_heads, 4, 4)).astype(np.float32)
  probs /= probs.sum(-1, keepdims=True)
  # A one-token example, a full one and one with no valid token.
  mask = np.array([[False, True, False, False], [True] * 4, [False] * 4])
  s = _stats(probs, mask)
  for key, value in s.items():
    assert np.all(np.isfinite(value)), key
  assert s['js_adjacent'].shape == (n_layers - 1,)
  assert s['js_adjacent_per_head'].shape == (n_layers - 1, n_heads)
  if n_heads == 1:
    np.testing.assert_array_equal(s['head_correlation'], 0.)
  one = _stats(probs[:, :1], mask[:1])
  for key in ['entropy', 'entropy_norm', 'js_layers'] + SPARSITY_KEYS:
    np.testing.assert_array_equal(one[key], 0., err_msg=key)
  np.testing.assert_array_equal(one['cosine_layers'], 1.)


def test_padding_statistics_by_hand():
  # One layer, two examples, one head, T = 3. Example 0 has tokens 0, 1 and a
  # pad; example 1 has only token 0.
  p0 = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
  p1 = np.array([[0.6, 0.2, 0.2], [1., 0., 0.], [0.25, 0.25, 0.5]])
  probs = np.stack([p0, p1])[None, :, None].astype(np.float32)
  mask = np.array([[True, True, False], [True, False, False]])
  s = _stats(probs, mask)
  # Mass on padded keys, mean over valid queries, then over examples.
  mass = np.mean([(0.2 + 0.8) / 2, 0.2 + 0.2])
  np.testing.assert_allclose(s['padding_mass'], [[mass]], rtol=1e-6)
  # Over all 3 queries and 3 keys, as padding-blind code computes it.
  def entropy(p):
    p = p[p > 0]
    return -np.sum(p * np.log(p))
  ent = np.mean([np.mean([entropy(r) for r in p]) for p in (p0, p1)])
  np.testing.assert_allclose(s['entropy_all_tokens'], [[ent]], rtol=1e-6)
  # Below 0.1 / T = 1/30 of the 9 weights: 0 in example 0; 2 in example 1.
  np.testing.assert_allclose(s['sparsity_all_tokens_rel_0.1'],
                             [[np.mean([0, 2 / 9])]], rtol=1e-6)
  # Below 1/T: 6 of 9 and 5 of 9 (the 0.25s, 0.2s, zeros).
  below = [np.sum(p < 1 / 3 * (1 - 1e-5)) / 9 for p in (p0, p1)]
  np.testing.assert_allclose(s['sparsity_all_tokens_rel_1'],
                             [[np.mean(below)]], rtol=1e-6)
  # Over valid keys only, renormalized, the masked statistics differ.
  assert not np.allclose(s['entropy'], s['entropy_all_tokens'])


def test_masked_model_maps_put_no_mass_on_padding():
  rng = np.random.default_rng(7)
  core = _random_maps(rng, (2, 1, 2), 3)
  probs = np.zeros((2, 1, 2, 5, 5), np.float32)
  probs[..., :3, :3] = core
  probs[..., 3:, :3] = 1 / 3
  mask = np.array([[True, True, True, False, False]])
  s = _stats(probs, mask)
  np.testing.assert_array_equal(s['padding_mass'], 0.)
