"""Post-hoc sharing: DirectShare, PostShare, SA and LISA on tiny models."""

import dataclasses

import jax
import numpy as np
import pytest

from jax_attnshare import cost
from jax_attnshare import lisa
from jax_attnshare import model as model_lib
from jax_attnshare.posthoc import methods
from jax_attnshare.posthoc import finetune
from jax_attnshare import sharing

jax.config.update('jax_numpy_rank_promotion', 'raise')

N, D, H, T, V = 3, 16, 4, 8, 40
TOKENS = np.array([[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 0, 0, 0, 0, 0, 0],
                   [9, 8, 7, 6, 5, 4, 3, 2]], np.int32)


def _cfg(num_classes=2, **kw):
  spec = sharing.SharingSpec(num_layers=N, num_heads=H)
  return model_lib.ModelConfig(
      vocab_size=V, max_length=T, sharing=spec, width=D, num_layers=N,
      num_heads=H, ffn_width=2 * D, num_classes=num_classes, qkv_bias=True,
      **kw)


def _init(cfg, seed=0):
  return model_lib.make_model(cfg).init(jax.random.key(seed),
                                        TOKENS)['params']


def _out(cfg, params):
  return np.asarray(model_lib.make_model(cfg).apply({'params': params},
                                                    TOKENS))


def _copy_shared_heads(params, links):
  """Dense DirectShare: each linked head's Q/K/V/O slices become copies.

  The tree keeps its shape (every head stored), so it runs on the unshared
  model; methods.direct_share must compute the same function.
  """
  params = jax.tree.map(np.array, params)
  for layer, head, src_layer, src_head in links:
    dst = params['encoder'][f'layer_{layer}']['attention']
    src = params['encoder'][f'layer_{src_layer}']['attention']
    for c in methods.QKV:
      dst[c]['kernel'][:, head] = src[c]['kernel'][:, src_head]
      if 'bias' in dst[c]:
        dst[c]['bias'][head] = src[c]['bias'][src_head]
    dst['output']['kernel'][head] = src['output']['kernel'][src_head]
  return params


def _with_copy(params, layer, head, src_layer, src_head):
  """A tree where head (layer, head) is an exact copy of the source head."""
  return _copy_shared_heads(params, [(layer, head, src_layer, src_head)])


def test_best_match_is_in_an_earlier_layer_and_finds_a_copy():
  cfg = _cfg()
  params = _with_copy(_init(cfg), 2, 1, 0, 3)
  cos = methods.weight_similarity(params, cfg, 'qk')
  np.testing.assert_allclose(cos[2, 1, 0, 3], 1., rtol=1e-6)
  layer_LH, head_LH, value_LH = methods.best_matches(cos)
  assert (layer_LH[0] == -1).all() and np.isnan(value_LH[0]).all()
  assert (layer_LH[1:] < np.arange(1, N)[:, None]).all()
  assert (layer_LH[2, 1], head_LH[2, 1]) == (0, 3)


@pytest.mark.parametrize('strategy', methods.STRATEGIES)
def test_every_strategy_sees_a_copied_head(strategy):
  cfg = _cfg()
  cos = methods.weight_similarity(_with_copy(_init(cfg), 1, 2, 0, 0), cfg,
                                  strategy)
  np.testing.assert_allclose(cos[1, 2, 0, 0], 1., rtol=1e-6)


def test_ratio_zero_is_the_identity():
  cfg = _cfg()
  params = _init(cfg)
  plan = methods.plan_direct_share(methods.weight_similarity(params, cfg), 0.)
  assert plan.selected == () and plan.links == ()
  shared, shared_cfg = methods.direct_share(params, cfg, plan.links)
  assert shared_cfg == cfg
  np.testing.assert_array_equal(_out(shared_cfg, shared), _out(cfg, params))


