"""Encoder classifier and causal LM, their parts shared as a SharingSpec says.

The architecture is the blog's base code's (pbloem/former CTransformer): token
plus learned position embeddings, post-LN blocks, multi-head attention with
per-head width K = D / H and scale 1/sqrt(K), a ReLU FFN, mean or max pooling
and a linear head. Whether padding is masked and how parameters are
initialised are fields: the base code masks nothing and uses PyTorch's
initialisers (`padding_mask=False, pooling_mask=False, init='pytorch'`). A shared component is created once per layer group by the encoder
and handed to every block of the group, so Flax binds one parameter subtree in
all of them. Within a layer, a projection stores only its distinct heads and
gathers them by the spec's static head index; SA and CLA layers take the map
or the K/V activations that the encoder threads from earlier layers. With
`causal=True` the same blocks make a decoder (`LanguageModel`).

Shape suffixes: S seeds, B batch, T tokens, D width, E embedding width,
H heads, M stored heads, K head width, F FFN width, N layers, V vocab,
C classes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_attnshare import head_links
from jax_attnshare import lisa
from jax_attnshare import sharing

ATTENTION_COLLECTION = 'intermediates'
# 'gelu' is flax's tanh approximation; BERT checkpoints use the exact erf form.
ACTIVATIONS = {'relu': nn.relu, 'gelu': nn.gelu,
               'gelu_exact': lambda x: nn.gelu(x, approximate=False)}
POOLINGS = ('mean', 'max')
INITS = ('flax', 'pytorch')
TASKS = ('classify', 'lm')
DTYPES = ('float32', 'bfloat16')
ATTENTION_PATHS = ('auto', 'fused', 'explicit')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static model hyper-parameters; hashable so jit can treat it as static."""
  vocab_size: int
  max_length: int
  sharing: sharing.SharingSpec
  width: int = 128
  num_layers: int = 3
  num_heads: int = 8
  ffn_width: int = 512
  num_classes: int = 2
  dropout_rate: float = 0.0
  pooling: str = 'mean'
  # Attention gives padded keys no weight.
  padding_mask: bool = True
  # Pooling leaves padded positions out.
  pooling_mask: bool = True
  qkv_bias: bool = False
  activation: str = 'relu'
  layer_norm_eps: float = 1e-5
  embedding_norm: bool = False
  pad_id: int = 0
  # ALBERT's factorized embedding: tokens are embedded in E dimensions and
  # projected to D; 0 means E = D and no projection.
  embedding_width: int = 0
  # 'flax': lecun-normal kernels, zero biases, N(0, 1/E) embeddings.
  # 'pytorch': torch.nn.Linear's U(+-1/sqrt(fan_in)) kernels and biases and
  # nn.Embedding's N(0, 1), as the blog's base code.
  init: str = 'flax'
  # Std of a N(0, std^2) init of the token and position embedding tables; 0
  # keeps the init's default (1/sqrt(E) for 'flax', under which layer 0's
  # attention logits have std about 2/E and its maps stay uniform; 1 for
  # 'pytorch').
  embedding_init_std: float = 0.0
  # A decoder: each token attends to itself and earlier tokens only.
  causal: bool = False
  # Compute dtype of the matmuls; parameters stay float32, and softmax, layer
  # norms and the logits handed to losses and statistics are float32.
  dtype: str = 'float32'
  # In every layer whose map no one needs in this call: 'fused' computes
  # attention with jax.nn.dot_product_attention (fused_attention), 'auto'
  # only where that is cuDNN's fused kernel (fused_implementation; elsewhere
  # it is the explicit computation, and measured slower on a CPU);
  # 'explicit' always materialises the softmax map.
  attention: str = 'auto'

  @property
  def head_width(self) -> int:
    return self.width // self.num_heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def factorized(self) -> bool:
    return self.embedding_width not in (0, self.width)


