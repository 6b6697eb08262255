"""Redundancy of a trained or imported model: weights and attention maps.

Two views, on any model whose layers hold their own attention heads:

* Weights: the cosine between per-head weight vectors for each DirectShare
  strategy (methods.STRATEGIES; 'qk' = W_Q‖W_K), with each head's best match
  in an earlier layer.
* Attention maps over a sample of real text: JS divergence and cosine
  between every two heads of any two layers (attn_stats.head_pair_similarity),
  reduced per layer pair with the same head index ('same') and with each
  head aligned to its best counterpart ('aligned': min JS, max cosine).

`analyze` writes CSV tables, heatmap PNGs and TensorBoard scalars and images
under `<workdir>/redundancy/` and returns the layer tables the sharing
methods select from. Suffixes: N layers, H heads, B examples, T tokens.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from clu import metric_writers
import jax
import numpy as np
import pandas as pd

from jax_attnshare import attn_stats
from jax_attnshare import model as model_lib
from jax_attnshare import plotting
from jax_attnshare.posthoc import methods
from jax_attnshare.posthoc import figures as posthoc_figures
from jax_attnshare import steps as steps_lib


@functools.partial(jax.jit, static_argnums=(2,))
def _pair_step(params, tokens_BT, cfg):
  model = model_lib.make_model(cfg)
  probs_NBHTT = steps_lib.maps_step(params, tokens_BT, model)
  return attn_stats.head_pair_similarity(probs_NBHTT, tokens_BT != cfg.pad_id)


def map_similarity(params: Any, cfg: model_lib.ModelConfig,
                   tokens_BT: np.ndarray,
                   batch_size: int) -> dict[str, np.ndarray]:
  """Head-pair JS and cosine [N, H, N, H], averaged over equal chunks."""
  if len(tokens_BT) % batch_size:
    raise ValueError(f'config.analysis.examples={len(tokens_BT)} must be a '
                     f'multiple of config.analysis.batch_size={batch_size}.')
  chunks = [jax.device_get(_pair_step(params, tokens_BT[i:i + batch_size],
                                      cfg))
            for i in range(0, len(tokens_BT), batch_size)]
  return jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *chunks)


def layer_tables(pairs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """[N, N] tables from head-pair similarities.

  js_same[l, m] = mean_h JS(l h, m h); js_aligned[l, m] = mean_h min_g
  JS(l h, m g) (each head of l against its closest head of m; not
  symmetric); cosine_same and cosine_aligned likewise with max.
  """
  js, cos = pairs['js'], pairs['cosine']
  same_js = np.einsum('lhmh->lmh', js).mean(-1)
  same_cos = np.einsum('lhmh->lmh', cos).mean(-1)
  return {'js_same': same_js, 'js_aligned': js.min(axis=3).mean(axis=1),
          'cosine_same': same_cos,
          'cosine_aligned': cos.max(axis=3).mean(axis=1)}


def weight_tables(params: Any, cfg: model_lib.ModelConfig
                  ) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
  """Cosine matrices per strategy and each head's best earlier match."""
  cos = {s: methods.weight_similarity(params, cfg, s)
         for s in methods.STRATEGIES}
  rows = []
  for strategy, cos_LHLH in cos.items():
    layer_LH, head_LH, value_LH = methods.best_matches(cos_LHLH)
    for (l, h), value in np.ndenumerate(value_LH):
      if l:
        rows.append({'strategy': strategy, 'layer': l, 'head': h,
                     'match_layer': layer_LH[l, h],
                     'match_head': head_LH[l, h], 'cosine': value})
  return cos, pd.DataFrame(rows)


def _pairs_frame(mats: dict[str, np.ndarray]) -> pd.DataFrame:
  """Long table of [N, H, N, H] matrices, one column per matrix."""
  index = np.indices(next(iter(mats.values())).shape).reshape(4, -1)
  frame = pd.DataFrame(dict(zip(('layer', 'head', 'other_layer',
                                 'other_head'), index)))
  for name, m in mats.items():
    frame[name] = m.ravel()
  return frame


def _layer_frame(tables: dict[str, np.ndarray]) -> pd.DataFrame:
  n = next(iter(tables.values())).shape[0]
  l, m = np.indices((n, n)).reshape(2, -1)
  return pd.DataFrame({'layer': l, 'other_layer': m,
                       **{k: v.ravel() for k, v in tables.items()}})


def analyze(params: Any, cfg: model_lib.ModelConfig, tokens_BT: np.ndarray,
            batch_size: int, workdir: str, title: str) -> dict[str, Any]:
  """Writes the tables, figures and TensorBoard summaries; returns them.

  Returns:
    'layers' ([N, N] tables of layer_tables), 'pairs' (head-pair JS and
    cosine) and 'weights' (cosine matrices per strategy).
  """
  methods.check_unshared(cfg)
  out_dir = os.path.join(workdir, 'redundancy')
  os.makedirs(out_dir, exist_ok=True)
  pairs = map_similarity(params, cfg, tokens_BT, batch_size)
  layers = layer_tables(pairs)
  weights, matches = weight_tables(params, cfg)
  _layer_frame(layers).to_csv(os.path.join(out_dir, 'map_layers.csv'),
                              index=False)
  _pairs_frame(pairs).to_csv(os.path.join(out_dir, 'map_head_pairs.csv'),
                             index=False)
  _pairs_frame(weights).to_csv(os.path.join(out_dir, 'weight_head_pairs.csv'),
                               index=False)
  matches.to_csv(os.path.join(out_dir, 'weight_best_matches.csv'),
                 index=False)
  figs = {
      'map_layers': posthoc_figures.layer_matrices(
          layers, f'{title}: attention-map similarity between layers'),
      'map_head_pairs': posthoc_figures.head_pair_matrices(
          {'JS divergence [nats]': pairs['js'], 'cosine': pairs['cosine']},
          f'{title}: attention-map similarity between heads'),
      'weight_head_pairs': posthoc_figures.head_pair_matrices(
          {f'cosine, {s}': m for s, m in weights.items()},
          f'{title}: per-head weight cosine (DirectShare strategies)'),
  }
  writer = metric_writers.create_default_writer(
      os.path.join(workdir, 'tb', 'redundancy'), asynchronous=False)
  with metric_writers.ensure_flushes(writer):
    for name, fig in figs.items():
      fig.savefig(os.path.join(out_dir, f'{name}.png'),
                  dpi=plotting.DPI)
      writer.write_images(0, {f'redundancy/{name}':
                              plotting.to_image(fig)[None]})
    n = cfg.num_layers
    writer.write_scalars(0, {
        f'redundancy/{k}/layer_{l + 1}_vs_{l}': v[l + 1, l]
        for k, v in layers.items() for l in range(n - 1)})
  writer.close()
  return {'layers': layers, 'pairs': pairs, 'weights': weights}
