"""A tiny random BERT in the Hugging Face layout, and its forward in numpy."""

import json

import numpy as np
import safetensors.numpy
from scipy import special

L, D, H, F, V, P = 2, 16, 4, 32, 30, 12
HF_CONFIG = {
    'model_type': 'bert', 'hidden_act': 'gelu', 'hidden_size': D,
    'num_hidden_layers': L, 'num_attention_heads': H, 'intermediate_size': F,
    'vocab_size': V, 'max_position_embeddings': P, 'layer_norm_eps': 1e-12,
    'pad_token_id': 0, 'type_vocab_size': 2}


def random_bert(seed=0) -> dict[str, np.ndarray]:
  """A tiny BERT in the HF layout ([out, in] weights), pooler included."""
  rng = np.random.default_rng(seed)

  def w(*shape):
    return rng.normal(0, 0.3, shape).astype(np.float32)

  t = {'embeddings.word_embeddings.weight': w(V, D),
       'embeddings.position_embeddings.weight': w(P, D),
       'embeddings.token_type_embeddings.weight': w(2, D),
       'embeddings.LayerNorm.weight': 1 + w(D),
       'embeddings.LayerNorm.bias': w(D),
       'embeddings.position_ids': np.arange(P)[None],
       'pooler.dense.weight': w(D, D), 'pooler.dense.bias': w(D)}
  for i in range(L):
    p = f'encoder.layer.{i}.'
    for name in ('query', 'key', 'value'):
      t[f'{p}attention.self.{name}.weight'] = w(D, D)
      t[f'{p}attention.self.{name}.bias'] = w(D)
    t[f'{p}attention.output.dense.weight'] = w(D, D)
    t[f'{p}attention.output.dense.bias'] = w(D)
    t[f'{p}intermediate.dense.weight'] = w(F, D)
    t[f'{p}intermediate.dense.bias'] = w(F)
    t[f'{p}output.dense.weight'] = w(D, F)
    t[f'{p}output.dense.bias'] = w(D)
    for ln in ('attention.output.LayerNorm', 'output.LayerNorm'):
      t[f'{p}{ln}.weight'] = 1 + w(D)
      t[f'{p}{ln}.bias'] = w(D)
  return t


def bert_forward(t, ids_BT):
  """HF BertModel + masked mean pooling, written out in numpy (float64)."""
  t = {k: v.astype(np.float64) for k, v in t.items()}

  def ln(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + 1e-12) * t[f'{name}.weight']
            + t[f'{name}.bias'])

  def dense(x, name):
    return x @ t[f'{name}.weight'].T + t[f'{name}.bias']

  b, n = ids_BT.shape
  mask_BT = ids_BT != 0
  x = (t['embeddings.word_embeddings.weight'][ids_BT]
       + t['embeddings.position_embeddings.weight'][:n]
       + t['embeddings.token_type_embeddings.weight'][0])
  x = ln(x, 'embeddings.LayerNorm')
  for i in range(L):
    p = f'encoder.layer.{i}.'
    q, k, v = (dense(x, f'{p}attention.self.{c}').reshape(b, n, H, D // H)
               for c in ('query', 'key', 'value'))
    s = np.einsum('bqhk,bthk->bhqt', q, k) / np.sqrt(D // H)
    s = s + np.where(mask_BT, 0, np.finfo(np.float64).min)[:, None, None]
    a = special.softmax(s, axis=-1)
    o = np.einsum('bhqt,bthk->bqhk', a, v).reshape(b, n, D)
    x = ln(x + dense(o, f'{p}attention.output.dense'),
           f'{p}attention.output.LayerNorm')
    h = dense(x, f'{p}intermediate.dense')
    h = 0.5 * h * (1 + special.erf(h / np.sqrt(2)))
    x = ln(x + dense(h, f'{p}output.dense'), f'{p}output.LayerNorm')
  m = mask_BT[..., None]
  return (x * m).sum(1) / m.sum(1)


def save(tmp_path, tensors, vocab=None):
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(HF_CONFIG, f)
  safetensors.numpy.save_file(tensors, str(tmp_path / 'model.safetensors'))
  words = vocab or ['[PAD]', '[UNK]', '[CLS]', '[SEP]'] + [
      f'w{i}' for i in range(V - 4)]
  (tmp_path / 'vocab.txt').write_text('\n'.join(words) + '\n')
  return str(tmp_path)