def _one_of(m: Any, field: str, choices: tuple[str, ...], default: str,
            meaning: str = '') -> str:
  """config.model.<field> (default if absent), refused unless in choices."""
  value = m.get(field, default)
  if value not in choices:
    raise ValueError(f'config.model.{field} must be one of {choices}'
                     f'{meaning}, got {value!r}.')
  return value


def model_config(config: Any, vocab_size: int, pad_id: int) -> ModelConfig:
  """Validates `config.model`/`config.sharing` and builds the ModelConfig."""
  m = config.model
  if m.width < 1:
    raise ValueError(f'config.model.width must be >= 1, got {m.width}.')
  sharing.validate_heads(m.width, m.num_heads)
  task = config.get('task', 'classify')
  if task not in TASKS:
    raise ValueError(f'config.task must be one of {TASKS}, got {task!r}.')
  # (A sentence encoder has no classes: posthoc.hf_bert builds its own.)
  if task == 'classify' and m.num_classes < 2:
    raise ValueError(f'config.model.num_classes must be >= 2 for the '
                     f'classifier, got {m.num_classes}.')
  if not (isinstance(m.ffn_multiplier, int) and m.ffn_multiplier >= 1):
    raise ValueError(f'config.model.ffn_multiplier must be an int >= 1 (the '
                     f'FFN width over config.model.width), got '
                     f'{m.ffn_multiplier!r}.')
  if not (math.isfinite(m.layer_norm_eps) and m.layer_norm_eps > 0):
    raise ValueError(f'config.model.layer_norm_eps must be a finite number '
                     f'> 0, got {m.layer_norm_eps}.')
  if m.num_layers < 1:
    raise ValueError(f'config.model.num_layers must be >= 1, got '
                     f'{m.num_layers}.')
  pooling = _one_of(m, 'pooling', POOLINGS, 'mean')
  if m.activation not in ACTIVATIONS:
    raise ValueError(f'config.model.activation must be one of '
                     f'{sorted(ACTIVATIONS)}, got {m.activation!r}.')
  if not 0.0 <= m.dropout_rate < 1.0:
    raise ValueError(f'config.model.dropout_rate must be in [0, 1), got '
                     f'{m.dropout_rate}.')
  embedding_width = m.get('embedding_width', 0)
  if embedding_width < 0:
    raise ValueError(f'config.model.embedding_width must be >= 0 (0 = '
                     f'config.model.width), got {embedding_width}.')
  init = _one_of(m, 'init', INITS, 'flax')
  embedding_init_std = m.get('embedding_init_std', 0.0)
  if not (math.isfinite(embedding_init_std) and embedding_init_std >= 0):
    raise ValueError(f'config.model.embedding_init_std must be a finite number '
                     f'>= 0 (0 = Flax\'s default, 1/sqrt(embedding width)), '
                     f'got {embedding_init_std}.')
  dtype = _one_of(m, 'dtype', DTYPES, 'float32', ' (the compute dtype)')
  attention = _one_of(m, 'attention', ATTENTION_PATHS, 'auto')
  spec = sharing.from_config(config.sharing, m.num_layers, m.num_heads)
  return ModelConfig(
      vocab_size=vocab_size, max_length=config.data.max_length, sharing=spec,
      width=m.width, num_layers=m.num_layers, num_heads=m.num_heads,
      ffn_width=m.ffn_multiplier * m.width, num_classes=m.num_classes,
      dropout_rate=m.dropout_rate, pooling=pooling,
      padding_mask=m.padding_mask,
      pooling_mask=m.get('pooling_mask', True), qkv_bias=m.qkv_bias,
      activation=m.activation, layer_norm_eps=m.layer_norm_eps,
      embedding_norm=m.embedding_norm, pad_id=pad_id,
      embedding_width=embedding_width, init=init,
      embedding_init_std=float(embedding_init_std), causal=task == 'lm',
      dtype=dtype, attention=attention)


