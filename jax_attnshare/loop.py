"""train_and_evaluate: the loop that wires data, steps, writers and checkpoints.

Everything that can be checked without data or compilation (config fields,
sharing spec, workdir identity) is checked first. Train metrics stay on the
device between logging steps; evaluation, attention statistics and the
summary are written at every evaluation, and a checkpoint (with the
evaluation history in its meta) at every checkpoint step and at the end, so a
rerun of the same command resumes and a crash loses nothing finished.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import time
from typing import Any, Callable

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
import numpy as np

from jax_attnshare import attn_stats
from jax_attnshare import checkpoint
from jax_attnshare import cost
from jax_attnshare import data
from jax_attnshare import figures
from jax_attnshare import model as model_lib
from jax_attnshare import results
from jax_attnshare import train
from jax_attnshare import writers as writers_lib

SEED_MODES = ('shared', 'per_seed')
VERSIONED = ('jax', 'flax', 'optax', 'orbax-checkpoint', 'clu')


def validate(config: Any) -> None:
  """Checks the loop fields; raises ValueError naming the field."""
  positive = ('num_seeds', 'batch_size', 'num_train_steps', 'log_every_steps',
              'eval_every_steps', 'ckpt_every_steps', 'max_to_keep',
              'eval_batch_size', 'stats_examples', 'stats_batch_size')
  for name in positive:
    if config[name] < 1:
      raise ValueError(f'config.{name} must be >= 1, got {config[name]}.')
  for name in ('eval_every_steps', 'ckpt_every_steps'):
    if config[name] % config.log_every_steps:
      raise ValueError(
          f'config.{name}={config[name]} must be a multiple of '
          f'config.log_every_steps={config.log_every_steps}, so a resumed '
          'run logs the same windows as an uninterrupted one.')
  if config.stats_examples % config.stats_batch_size:
    raise ValueError(
        f'config.stats_examples={config.stats_examples} must be a multiple '
        f'of config.stats_batch_size={config.stats_batch_size}.')
  if config.data.seed_mode not in SEED_MODES:
    raise ValueError(f'config.data.seed_mode must be one of {SEED_MODES}, '
                     f'got {config.data.seed_mode!r}.')


def _versions() -> dict[str, str]:
  return {name: importlib.metadata.version(name) for name in VERSIONED}


def _summary_attention(stats_S: dict[str, np.ndarray]) -> dict:
  """Per-seed attention entries: per-layer metrics, per-head and matrices."""
  layer_S = attn_stats.per_layer(stats_S)
  out = dict(layer_S)
  for name, value in stats_S.items():
    if name not in layer_S or value.shape != layer_S[name].shape:
      out[name if name.endswith('_per_head') or name not in layer_S
          else f'{name}_per_head'] = value
  return out


def _review_maps(steps, params, tokens_T: np.ndarray,
                 pad_id: int) -> np.ndarray:
  """probs_SNHTT of one review, cropped to its valid tokens."""
  n = max(int((tokens_T != pad_id).sum()), 1)
  probs_SNBHTT = jax.device_get(steps.maps(params,
                                           steps.put_shared(tokens_T[None])))
  return np.asarray(probs_SNBHTT)[:, :, 0, :, :n, :n]


def train_and_evaluate(config: Any, workdir: str, config_name: str = '',
                       read_texts: Callable | None = None) -> dict:
  """Trains config.num_seeds replicas in one vmapped step; returns summary."""
  start_time = time.time()
  validate(config)
  cfg = results.config_dict(config)
  mcfg = model_lib.model_config(config, config.data.vocab_size, data.PAD_ID)
  spec = mcfg.sharing.to_string()
  seeds = [config.seed + i for i in range(config.num_seeds)]
  os.makedirs(workdir, exist_ok=True)
  results.check_workdir(workdir, cfg)
  optimizer = train.make_optimizer(config.opt, config.num_train_steps)
  model = model_lib.make_model(mcfg)
  per_seed = config.data.seed_mode == 'per_seed'
  steps = train.SeedSteps(model, optimizer, config.data.max_length,
                          config.num_seeds, per_seed, config.seed_chunk)

  kwargs = {'read_texts': read_texts} if read_texts else {}
  dataset = data.load_text_dataset(config.data, workdir, **kwargs)
  results.write_config(workdir, cfg, {
      'config_name': config_name, 'seeds': seeds, 'sharing': spec,
      'versions': _versions(), 'devices': [str(d) for d in jax.devices()]})
  batches = data.TrainBatches(dataset.train, config.batch_size,
                              config.data.data_seed,
                              seeds if per_seed else None)
  if config.stats_examples > len(dataset.test):
    raise ValueError(f'config.stats_examples={config.stats_examples} exceeds '
                     f'the {len(dataset.test)} test examples.')
  stats_tokens = dataset.test.tokens[:config.stats_examples]
  heatmap_tokens = dataset.test.tokens[config.heatmap_example]
  heatmap_pieces = data.pieces(dataset.tokenizer, heatmap_tokens)

  params_count = cost.param_counts(mcfg)
  cost_summary = cost.summary(mcfg)
  keys = train.seed_keys(seeds)
  ckpt = checkpoint.Checkpointer(workdir, config.max_to_keep)
  history, diverged, wall_before = [], {}, 0.0
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(jax.eval_shape(steps.init, keys))
    history = meta['history']
    diverged = {int(k): v for k, v in meta['diverged'].items()}
    wall_before = meta['wall_time_s']
    logging.info('Resumed %s from step %d.', workdir, ckpt.latest_step())
  else:
    state = steps.init(keys)
  first_step = int(jax.device_get(state.step)[0])

  writers = writers_lib.SeedWriters(workdir, seeds)
  if first_step == 0:
    writers.write_hparams({'sharing': spec, 'num_seeds': config.num_seeds,
                           **{f'params/{k}': v
                              for k, v in params_count.items()}})
  report = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writers.agg,
      every_steps=config.log_every_steps)
  logging.info('Sharing %s; parameters %s; seeds %s.', spec, params_count,
               seeds)

  def write_summary(step, final_attention):
    value = results.summary(
        config=cfg, config_name=config_name, sharing=spec, seeds=seeds,
        params=params_count, cost=cost_summary, completed_steps=step,
        wall_time_s=wall_before + time.time() - start_time, history=history,
        diverged=diverged, final_attention=final_attention,
        sparsity_thresholds=_threshold_descriptions())
    value = results.jsonable(value)
    results.write_json(os.path.join(workdir, 'summary.json'), value)
    return value

  summary, window, window_steps = None, None, 0
  window_start = time.time()
  try:
    with metric_writers.ensure_flushes(*writers.all):
      for step in range(first_step + 1, config.num_train_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, m_S = steps.train(state, steps.put_batch(batches(step - 1)))
        window = m_S if window is None else jax.tree.map(jnp.add, window, m_S)
        window_steps += 1
        report(step)
        last = step == config.num_train_steps
        if step % config.log_every_steps and not last:
          continue
        train_S = {k: v / window_steps
                   for k, v in jax.device_get(window).items()}
        seconds = time.time() - window_start
        flag_nonfinite(train_S['loss'], step, diverged, seeds,
                        config.halt_on_nonfinite)
        writers.write_scalars(step, {f'train/{k}': v
                                     for k, v in train_S.items()})
        writers.agg.write_scalars(step, {
            'train/examples_per_sec':
                window_steps * config.batch_size * config.num_seeds / seconds})
        window, window_steps, window_start = None, 0, time.time()

        if last or step % config.eval_every_steps == 0:
          with report.timed('eval'):
            test_S = train.evaluate(steps, state.params, data.eval_batches(
                dataset.test, config.eval_batch_size))
          with report.timed('attention_stats'):
            stats_S = train.attention_statistics(
                steps, state.params, stats_tokens, config.stats_batch_size)
            maps_SNHTT = _review_maps(steps, state.params, heatmap_tokens,
                                   data.PAD_ID)
          attention_S = _summary_attention(stats_S)
          layer_S = attn_stats.per_layer(stats_S)
          writers.write_scalars(step, {f'test/{k}': v
                                       for k, v in test_S.items()})
          writers.write_scalars(step, writers_lib.flatten_layers(layer_S))
          writers.write_scalars(step, writers_lib.flatten_layers(
              {k: v for k, v in stats_S.items() if v.ndim == 3
               and k in attn_stats.PER_LAYER_METRICS}), aggregate=False)
          _write_heatmaps(writers, step, maps_SNHTT, heatmap_pieces)
          history.append({
              'step': step, 'train_loss': train_S['loss'],
              **{f'test_{k}': v for k, v in test_S.items()},
              'attention': {k: layer_S[k]
                            for k in attn_stats.PER_LAYER_METRICS}})
          summary = write_summary(step, attention_S)
          if last:
            np.savez(os.path.join(workdir, 'attention_maps.npz'),
                     probs=maps_SNHTT, pieces=np.array(heatmap_pieces),
                     label=dataset.test.labels[config.heatmap_example],
                     step=step)
        if last or step % config.ckpt_every_steps == 0:
          ckpt.save(step, state, {
              'seeds': seeds, 'sharing': spec,
              'history': results.jsonable(history), 'diverged': diverged,
              'wall_time_s': wall_before + time.time() - start_time,
              'config_hash': results.config_hash(cfg)})
  finally:
    ckpt.close()
    writers.close()
  if summary is None:  # Resumed after the last step: nothing left to do.
    with open(os.path.join(workdir, 'summary.json')) as f:
      summary = json.load(f)
  return summary


def _threshold_descriptions() -> dict[str, str]:
  return {name: f'weight < {value:g}' + ('/n' if kind == 'relative' else '')
          for name, kind, value in attn_stats.SPARSITY_THRESHOLDS}


def flag_nonfinite(loss_S, step, diverged, seeds, halt: bool) -> None:
  for i in np.flatnonzero(~np.isfinite(loss_S)):
    if int(i) not in diverged:
      diverged[int(i)] = step
      logging.warning('Replica %d (seed %d) has a non-finite loss by step %d;'
                      ' it is flagged in summary.json and the others go on.',
                      i, seeds[i], step)
      if halt:
        raise FloatingPointError(
            f'seed {seeds[i]}: non-finite loss by step {step} '
            '(config.halt_on_nonfinite=True).')


def _write_heatmaps(writers, step, maps_SNHTT, pieces) -> None:
  images = [figures.attention_heatmap_image(m, pieces, f'seed {i}')
            for i, m in enumerate(maps_SNHTT)]
  writers.write_images(step, images, 'attention/heatmap')
