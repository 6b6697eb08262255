"""Redundancy tables: head-pair map similarity and its layer summaries."""

import jax
import numpy as np

from jax_attnshare import attn_stats
from jax_attnshare import model as model_lib
from jax_attnshare.posthoc import methods
from jax_attnshare.posthoc import probe
from jax_attnshare.posthoc import redundancy
from jax_attnshare import sharing

jax.config.update('jax_numpy_rank_promotion', 'raise')

N, B, H, T = 3, 2, 3, 5


def _probs(seed=0):
  logits = np.random.default_rng(seed).normal(size=(N, B, H, T, T)) * 2
  e = np.exp(logits)
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


MASK = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)


def test_a_copied_head_has_zero_js_and_unit_cosine():
  probs = _probs()
  probs[2, :, 1] = probs[0, :, 2]
  pairs = jax.device_get(attn_stats.head_pair_similarity(probs, MASK))
  assert pairs['js'].shape == (N, H, N, H)
  np.testing.assert_allclose(pairs['js'][2, 1, 0, 2], 0, atol=1e-6)
  np.testing.assert_allclose(pairs['cosine'][2, 1, 0, 2], 1, rtol=1e-5)
  np.testing.assert_allclose(pairs['js'], pairs['js'].transpose(2, 3, 0, 1),
                             atol=1e-6)
  assert (pairs['js'][2, 1, 1] > 1e-3).all()  # Other heads differ.


def test_pairs_agree_with_the_adjacent_layer_statistics():
  probs = _probs(1)
  pairs = jax.device_get(attn_stats.head_pair_similarity(probs, MASK))
  stats = jax.device_get(attn_stats.attention_stats(probs, MASK))
  tables = redundancy.layer_tables(pairs)
  np.testing.assert_allclose(tables['js_same'], stats['js_layers'],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(tables['cosine_same'], stats['cosine_layers'],
                             rtol=1e-5)
  # aligned[l + 1, l]: each head of layer l + 1 against its closest head of
  # layer l, as attention_stats' js_adjacent_aligned.
  np.testing.assert_allclose(
      [tables['js_aligned'][l + 1, l] for l in range(N - 1)],
      stats['js_adjacent_aligned'], rtol=1e-5)
  assert (tables['js_aligned'] <= tables['js_same'] + 1e-7).all()
  assert (tables['cosine_aligned'] >= tables['cosine_same'] - 1e-7).all()


def test_weight_tables_list_each_replaceable_head_per_strategy():
  spec = sharing.SharingSpec(num_layers=N, num_heads=H)
  cfg = model_lib.ModelConfig(vocab_size=20, max_length=T, sharing=spec,
                              width=12, num_layers=N, num_heads=H,
                              ffn_width=24)
  params = model_lib.Classifier(cfg).init(
      jax.random.key(0), np.ones((1, T), np.int32))['params']
  cos, matches = redundancy.weight_tables(params, cfg)
  assert set(cos) == set(methods.STRATEGIES)
  assert len(matches) == (N - 1) * H * len(methods.STRATEGIES)
  assert (matches['match_layer'] < matches['layer']).all()


def test_probe_separates_separable_features():
  rng = np.random.default_rng(0)
  labels = np.arange(200) % 2
  x = rng.normal(size=(200, 5))
  x[:, 0] += 4 * (2 * labels - 1)
  fitted = probe.fit(x[:100], labels[:100])
  assert fitted.accuracy(x[100:], labels[100:]) > 0.97
  grid = (1e-3, 1e-1, 1e3)
  fitted, l2 = probe.fit_cv(x[:100], labels[:100], grid, folds=4)
  assert l2 in grid[:2]  # So strong a penalty would flatten the probe.
  assert fitted.accuracy(x[100:], labels[100:]) > 0.97


def test_latency_is_measured_per_call():
  calls = [(jax.jit(lambda x: x @ x), (np.ones((64, 64), np.float32),)),
           (jax.jit(lambda x: x + 1), (np.ones(3, np.float32),))]
  times = probe.latency_ms(calls, repeats=3)
  assert len(times) == 2 and all(t > 0 for t in times)