def stored_heads(cfg: ModelConfig, projection: str,
                 layer: int | None = None) -> int:
  """M: heads of `projection` (in `layer`) that hold their own parameters."""
  if layer is not None and cfg.sharing.posthoc.head_links:
    return len(head_links.own_heads(cfg.sharing, layer))
  index = cfg.sharing.head_index(projection)
  return cfg.num_heads if index is None else max(index) + 1


def dense_init(cfg: ModelConfig, fan_in: int) -> dict[str, Any]:
  """Initializer kwargs of a Dense layer that reads fan_in inputs."""
  if cfg.init == 'flax':
    return {}
  bound = 1 / math.sqrt(fan_in)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  # Variance bound^2 / 3 = 1 / (3 fan_in): torch's kaiming_uniform(a=sqrt(5)).
  return {'kernel_init': nn.initializers.variance_scaling(
      1 / 3, 'fan_in', 'uniform'), 'bias_init': bias_init}


class FeedForward(nn.Module):
  """Position-wise FFN: Dense(F) -> activation -> Dense(D)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.config
    h_BTF = ACTIVATIONS[cfg.activation](
        nn.Dense(cfg.ffn_width, name='in', dtype=cfg.compute_dtype,
                 **dense_init(cfg, cfg.width))(x_BTD))
    return nn.Dense(cfg.width, name='out', dtype=cfg.compute_dtype,
                    **dense_init(cfg, cfg.ffn_width))(h_BTF)


class LayerNorms(nn.Module):
  """The two post-LN norms of a block as one shareable component."""
  config: ModelConfig

  def setup(self):
    eps = self.config.layer_norm_eps
    self.ln_attention = nn.LayerNorm(eps)
    self.ln_ffn = nn.LayerNorm(eps)

  def __call__(self, x_BTD, which: str):
    return getattr(self, f'ln_{which}')(x_BTD)


class SharedWeightQKV(nn.Module):
  """Q, K, V = X·Ws·Dq, X·Ws·Dk, X·Ws·Dv (arXiv 2412.00359).

  Per head, Q Kᵀ = X Ws Dq Dk Wsᵀ Xᵀ, so the logits are symmetric.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD):
    cfg = self.config
    shape = (cfg.num_heads, cfg.head_width)
    s_BTHK = nn.DenseGeneral(shape, use_bias=cfg.qkv_bias, name='shared',
                             dtype=cfg.compute_dtype,
                             **dense_init(cfg, cfg.width))(x_BTD)
    diagonals = [self.param(f'{c}_scale', nn.initializers.ones, shape)
                 for c in ('query', 'key', 'value')]
    return tuple(s_BTHK * d_HK[None, None].astype(cfg.compute_dtype)
                 for d_HK in diagonals)


def make_component(cfg: ModelConfig, part: str, name: str,
                   layer: int | None = None) -> nn.Module:
  """One copy of a shareable part (see sharing.PARTS)."""
  if part == 'ffn':
    return FeedForward(cfg, name=name)
  if part == 'norms':
    return LayerNorms(cfg, name=name)
  if part == 'qkv':
    return SharedWeightQKV(cfg, name=name)
  heads = stored_heads(cfg, part, layer)
  # A layer whose heads all use earlier layers' (head links) holds empty
  # kernels, which the default initializers cannot scale (zero fan).
  empty = {} if heads else {'kernel_init': nn.initializers.zeros}
  if part == 'output':
    return nn.DenseGeneral(
        cfg.width, axis=(-2, -1), name=name, dtype=cfg.compute_dtype,
        **{**dense_init(cfg, max(heads, 1) * cfg.head_width), **empty})
  return nn.DenseGeneral((heads, cfg.head_width), use_bias=cfg.qkv_bias,
                         name=name, dtype=cfg.compute_dtype,
                         **{**dense_init(cfg, cfg.width), **empty})


def _expand(t_BTMK, index):
  """Stored heads -> one per head, by the spec's static head index."""
  return t_BTMK if index is None else t_BTMK[:, :, np.asarray(index)]


