"""The causal LM: no information from the future, padding-free loss, a run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attnshare import configs
from jax_attnshare import cost
from jax_attnshare import train
from jax_attnshare import model as model_lib
from jax_attnshare import sharing
from jax_attnshare import steps as steps_lib

jax.config.update('jax_numpy_rank_promotion', 'raise')

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                       'configs')

N, D, H, T, V = 3, 16, 4, 8, 40
TOKENS = jnp.array([[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 9, 9, 1, 2, 7, 5]])

VARIANTS = {
    'mha': {},
    'gqa_sa': dict(kv_heads=2, attention_map_layers=(2,)),
    'mqa_cla2': dict(kv_heads=1, kv_activation_every=2),
}


def _cfg(**spec):
  return model_lib.ModelConfig(
      vocab_size=V, max_length=T, width=D, num_layers=N, num_heads=H,
      ffn_width=2 * D, causal=True,
      sharing=sharing.SharingSpec(num_layers=N, num_heads=H, **spec))


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_no_information_flows_from_future_tokens(name):
  """d logits[t] / d position_embed[j] is zero exactly when j > t."""
  cfg = _cfg(**VARIANTS[name])
  model = model_lib.LanguageModel(cfg)
  params = model.init(jax.random.key(0), TOKENS)['params']

  def logit_sums_T(position_table):
    p = {**params, 'position_embed': {'embedding': position_table}}
    return model.apply({'params': p}, TOKENS[1:])[0].sum(-1)

  jacobian_TTD = jax.jit(jax.jacrev(logit_sums_T))(
      params['position_embed']['embedding'])
  influence_TT = np.abs(np.asarray(jacobian_TTD)).sum(-1)
  assert np.all(np.triu(influence_TT, 1) == 0), influence_TT
  assert np.all(influence_TT[np.tril_indices(T)] > 0), influence_TT


def test_next_token_loss_ignores_padding():
  cfg = _cfg()
  model = model_lib.LanguageModel(cfg)
  params = model.init(jax.random.key(0), TOKENS)['params']
  short = {'tokens': TOKENS[:1, :5], 'labels': jnp.zeros(1, jnp.int32),
           'weights': jnp.ones(1)}
  padded = {**short, 'tokens': TOKENS[:1]}  # The same review, 3 pads more.
  step = jax.jit(steps_lib.eval_step, static_argnums=2)
  sums = [step(params, b, model) for b in (short, padded)]
  assert float(sums[0]['count']) == float(sums[1]['count']) == 4
  np.testing.assert_allclose(sums[0]['loss_sum'], sums[1]['loss_sum'],
                             rtol=1e-5)
  # The mean is over the real next tokens only.
  logits_TV = model.apply({'params': params}, TOKENS[:1, :5])[0]
  nll_T = -jax.nn.log_softmax(logits_TV[:-1])[jnp.arange(4), TOKENS[0, 1:5]]
  np.testing.assert_allclose(sums[0]['loss_sum'], nll_T.sum(), rtol=1e-5)


def test_tiny_lm_run_reports_perplexity_and_cost(tmp_path, fake_texts):
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    config = configs.load_config(f'{CONFIGS}/lm.py:tiny,sa=2,kv_heads=1')
    summary = train.train_and_evaluate(config, str(tmp_path / 'lm'),
                                      'lm.py:tiny,sa=2,kv_heads=1',
                                      read_texts=fake_texts)
  finally:
    jax.config.update('jax_disable_most_optimizations', False)
  assert summary['finished']
  assert summary['sharing'] == 'kv_heads=1; attention_maps@2'
  for seed in summary['per_seed']:
    assert 1.0 < seed['test_perplexity'] < 2 * config.data.vocab_size
    np.testing.assert_allclose(np.log(seed['test_perplexity']),
                               seed['test_loss'], rtol=1e-5)
    assert 0.0 <= seed['test_token_accuracy'] <= 1.0
  cfg = model_lib.model_config(config, config.data.vocab_size, 0)
  assert summary['params'] == cost.param_counts(cfg)
  # Layers 0, 1 cache one K and one V head, SA layer 2 only its V head.
  k = config.model.width // config.model.num_heads
  assert summary['cost']['kv_cache_per_token'] == 2 * 2 * k + k
  assert summary['cost']['length'] == config.data.max_length
