"""Cross-layer head links (DirectShare): a head uses an earlier layer's head.

`SharingSpec.posthoc.head_links` holds (layer, head, source layer, source
head): head `head` of `layer` uses the query, key and value (kernel and
bias) and output (kernel) parameters of `source head` of `source layer` <
`layer`. A source is never itself linked, so every head's parameters are
stored exactly once: a layer's projections hold only its own heads (M of
them, in head order), and the source layer hands the slices of the heads it
donates to later layers through the encoder's carry (`heads`: (source layer,
source head) -> its slices). Layers without links compute exactly as before.

Suffixes: B batch, T tokens, D width, H heads, M own heads, P borrowed
heads, S = M + P, K head width.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

QKV = ('query', 'key', 'value')


def sources(spec, layer: int) -> dict[int, tuple[int, int]]:
  """head -> (source layer, source head) for the linked heads of `layer`."""
  return {h: (sl, sh) for l, h, sl, sh in spec.posthoc.head_links
          if l == layer}


def own_heads(spec, layer: int) -> tuple[int, ...]:
  """The heads of `layer` that hold their own parameters, in order."""
  linked = sources(spec, layer)
  return tuple(h for h in range(spec.num_heads) if h not in linked)


def borrowed_heads(spec, layer: int) -> tuple[tuple[int, int], ...]:
  """The distinct (source layer, source head) that `layer` uses, sorted."""
  return tuple(sorted(set(sources(spec, layer).values())))


def donated_heads(spec, layer: int) -> tuple[int, ...]:
  """Heads of `layer` that later layers use."""
  return tuple(sorted({sh for _, _, sl, sh in spec.posthoc.head_links
                       if sl == layer}))


def slot_index(spec, layer: int) -> np.ndarray:
  """Position of each head in [own heads, borrowed heads]: [H] ints."""
  own, borrowed = own_heads(spec, layer), borrowed_heads(spec, layer)
  linked = sources(spec, layer)
  return np.array([own.index(h) if h in own
                   else len(own) + borrowed.index(linked[h])
                   for h in range(spec.num_heads)])


def donate(spec, layer: int, proj: dict, heads: Mapping) -> Mapping:
  """`heads` with the slices of the heads `layer` donates added."""
  donated = donated_heads(spec, layer)
  if not donated:
    return heads
  own = own_heads(spec, layer)
  heads = dict(heads)
  for h in donated:
    m = own.index(h)
    entry = {}
    for c in QKV:
      p = proj[c].variables['params']
      entry[c] = (p['kernel'][:, m], p['bias'][m] if 'bias' in p else None)
    entry['output'] = proj['output'].variables['params']['kernel'][m]
    heads[(layer, h)] = entry
  return heads


def gather(spec, layer: int, x_BTD, qkv_BTMK: tuple, heads: Mapping
           ) -> tuple:
  """Own-head q, k, v -> all H heads, computing the borrowed ones."""
  borrowed = borrowed_heads(spec, layer)
  if not borrowed:
    return qkv_BTMK
  index_H = slot_index(spec, layer)
  out = []
  for c, own_BTMK in zip(QKV, qkv_BTMK):
    slices = [heads[s][c] for s in borrowed]
    kernel_DPK = jnp.stack([k for k, _ in slices], axis=1)
    extra_BTPK = jnp.einsum('btd,dpk->btpk', x_BTD, kernel_DPK)
    if slices[0][1] is not None:
      extra_BTPK = extra_BTPK + jnp.stack([b for _, b in slices])[None, None]
    all_BTSK = jnp.concatenate([own_BTMK, extra_BTPK], axis=2)
    out.append(all_BTSK[:, :, index_H])
  return tuple(out)


def output(spec, layer: int, proj_output: Any, out_BTHK, heads: Mapping):
  """sum_h o_h W_O^{source(h)} + b_O, own heads through proj_output."""
  borrowed = borrowed_heads(spec, layer)
  if not borrowed:
    return proj_output(out_BTHK)
  own = np.asarray(own_heads(spec, layer), int)
  y_BTD = proj_output(out_BTHK[:, :, own])
  onehot_HP = np.zeros((spec.num_heads, len(borrowed)), np.float32)
  for h, source in sources(spec, layer).items():
    onehot_HP[h, borrowed.index(source)] = 1.
  kernel_PKD = jnp.stack([heads[s]['output'] for s in borrowed])
  return y_BTD + jnp.einsum('bthk,hp,pkd->btd', out_BTHK, onehot_HP,
                            kernel_PKD)