class Carry(NamedTuple):
  """What earlier layers computed, passed from layer to layer for reuse.

  Attributes:
    probs: the last computed softmax map, for SA layers.
    logits: its unmasked logits, for LISA in SA layers.
    kv: the last computed stored-head keys and values, for CLA layers.
    heads: slices of the heads that later layers link to (head_links.py).
  """
  probs: jax.Array | None = None
  logits: jax.Array | None = None
  kv: tuple[jax.Array, jax.Array] | None = None
  heads: Mapping[tuple[int, int], dict] = types.MappingProxyType({})


class SelfAttention(nn.Module):
  """Multi-head self-attention of layer `layer`; `shared` maps part -> module.

  Takes and returns the Carry of what earlier layers computed for reuse,
  updated with what this layer computed.
  """
  config: ModelConfig
  layer: int = 0
  shared: dict[str, nn.Module] = dataclasses.field(default_factory=dict)

  @nn.compact
  def __call__(self, x_BTD, mask_B1TT, carry: Carry):
    cfg, spec = self.config, self.config.sharing
    parts = spec.layer_parts(self.layer)
    proj = {c: self.shared.get(c) or make_component(cfg, c, c, self.layer)
            for c in parts if c not in ('ffn', 'norms')}
    if 'qkv' in proj:
      q_BTMK, k_BTMK, v_BTMK = proj['qkv'](x_BTD)
    else:
      q_BTMK, k_BTMK, v_BTMK = (proj[c](x_BTD) if c in proj else None
                                for c in ('query', 'key', 'value'))
    posthoc = spec.posthoc
    if posthoc.head_links:
      q_BTMK, k_BTMK, v_BTMK = head_links.gather(
          spec, self.layer, x_BTD, (q_BTMK, k_BTMK, v_BTMK), carry.heads)
    if spec.reuses_kv(self.layer):
      k_BTMK, v_BTMK = carry.kv
    elif k_BTMK is not None:
      carry = carry._replace(kv=(k_BTMK, v_BTMK))
    dtype = cfg.compute_dtype
    v_BTHK = _expand(v_BTMK, spec.head_index('value')).astype(dtype)
    if spec.reuses_map(self.layer):
      if posthoc.has_lisa:
        logits_BHTT, probs_BHTT = lisa.Substitute(
            cfg.num_heads, posthoc.lisa_rank, posthoc.lisa_align_width,
            name=lisa.SCOPE)(carry.logits, x_BTD, mask_B1TT)
        carry = carry._replace(logits=logits_BHTT, probs=probs_BHTT)
      probs_BHTT = carry.probs
    else:
      q_BTHK = _expand(q_BTMK, spec.head_index('query')).astype(dtype)
      k_BTHK = _expand(k_BTMK, spec.head_index('key')).astype(dtype)
      if self._fused(q_BTHK.shape[1]):
        out_BTHK = fused_attention(cfg, q_BTHK, k_BTHK, v_BTHK, mask_B1TT)
        # No later layer reads this layer's map: a stale one must not leak.
        carry = carry._replace(logits=None, probs=None)
        probs_BHTT = None
      else:
        # Float32 logits (accumulated so from bfloat16 products), softmax
        # and map, whatever the compute dtype.
        logits_BHTT = jnp.einsum('bqhk,bthk->bhqt', q_BTHK, k_BTHK,
                                 preferred_element_type=jnp.float32)
        logits_BHTT = logits_BHTT / jnp.sqrt(cfg.head_width).astype(
            logits_BHTT.dtype)
        # Unmasked, for LISA layers after it.
        carry = carry._replace(logits=logits_BHTT)
        if mask_B1TT is not None:
          logits_BHTT = jnp.where(mask_B1TT, logits_BHTT,
                                  jnp.finfo(logits_BHTT.dtype).min)
        probs_BHTT = jax.nn.softmax(logits_BHTT, axis=-1)
        carry = carry._replace(probs=probs_BHTT)
    if probs_BHTT is not None:
      # Sown only when the caller makes the collection mutable, so the
      # training step pays nothing for it. SA layers sow the map they reuse.
      self.sow(ATTENTION_COLLECTION, 'attention_probs', probs_BHTT)
      out_BTHK = jnp.einsum('bhqt,bthk->bqhk', probs_BHTT.astype(dtype),
                            v_BTHK)
    index = spec.head_index('output')
    if index is not None:
      # sum_h o_h W_m(h) = sum_m (sum over h with m(h) = m of o_h) W_m.
      onehot_HM = np.eye(max(index) + 1, dtype=out_BTHK.dtype)[
          np.asarray(index)]
      out_BTHK = jnp.einsum('bthk,hm->btmk', out_BTHK, onehot_HM)
    if posthoc.head_links:
      out_BTD = head_links.output(spec, self.layer, proj['output'], out_BTHK,
                                  carry.heads)
      return out_BTD, carry._replace(
          heads=head_links.donate(spec, self.layer, proj, carry.heads))
    return proj['output'](out_BTHK), carry

  def _fused(self, length: int) -> bool:
    """Whether this layer's map (of `length` tokens) is computed fused.

    Fused where no one needs the map in this call and, for 'auto', where
    fusing is cuDNN's kernel. The maps and statistics steps make the
    attention collection mutable to read every map; the layer before an SA
    layer hands its map (and LISA's logits) on.
    """
    cfg = self.config
    if (cfg.attention == 'explicit'
        or self.is_mutable_collection(ATTENTION_COLLECTION)):
      return False
    if (cfg.attention == 'auto'
        and fused_implementation(cfg, (length,)) != 'cudnn'):
      return False
    following = self.layer + 1
    return not (following < cfg.num_layers
                and cfg.sharing.reuses_map(following))


