"""LISA: a lightweight substitute for the attention of SA layers.

Our reading of arXiv 2408.01890 (methods sheet §6; the authors' code
`takagi97/lisa` was not readable, so this is a documented choice). For an SA
layer l with input X and the logits S_{l−1} of the layer before it:

  A_l = softmax(mask(F_align(S_{l−1}) + (X W_Q^LR)(X W_K^LR)ᵀ / sqrt(r)))

* F_align is a tiny MLP over the head axis, applied at every (query, key)
  position, with a residual: F(S)[:, i, j] = S[:, i, j]
  + W2 relu(W1 S[:, i, j] + b1) + b2 (H -> align_width -> H). It runs at
  all T² positions, so ReLU (not GELU) keeps its elementwise cost low. It
  can permute and mix heads, which the paper's first observation asks for.
  It acts on logits, not probabilities, so a mix of heads stays a valid
  softmax input.
* W_Q^LR, W_K^LR are per-head low-rank projections D -> H x r (r = rank,
  about d_h/6 in the paper's 128 -> ~20); they model the layer's own
  deviation from the aligned map.
* W2, b2 and W_K^LR start at zero, so a fresh module gives exactly
  A_l = softmax(mask(S_{l−1})) = A_{l−1}: plain SA. W1 and W_Q^LR start
  random so that both branches get gradients from the first step.
* The layer passes its own logits on, so a following LISA layer aligns from
  its adjacent layer.

Training (posthoc/finetune.lisa_loss_fn): base weights frozen; distillation from
the unshared model (KL between its and the substitute's attention maps on
the SA layers, and a Huber loss on the model outputs) plus the task loss
where there is one. Suffixes: B batch, T tokens, D width, H heads, A align
width, R rank.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

SCOPE = 'lisa'  # Name of the module inside each SA layer's attention.


class Substitute(nn.Module):
  """Aligned previous logits plus a low-rank correction -> (logits, probs)."""
  num_heads: int
  rank: int
  align_width: int

  @nn.compact
  def __call__(self, prev_logits_BHTT, x_BTD, mask_B1TT):
    logits_BHTT = prev_logits_BHTT
    if self.align_width:
      h, a = self.num_heads, self.align_width
      # Contracted in the [B, H, T, T] layout: no transposes of the maps.
      w_in_HA = self.param('align_in', nn.initializers.lecun_normal(), (h, a))
      b_in_A = self.param('align_in_bias', nn.initializers.zeros, (a,))
      w_out_AH = self.param('align_out', nn.initializers.zeros, (a, h))
      b_out_H = self.param('align_out_bias', nn.initializers.zeros, (h,))
      hidden_BATT = nn.relu(jnp.einsum('bhqt,ha->baqt', logits_BHTT, w_in_HA)
                            + b_in_A[None, :, None, None])
      logits_BHTT = (logits_BHTT
                     + jnp.einsum('baqt,ah->bhqt', hidden_BATT, w_out_AH)
                     + b_out_H[None, :, None, None])
    if self.rank:
      shape = (self.num_heads, self.rank)
      q_BTHR = nn.DenseGeneral(shape, use_bias=False, name='query_lr')(x_BTD)
      k_BTHR = nn.DenseGeneral(shape, use_bias=False,
                               kernel_init=nn.initializers.zeros,
                               name='key_lr')(x_BTD)
      logits_BHTT = logits_BHTT + jnp.einsum(
          'bqhr,bthr->bhqt', q_BTHR, k_BTHR) / jnp.sqrt(
              float(self.rank)).astype(x_BTD.dtype)
    masked_BHTT = logits_BHTT
    if mask_B1TT is not None:
      masked_BHTT = jnp.where(mask_B1TT, logits_BHTT,
                              jnp.finfo(logits_BHTT.dtype).min)
    return logits_BHTT, jax.nn.softmax(masked_BHTT, axis=-1)


def num_params(width: int, num_heads: int, rank: int, align_width: int) -> int:
  """Parameters of one Substitute."""
  align = 2 * num_heads * align_width + align_width + num_heads
  return 2 * width * num_heads * rank + (align if align_width else 0)


def is_lisa_path(path) -> bool:
  """True for the leaves of a Substitute (anything under a 'lisa' key)."""
  return any(getattr(k, 'key', None) == SCOPE for k in path)


def trainable_mask(params: Any) -> Any:
  """True on LISA leaves, False on the frozen base weights."""
  return jax.tree_util.tree_map_with_path(lambda p, _: is_lisa_path(p),
                                          params)


def flops_per_token(width: int, num_heads: int, rank: int, align_width: int,
                    length: int) -> int:
  """Matmul FLOPs of one Substitute per query token, `length` keys."""
  low_rank = 2 * 2 * width * num_heads * rank + 2 * num_heads * rank * length
  return low_rank + 2 * 2 * num_heads * align_width * length
