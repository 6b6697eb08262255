"""BERT-family checkpoints in the Hugging Face layout -> this project's encoder.

A checkpoint directory holds config.json, model.safetensors and a tokenizer
(tokenizer.json, or vocab.txt for a WordPiece vocabulary). Every tensor is
mapped by name onto the parameters of `model.Classifier` with
`num_classes=0` (a mean-pooling sentence encoder); a missing or unexpected
tensor, or a shape that does not match the config, raises with its name.

Mapping decisions:
* HF Linear weights are [out, in]; Flax kernels are [in, out], split into
  heads: query/key/value [D, H, K], attention output [H, K, D].
* Token types: every token is type 0 here, so row 0 of the token-type table
  is folded into the position table (x = tok + (pos + type_0)). The other rows
  are dropped.
* Tensors with no counterpart in a mean-pooling encoder are read and ignored:
  `embeddings.position_ids` (a buffer), the [CLS] `pooler.*` and the
  pretraining heads `cls.*`.
* hidden_act 'gelu' is BERT's exact erf GELU ('gelu_exact' here); 'gelu_new'
  and 'gelu_pytorch_tanh' are the tanh form (flax's 'gelu').

Only numpy readers are used (safetensors.numpy, tokenizers): no PyTorch.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
import safetensors.numpy
import tokenizers

from jax_attnshare import model as model_lib
from jax_attnshare import sharing

ACTIVATIONS = {'gelu': 'gelu_exact', 'gelu_new': 'gelu',
               'gelu_pytorch_tanh': 'gelu', 'relu': 'relu'}
IGNORED_PREFIXES = ('embeddings.position_ids', 'pooler.', 'cls.')
# Task models (e.g. BertForSequenceClassification) prefix the encoder.
_PREFIX = 'bert.'


def read_config(model_dir: str) -> dict[str, Any]:
  path = os.path.join(model_dir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{model_dir} has no config.json; expected a '
                            'Hugging Face checkpoint directory.')
  with open(path) as f:
    return json.load(f)


def model_config(hf: dict[str, Any],
                 sharing_spec: sharing.SharingSpec | None = None
                 ) -> model_lib.ModelConfig:
  """The encoder config of a BERT config.json (a dict)."""
  if hf.get('model_type') != 'bert':
    raise ValueError(f'config.json: model_type {hf.get("model_type")!r} is '
                     'not supported; only "bert" checkpoints are.')
  if hf.get('position_embedding_type', 'absolute') != 'absolute':
    raise ValueError('config.json: position_embedding_type must be '
                     f'"absolute", got {hf["position_embedding_type"]!r}.')
  if hf['hidden_act'] not in ACTIVATIONS:
    raise ValueError(f'config.json: hidden_act {hf["hidden_act"]!r} is not '
                     f'one of {sorted(ACTIVATIONS)}.')
  layers, heads = hf['num_hidden_layers'], hf['num_attention_heads']
  sharing.validate_heads(hf['hidden_size'], heads)
  spec = sharing_spec or sharing.SharingSpec(num_layers=layers,
                                             num_heads=heads)
  return model_lib.ModelConfig(
      vocab_size=hf['vocab_size'], max_length=hf['max_position_embeddings'],
      sharing=spec, width=hf['hidden_size'], num_layers=layers,
      num_heads=heads, ffn_width=hf['intermediate_size'], num_classes=0,
      pooling='mean', padding_mask=True, qkv_bias=True,
      activation=ACTIVATIONS[hf['hidden_act']],
      layer_norm_eps=hf['layer_norm_eps'], embedding_norm=True,
      pad_id=hf.get('pad_token_id', 0))


def _layer_names(i: int) -> dict[str, tuple[str, ...]]:
  """HF tensor name -> path in our tree, for layer i (weights and biases)."""
  hf, ours = f'encoder.layer.{i}.', ('encoder', f'layer_{i}')
  names = {}
  for hf_sub, our_sub in (('attention.self.query', ('attention', 'query')),
                          ('attention.self.key', ('attention', 'key')),
                          ('attention.self.value', ('attention', 'value')),
                          ('attention.output.dense', ('attention', 'output')),
                          ('intermediate.dense', ('ffn', 'in')),
                          ('output.dense', ('ffn', 'out'))):
    names[f'{hf}{hf_sub}.weight'] = ours + our_sub + ('kernel',)
    names[f'{hf}{hf_sub}.bias'] = ours + our_sub + ('bias',)
  for hf_sub, our_sub in (('attention.output.LayerNorm', 'ln_attention'),
                          ('output.LayerNorm', 'ln_ffn')):
    names[f'{hf}{hf_sub}.weight'] = ours + (our_sub, 'scale')
    names[f'{hf}{hf_sub}.bias'] = ours + (our_sub, 'bias')
  return names


def tensor_names(num_layers: int) -> dict[str, tuple[str, ...]]:
  """Every HF tensor the encoder needs -> its parameter path.

  The token-type table maps to the position table, into which row 0 is
  folded.
  """
  names = {
      'embeddings.word_embeddings.weight': ('token_embed', 'embedding'),
      'embeddings.position_embeddings.weight': ('position_embed',
                                                'embedding'),
      'embeddings.token_type_embeddings.weight': ('position_embed',
                                                  'embedding'),
      'embeddings.LayerNorm.weight': ('ln_embed', 'scale'),
      'embeddings.LayerNorm.bias': ('ln_embed', 'bias'),
  }
  for i in range(num_layers):
    names.update(_layer_names(i))
  return names


def _convert(name: str, x: np.ndarray, cfg: model_lib.ModelConfig):
  """An HF tensor in our layout: [out, in] -> kernels, heads split."""
  h, k, d = cfg.num_heads, cfg.head_width, cfg.width
  if name.endswith(('query.weight', 'key.weight', 'value.weight')):
    return x.T.reshape(d, h, k)
  if name.endswith(('query.bias', 'key.bias', 'value.bias')):
    return x.reshape(h, k)
  if name.endswith('attention.output.dense.weight'):
    return x.T.reshape(h, k, d)
  if name.endswith('dense.weight'):
    return x.T
  return x


def _hf_shape(name: str, cfg: model_lib.ModelConfig) -> tuple[int, ...]:
  """The HF shape that `cfg` implies for a tensor of tensor_names."""
  d, f = cfg.width, cfg.ffn_width
  weight = name.endswith('.weight')
  if name == 'embeddings.word_embeddings.weight':
    return (cfg.vocab_size, d)
  if name == 'embeddings.position_embeddings.weight':
    return (cfg.max_length, d)
  if name == 'embeddings.token_type_embeddings.weight':
    return (-1, d)  # Any number of types.
  if 'intermediate.dense' in name:
    return (f, d) if weight else (f,)
  if name.endswith('.output.dense.weight') and '.attention.' not in name:
    return (d, f)
  if weight and ('dense' in name or '.self.' in name):
    return (d, d)
  return (d,)


def params_from_tensors(tensors: dict[str, np.ndarray],
                        cfg: model_lib.ModelConfig) -> dict:
  """Maps HF tensors onto the encoder's parameter tree.

  Raises:
    ValueError: a needed tensor is missing, a tensor is not known, or a shape
      does not match the config (each named).
  """
  tensors = {n[len(_PREFIX):] if n.startswith(_PREFIX) else n: v
             for n, v in tensors.items()}
  names = tensor_names(cfg.num_layers)
  missing = sorted(set(names) - set(tensors))
  unexpected = sorted(n for n in set(tensors) - set(names)
                      if not n.startswith(IGNORED_PREFIXES))
  if missing or unexpected:
    raise ValueError(
        f'Checkpoint does not match a {cfg.num_layers}-layer BERT encoder: '
        f'missing tensors {missing}; unexpected tensors {unexpected}.')
  for name in names:
    shape, want = tensors[name].shape, _hf_shape(name, cfg)
    if len(shape) != len(want) or any(w not in (-1, s)
                                      for s, w in zip(shape, want)):
      raise ValueError(f'Tensor {name} has shape {shape}; the config '
                       f'(config.json) implies {want} (-1: any).')
  types = tensors['embeddings.token_type_embeddings.weight']
  params = {}
  for name, path in names.items():
    if name == 'embeddings.token_type_embeddings.weight':
      continue
    value = np.asarray(tensors[name], np.float32)
    if name == 'embeddings.position_embeddings.weight':
      value = value + types[0]  # Every token is type 0.
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    # C order: a transposed view would be copied to the device in every
    # call that takes it.
    node[path[-1]] = np.ascontiguousarray(_convert(name, value, cfg))
  return params


def load(model_dir: str, sharing_spec: sharing.SharingSpec | None = None
         ) -> tuple[model_lib.ModelConfig, dict]:
  """(config, params) of the checkpoint in `model_dir`."""
  cfg = model_config(read_config(model_dir), sharing_spec)
  path = os.path.join(model_dir, 'model.safetensors')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{model_dir} has no model.safetensors (only '
                            'the safetensors format is read).')
  return cfg, params_from_tensors(safetensors.numpy.load_file(path), cfg)


def load_tokenizer(model_dir: str) -> tokenizers.Tokenizer:
  """tokenizer.json if present, else a lower-casing WordPiece on vocab.txt."""
  path = os.path.join(model_dir, 'tokenizer.json')
  if os.path.exists(path):
    tokenizer = tokenizers.Tokenizer.from_file(path)
  elif os.path.exists(os.path.join(model_dir, 'vocab.txt')):
    tokenizer = tokenizers.BertWordPieceTokenizer(
        os.path.join(model_dir, 'vocab.txt'), lowercase=True)
  else:
    raise FileNotFoundError(f'{model_dir} has neither tokenizer.json nor '
                            'vocab.txt.')
  # The file's own truncation and padding settings are replaced by encode's.
  tokenizer.no_truncation()
  tokenizer.no_padding()
  return tokenizer


def encode(tokenizer: tokenizers.Tokenizer, texts: Sequence[str],
           max_length: int, pad_id: int = 0) -> np.ndarray:
  """Token ids [N, max_length] with [CLS]/[SEP], truncated, pad_id padded."""
  tokens = np.full([len(texts), max_length], pad_id, np.int32)
  for row, encoding in zip(tokens, tokenizer.encode_batch(list(texts))):
    ids = encoding.ids
    if len(ids) > max_length:  # Keep [SEP] last, as HF truncation does.
      ids = ids[:max_length - 1] + ids[-1:]
    row[:len(ids)] = ids
  return tokens


def normalize(x_BD: np.ndarray) -> np.ndarray:
  """L2-normalized rows, as sentence-transformers' Normalize module."""
  return x_BD / np.maximum(np.linalg.norm(x_BD, axis=-1, keepdims=True),
                           1e-12)