def fused_implementation(cfg: ModelConfig, lengths: Sequence[int] = ()
                         ) -> str:
  """jax.nn.dot_product_attention's implementation for cfg on this backend.

  cuDNN's fused kernel on an NVIDIA GPU in bfloat16 where the exact call of
  the training step compiles at every sequence length the run uses
  (cudnn_compiles; lengths, default cfg.max_length); XLA's otherwise. jax
  0.10 takes XLA's for implementation=None even on a GPU, so the choice is
  made here.
  """
  device = jax.devices()[0]
  if (device.platform == 'gpu' and device.device_kind.startswith('NVIDIA')
      and cfg.dtype == 'bfloat16'
      and cudnn_compiles(cfg.num_heads, cfg.head_width,
                         tuple(lengths) or (cfg.max_length,), cfg.causal,
                         cfg.padding_mask)):
    return 'cudnn'
  return 'xla'


@functools.lru_cache(maxsize=None)
def cudnn_compiles(num_heads: int, head_width: int, lengths: tuple[int, ...],
                   causal: bool, masked: bool) -> bool:
  """Whether the training step's cuDNN attention compiles at every length.

  Compiles cudnn_probe at each length. A refusal is logged with its reason
  and means the explicit path for the whole run.
  """
  fields = dict(num_heads=num_heads, head_width=head_width, causal=causal,
                masked=masked)
  for length in lengths:
    probe, args = cudnn_probe(num_heads, head_width, length, causal, masked)
    try:
      probe.lower(*args).compile()
    # cuDNN refuses shapes, versions and devices in many ways; any refusal
    # means the explicit path, never a failed run.
    except Exception as e:  # pylint: disable=broad-except
      logging.warning(
          'cuDNN fused attention does not compile here for %s at length %d '
          '(%s: %s); attention=\'auto\' computes the map explicitly and '
          'attention=\'fused\' takes XLA\'s implementation.', fields, length,
          type(e).__name__, str(e)[:2000])
      return False
  logging.info('cuDNN fused attention compiles for %s at lengths %s.', fields,
               lengths)
  return True