@pytest.mark.parametrize('ratio', [0.1, 0.25, 0.5])
def test_direct_share_shares_exactly_the_selected_heads(ratio):
  cfg = _cfg()
  params = _init(cfg)
  cos = methods.weight_similarity(params, cfg)
  plan = methods.plan_direct_share(cos, ratio)
  assert len(plan.selected) == int(ratio * N * H)
  # The selected heads have the highest best-match cosines.
  _, _, value_LH = methods.best_matches(cos)
  chosen = {(l, h) for l, h, *_ in plan.selected}
  rest = [value_LH[l, h] for l in range(1, N) for h in range(H)
          if (l, h) not in chosen]
  assert min(s[4] for s in plan.selected) >= max(rest, default=-1)
  donors = {(s[2], s[3]) for s in plan.selected}
  assert set(plan.links) == {s[:4] for s in plan.selected
                             if s[:2] not in donors}
  assert all(sl < l for l, _, sl, _ in plan.links)

  dense = _copy_shared_heads(params, plan.links)
  linked = {(l, h) for l, h, *_ in plan.links}
  for l in range(N):
    for h in range(H):
      for c in ('query', 'key', 'value', 'output'):
        kernel = np.asarray(
            params['encoder'][f'layer_{l}']['attention'][c]['kernel'])
        new = dense['encoder'][f'layer_{l}']['attention'][c]['kernel']
        axis_h = 0 if c == 'output' else 1
        same = np.array_equal(np.take(kernel, h, axis_h),
                              np.take(new, h, axis_h))
        assert same == ((l, h) not in linked)

  # Stored once: the compact tree computes the same function as the dense
  # copy, with exactly the linked heads' parameters gone.
  shared, shared_cfg = methods.direct_share(params, cfg, plan.links)
  np.testing.assert_allclose(_out(shared_cfg, shared), _out(cfg, dense),
                             atol=1e-5)
  per_head = 3 * (D * (D // H) + D // H) + (D // H) * D
  count, nbytes = methods.tree_size(shared)
  assert count == methods.tree_size(params)[0] - len(plan.links) * per_head
  assert nbytes == 4 * count
  assert cost.param_counts(shared_cfg)['total'] == count


def test_a_layer_may_lose_every_own_head():
  cfg = _cfg()
  params = _init(cfg)
  links = [(1, h, 0, h) for h in range(H)]
  shared, shared_cfg = methods.direct_share(params, cfg, links)
  assert shared['encoder']['layer_1']['attention']['query']['kernel'].shape \
      == (D, 0, D // H)
  np.testing.assert_allclose(
      _out(shared_cfg, shared),
      _out(cfg, _copy_shared_heads(params, links)), atol=1e-5)


def test_too_large_ratio_raises():
  cfg = _cfg()
  with pytest.raises(ValueError, match='direct_share.ratios'):
    methods.plan_direct_share(methods.weight_similarity(_init(cfg), cfg), 0.9)


def test_postshare_regularizer_lowers_the_pair_distance():
  cfg = _cfg()
  params = _init(cfg)
  plan = methods.plan_direct_share(methods.weight_similarity(params, cfg),
                                   0.25)
  loss_fn = finetune.postshare_loss_fn(cfg, params, plan.links)
  labels = np.array([0, 1, 1])
  trained, history = finetune.finetune(
      params, loss_fn, TOKENS, labels, steps=20, batch_size=3,
      learning_rate=1e-2, seed=0)
  before = float(methods.pair_distance(params, plan.links))
  after = float(methods.pair_distance(trained, plan.links))
  assert after < 0.8 * before
  np.testing.assert_allclose(history[0]['distance'], before, rtol=1e-5)


def _uniform_attention(params, layers):
  """Zero Q/K in `layers`: every map is uniform over the valid keys."""
  params = jax.tree.map(np.array, params)
  for l in layers:
    for c in ('query', 'key'):
      for leaf in params['encoder'][f'layer_{l}']['attention'][c].values():
        leaf[...] = 0
  return params


def test_sa_with_identical_consecutive_maps_leaves_outputs_unchanged():
  cfg = _cfg()
  params = _uniform_attention(_init(cfg), [0, 1])
  sa_params, sa_cfg = methods.shared_attention(params, cfg, [1])
  assert sa_cfg.sharing.attention_map_layers == (1,)
  assert set(sa_params['encoder']['layer_1']['attention']) == {'value',
                                                               'output'}
  np.testing.assert_allclose(_out(sa_cfg, sa_params), _out(cfg, params),
                             atol=1e-6)
  # With different maps, the SA layer changes the output.
  other, other_cfg = methods.shared_attention(_init(cfg), cfg, [1])
  assert np.abs(_out(other_cfg, other) - _out(cfg, _init(cfg))).max() > 1e-4


def test_span_scores_rank_by_js_to_the_reused_map():
  js = np.array([[0., .5, .1], [.5, 0., .9], [.1, .9, 0.]])
  # Span (2, 2) reuses layer 1 (JS .9); (1, 1) layer 0 (.5); (1, 2) both
  # reuse layer 0: mean(.5, .1) = .3.
  assert methods.span_scores(js) == [(1, 2, .3), (1, 1, .5), (2, 2, .9)]
  assert methods.select_spans(js, top_k=1) == [(1, 2, .3)]
  assert methods.select_spans(js, threshold=.6) == [(1, 2, .3), (1, 1, .5)]


def _lisa(cfg, params, layers=(1, 2), rank=2, align=3):
  sa_params, sa_cfg = methods.shared_attention(params, cfg, layers)
  lisa_params, lisa_cfg = methods.with_lisa(sa_params, sa_cfg, rank, align,
                                            jax.random.key(1))
  return sa_params, sa_cfg, lisa_params, lisa_cfg


def test_zero_initialized_lisa_reproduces_plain_sa():
  cfg = _cfg()
  sa_params, sa_cfg, lisa_params, lisa_cfg = _lisa(cfg, _init(cfg))
  sub = lisa_params['encoder']['layer_2']['attention'][lisa.SCOPE]
  assert sub['query_lr']['kernel'].shape == (D, H, 2)
  assert sub['align_in'].shape == (H, 3)
  np.testing.assert_allclose(_out(lisa_cfg, lisa_params),
                             _out(sa_cfg, sa_params), atol=1e-6)
  extra = methods.tree_size(lisa_params)[0] - methods.tree_size(sa_params)[0]
  assert extra == 2 * lisa.num_params(D, H, 2, 3)
  assert cost.param_counts(lisa_cfg)['total'] == methods.tree_size(
      lisa_params)[0]


def test_lisa_trains_only_its_modules_and_moves_toward_the_teacher():
  cfg = _cfg(num_classes=0)
  params = _init(cfg)
  _, _, lisa_params, lisa_cfg = _lisa(cfg, params, layers=(2,))
  loss_fn = finetune.lisa_loss_fn(
      lisa_cfg, cfg, params, {'task': 1., 'output': 1., 'maps': 1.})
  trained, history = finetune.finetune(
      lisa_params, loss_fn, TOKENS, None, steps=30, batch_size=3,
      learning_rate=3e-2, seed=0, trainable=lisa.trainable_mask(lisa_params))
  assert 'task' not in history[0]  # An encoder has no labels.
  assert history[-1]['maps'] < 0.7 * history[0]['maps']
  flat_before = jax.tree_util.tree_flatten_with_path(lisa_params)[0]
  flat_after = jax.tree.leaves(trained)
  changed = {lisa.is_lisa_path(path): [] for path, _ in flat_before}
  for (path, before), after in zip(flat_before, flat_after):
    changed[lisa.is_lisa_path(path)].append(
        not np.array_equal(before, after))
  assert not any(changed[False])  # The base weights are frozen.
  assert all(changed[True])


def test_lisa_needs_sa_layers():
  with pytest.raises(ValueError, match='attention_map_layers is empty'):
    sharing.SharingSpec(num_layers=N, num_heads=H,
                        posthoc=sharing.PosthocSharing(lisa_rank=2))


def test_head_links_must_point_to_earlier_unlinked_heads():
  with pytest.raises(ValueError, match='strictly earlier'):
    sharing.SharingSpec(num_layers=N, num_heads=H,
                        posthoc=sharing.PosthocSharing(
                            head_links=((1, 0, 1, 2),)))
  with pytest.raises(ValueError, match='both linked and a source'):
    sharing.SharingSpec(num_layers=N, num_heads=H,
                        posthoc=sharing.PosthocSharing(
                            head_links=((1, 0, 0, 2), (2, 0, 1, 0))))


def test_posthoc_needs_an_unshared_source():
  cfg = _cfg()
  shared = dataclasses.replace(cfg, sharing=sharing.SharingSpec(
      num_layers=N, num_heads=H, components=('key',),
      layer_groups=(tuple(range(N)),)))
  with pytest.raises(ValueError, match='config.sharing of the source model'):
    methods.check_unshared(shared)
  methods.check_unshared(cfg)
  # A model already shared post hoc is not a source either.
  _, linked_cfg = methods.direct_share(_init(cfg), cfg, [(1, 0, 0, 0)])
  with pytest.raises(ValueError, match='config.sharing of the source model'):
    methods.check_unshared(linked_cfg)


def test_a_larger_nominal_ratio_can_add_no_link():
  # Three layers of one head: (2, 0) best matches (1, 0) (cosine .9), and
  # (1, 0) matches (0, 0) (.8). r = 1/3 selects (2, 0) alone; r = 2/3 adds
  # (1, 0), which (2, 0) copies, so it keeps its own weights: one link
  # either way, and the nominal step shares nothing new.
  cos = np.zeros((3, 1, 3, 1))
  cos[1, 0, 0, 0] = .8
  cos[2, 0, 0, 0], cos[2, 0, 1, 0] = .1, .9
  one, two = (methods.plan_direct_share(cos, r) for r in (1 / 3, 2 / 3))
  assert [s[:2] for s in one.selected] == [(2, 0)]
  assert [s[:2] for s in two.selected] == [(1, 0), (2, 0)]
  assert one.links == two.links == ((2, 0, 1, 0),)


def test_lisa_qk_compression_counts_the_replaced_projections():
  cfg = _cfg()
  params = _init(cfg)
  _, _, lisa_params, _ = _lisa(cfg, params, layers=(1, 2), rank=1)
  # Per layer: Q and K kernels D·D plus biases D, against rank-1 Q/K of
  # D·H·1 each.
  assert methods.qk_compression(params, lisa_params, (1, 2)) == (
      (D * D + D) / (D * H))


def test_lisa_rule_admits_spans_whose_every_layer_is_close():
  js = np.array([[0., .05, .3], [.05, 0., .08], [.3, .08, 0.]])
  # (1, 1) reuses layer 0 at .05; (2, 2) layer 1 at .08; (1, 2) reuses
  # layer 0 for layer 2 too, at .3.
  assert methods.lisa_spans(js, 0.1) == [(1, 1, .05), (2, 2, .08)]
  assert methods.span_max_js(js, 1, 2) == .3
  assert methods.lisa_spans(js, 0.01) == []