def cudnn_probe(num_heads: int, head_width: int, length: int, causal: bool,
                masked: bool) -> tuple[Callable, tuple[Any, ...]]:
  """The training step's cuDNN attention call, jitted, and abstract inputs.

  fused_attention's cuDNN call as the model makes it (causal or not, with
  padding or not), its gradient, vmapped over seeds whose bfloat16 inputs
  have the model's heads and head width and which share the batch's
  tokens (the case that jax's own batching rules got wrong).
  """
  def loss(q_BTHK, tokens_BT):
    mask_B1TT = _mask(tokens_BT != 0, masked, causal)
    out_BTHK = _attend(q_BTHK, q_BTHK, q_BTHK, mask_B1TT, length,
                       1 / math.sqrt(head_width), causal, masked, 'cudnn')
    return out_BTHK.astype(jnp.float32).sum()

  args = (jax.ShapeDtypeStruct((2, 2, length, num_heads, head_width),
                               jnp.bfloat16),
          jax.ShapeDtypeStruct((2, length), jnp.int32))
  return jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None))), args


def fused_attention(cfg: ModelConfig, q_BTHK, k_BTHK, v_BTHK, mask_B1TT):
  """softmax(mask(Q Kᵀ / sqrt(K))) V without the map leaving the kernel.

  A fully masked row (an all-padding review) attends uniformly over all
  keys, as in the explicit path.
  """
  length = q_BTHK.shape[1]
  return _attend(q_BTHK, k_BTHK, v_BTHK, mask_B1TT, length,
                 1 / math.sqrt(cfg.head_width), cfg.causal, cfg.padding_mask,
                 fused_implementation(cfg, (length,)))


def _mask(valid_BT, padding: bool, causal: bool):
  """Which keys each query may see, broadcastable to [B, H, T, T], or None."""
  mask_B1TT = valid_BT[:, None, None, :] if padding else None
  if causal:
    length = valid_BT.shape[1]
    causal_11TT = jnp.tril(jnp.ones((length, length), bool))[None, None]
    mask_B1TT = causal_11TT if mask_B1TT is None else mask_B1TT & causal_11TT
  return mask_B1TT


def _attend(q_BTHK, k_BTHK, v_BTHK, mask_B1TT, length: int, scale: float,
            causal: bool, padding: bool, implementation: str):
  """Fused attention under _mask(valid, padding, causal) of right-padded rows.

  The padding goes to the kernel as each row's number of real keys (the
  mask's last query row, which causality leaves whole), which cuDNN takes
  without a [T, T] mask; a row without real keys attends to all with equal
  weight, as masking every logit in the explicit path does.
  """
  attention = _kernel(scale, causal, implementation)
  if not padding:
    return attention(q_BTHK, k_BTHK, v_BTHK)
  keys_B = mask_B1TT[:, 0, -1, :].sum(axis=-1, dtype=jnp.int32)
  empty_B = keys_B == 0
  out_BTHK = attention(q_BTHK, k_BTHK, v_BTHK,
                       jnp.where(empty_B, length, keys_B))
  uniform_B1HK = v_BTHK.mean(axis=1, keepdims=True)
  return jnp.where(empty_B[:, None, None, None], uniform_B1HK, out_BTHK)


def batch_folded(fn: Callable) -> Callable:
  """fn of arrays with a leading batch axis, vmaps folded into that axis.

  Under jax.vmap (of any depth), fn is called once on [A * B, ...] arrays,
  unbatched arguments broadcast to the vmapped axis first, instead of
  through the batching rules of the primitives inside it: jax's rules for
  cuDNN's attention reshape unbatched operands (a cotangent, shared
  lengths) to the folded batch and fail. fn's outputs must have the same
  leading batch axis.
  """
  @jax.custom_batching.custom_vmap
  def folded(*args):
    return fn(*args)

  @folded.def_vmap
  def fold(axis_size, in_batched, *args):
    args = [x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
            for x, batched in zip(args, in_batched)]
    out = folded(*(x.reshape(-1, *x.shape[2:]) for x in args))
    return (jax.tree.map(lambda y: y.reshape(axis_size, -1, *y.shape[1:]),
                         out),
            jax.tree.map(lambda _: True, out))

  return folded


@functools.lru_cache(maxsize=None)
def _kernel(scale: float, causal: bool, implementation: str) -> Callable:
  """(Q, K, V[, key lengths]) -> fused attention, differentiable, vmappable.

  The seeds' vmap is folded into the kernel's batch (batch_folded), so
  cuDNN sees one plain batch. custom_vmap takes no reverse-mode
  derivative, so the gradient is a custom_vjp whose forward and backward
  are both folded. The backward asks jax.vjp for the kernel's gradient,
  which runs the forward kernel again; the forward runs it in training
  mode too (with the softmax statistics), so both are one call on the same
  operands, and XLA's common-subexpression pass can keep one.
  """
  def attend(q_BTHK, k_BTHK, v_BTHK, *keys_B):
    out_BTHK, _ = jax.nn.dot_product_attention(
        q_BTHK, k_BTHK, v_BTHK, scale=scale, is_causal=causal,
        key_value_seq_lengths=keys_B[0] if keys_B else None,
        implementation=implementation, return_residual=True)
    return out_BTHK

  def gradients(q_BTHK, k_BTHK, v_BTHK, *keys_and_cotangent):
    *keys_B, g_BTHK = keys_and_cotangent
    _, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, *keys_B), q_BTHK,
                     k_BTHK, v_BTHK)
    return vjp(g_BTHK)

  forward, backward = batch_folded(attend), batch_folded(gradients)

  @jax.custom_vjp
  def attention(q_BTHK, k_BTHK, v_BTHK, *keys_B):
    return forward(q_BTHK, k_BTHK, v_BTHK, *keys_B)

  def attention_fwd(*args):
    return forward(*args), args

  def attention_bwd(args, g_BTHK):
    _, _, _, *keys_B = args
    # Key lengths are integers: no cotangent.
    return (*backward(*args, g_BTHK), *(None for _ in keys_B))

  attention.defvjp(attention_fwd, attention_bwd)
  return attention


class EncoderBlock(nn.Module):
  """Post-LN block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""
  config: ModelConfig
  layer: int = 0
  shared: dict[str, nn.Module] = dataclasses.field(default_factory=dict)

  @nn.compact
  def __call__(self, x_BTD, mask_B1TT, carry: Carry, deterministic: bool):
    cfg = self.config
    drop = nn.Dropout(cfg.dropout_rate, deterministic=deterministic)
    attn = {c: m for c, m in self.shared.items() if c not in ('ffn', 'norms')}
    a_BTD, carry = SelfAttention(cfg, self.layer, shared=attn,
                                 name='attention')(x_BTD, mask_B1TT, carry)
    norms = self.shared.get('norms')

    def norm(which, y_BTD):
      if norms is not None:
        return norms(y_BTD, which)
      return nn.LayerNorm(cfg.layer_norm_eps, name=f'ln_{which}')(y_BTD)

    x_BTD = norm('attention', x_BTD + drop(a_BTD))
    ffn = self.shared.get('ffn') or FeedForward(cfg, name='ffn')
    return norm('ffn', x_BTD + drop(ffn(x_BTD))), carry


def attention_mask(cfg: ModelConfig, valid_BT):
  """Which keys each query may see, broadcastable to [B, H, T, T], or None."""
  return _mask(valid_BT, cfg.padding_mask, cfg.causal)


class Encoder(nn.Module):
  """The stack of blocks; creates each shared component once per group."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTD, mask_B1TT, deterministic: bool):
    cfg = self.config
    spec = cfg.sharing
    groups = [{c: make_component(cfg, c, f'shared_{c}_g{g}')
               for c in spec.shared_parts}
              for g in range(len(spec.layer_groups))]
    carry = Carry()
    for layer in range(cfg.num_layers):
      g = spec.group_of(layer)
      shared = groups[g] if g is not None else {}
      x_BTD, carry = EncoderBlock(cfg, layer, shared=shared,
                                  name=f'layer_{layer}')(
                                      x_BTD, mask_B1TT, carry, deterministic)
    return x_BTD


def embed(cfg: ModelConfig, tokens_BT, deterministic: bool):
  """Token + position embeddings (projected E -> D if factorized), dropout.

  Called inside a parent's compact method, so its modules belong to it.
  """
  e = cfg.embedding_width if cfg.factorized else cfg.width
  std = cfg.embedding_init_std or (1.0 if cfg.init == 'pytorch' else 0.0)
  init = {'embedding_init': nn.initializers.normal(std)} if std else {}
  positions_T = jnp.arange(tokens_BT.shape[1])
  x_BTE = (nn.Embed(cfg.vocab_size, e, name='token_embed', **init)(tokens_BT)
           + nn.Embed(cfg.max_length, e, name='position_embed', **init)(
               positions_T)[None])
  if cfg.embedding_norm:
    x_BTE = nn.LayerNorm(cfg.layer_norm_eps, name='ln_embed')(x_BTE)
  if cfg.factorized:
    x_BTE = nn.Dense(cfg.width, name='embed_projection',
                     dtype=cfg.compute_dtype, **dense_init(cfg, e))(x_BTE)
  return nn.Dropout(cfg.dropout_rate, deterministic=deterministic)(x_BTE)


class Classifier(nn.Module):
  """Embeddings -> encoder -> masked pooling -> linear head (logits).

  With `num_classes=0` there is no head and the pooled vector is returned
  (a sentence encoder, as for imported pretrained models).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BT, deterministic: bool = True):
    cfg = self.config
    valid_BT = tokens_BT != cfg.pad_id
    x_BTD = embed(cfg, tokens_BT, deterministic)
    x_BTD = Encoder(cfg, name='encoder')(
        x_BTD, attention_mask(cfg, valid_BT), deterministic)
    pooled_BD = pool(x_BTD, valid_BT if cfg.pooling_mask else None,
                     cfg.pooling)
    if not cfg.num_classes:
      return pooled_BD
    # Float32 logits for the loss, whatever the compute dtype.
    return nn.Dense(cfg.num_classes, name='head', dtype=cfg.compute_dtype,
                    **dense_init(cfg, cfg.width))(pooled_BD).astype(
                        jnp.float32)


class LanguageModel(nn.Module):
  """Embeddings -> causal blocks -> next-token logits_BTV."""
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens_BT, deterministic: bool = True):
    cfg = self.config
    x_BTD = embed(cfg, tokens_BT, deterministic)
    x_BTD = Encoder(cfg, name='encoder')(
        x_BTD, attention_mask(cfg, tokens_BT != cfg.pad_id), deterministic)
    return nn.Dense(cfg.vocab_size, name='lm_head', dtype=cfg.compute_dtype,
                    **dense_init(cfg, cfg.width))(x_BTD).astype(jnp.float32)


def make_model(cfg: ModelConfig) -> nn.Module:
  return LanguageModel(cfg) if cfg.causal else Classifier(cfg)


def pool(x_BTD, mask_BT, pooling: str):
  """Mean or max over tokens; padded tokens are left out when masked."""
  if mask_BT is None:
    return x_BTD.mean(axis=1) if pooling == 'mean' else x_BTD.max(axis=1)
  m_BT1 = mask_BT[..., None]
  if pooling == 'mean':
    count_B1 = jnp.maximum(m_BT1.sum(axis=1), 1)
    return jnp.where(m_BT1, x_BTD, 0).sum(axis=1) / count_B1
  return jnp.where(m_BT1, x_BTD, jnp.finfo(x_BTD.dtype).min).max(axis=1)


def attention_probs(intermediates) -> jax.Array:
  """Stacks the sown maps into probs_NBHTT, in layer order."""
  layers = intermediates['encoder']
  return jnp.stack([layers[f'layer_{i}']['attention']['attention_probs'][0]
                    for i in range(len(layers))
                    if f'layer_{i}' in layers])
