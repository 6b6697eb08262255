"""train_and_evaluate: the loop that wires data, steps, writers and checkpoints.

Everything that can be checked without data or compilation (config fields,
sharing spec, workdir identity) is checked first. Train metrics stay on the
device between logging steps; evaluation, attention statistics and the
summary are written at every evaluation, and a checkpoint (with the
evaluation history in its meta) at every checkpoint step and at the end, so a
rerun of the same command resumes and a crash loses nothing finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import re
import shutil
import time
from typing import Any, Callable, Mapping

from absl import logging
from clu import metric_writers
import jax
import numpy as np

from jax_attnshare import attn_stats
from jax_attnshare import checkpoint
from jax_attnshare import cost
from jax_attnshare import data
from jax_attnshare import distributed
from jax_attnshare import model as model_lib
from jax_attnshare import workdir as workdir_lib
from jax_attnshare import steps as steps_lib
from jax_attnshare import writers as writers_lib

SEED_MODES = ('shared', 'per_seed')
# Where a run's wall time goes; summary.json records each.
PHASES = ('train', 'eval', 'attention_stats', 'checkpoints', 'writers')
VERSIONED = ('jax', 'flax', 'optax', 'orbax-checkpoint', 'clu')


def validate(config: Any) -> None:
  """Checks the loop fields; raises ValueError naming the field."""
  positive = ('num_seeds', 'batch_size', 'num_train_steps', 'log_every_steps',
              'eval_every_steps', 'ckpt_every_steps', 'max_to_keep',
              'eval_batch_size', 'stats_examples', 'stats_batch_size')
  for name in positive:
    if config[name] < 1:
      raise ValueError(f'config.{name} must be >= 1, got {config[name]}.')
  if config.heatmap_example < 0:
    raise ValueError(f'config.heatmap_example must be >= 0, got '
                     f'{config.heatmap_example}.')
  if config.stats_examples % config.stats_batch_size:
    raise ValueError(
        f'config.stats_examples={config.stats_examples} must be a multiple '
        f'of config.stats_batch_size={config.stats_batch_size}.')
  if config.data.seed_mode not in SEED_MODES:
    raise ValueError(f'config.data.seed_mode must be one of {SEED_MODES}, '
                     f'got {config.data.seed_mode!r}.')
  _check_split_sizes(config, config.data.train_examples,
                     config.data.test_examples)


def _check_split_sizes(config: Any, train_size: int, test_size: int) -> None:
  """The fields bounded by the split sizes (0: not known yet, unchecked)."""
  if train_size and config.batch_size > train_size:
    raise ValueError(f'config.batch_size={config.batch_size} exceeds the '
                     f'{train_size} training examples.')
  if test_size and config.stats_examples > test_size:
    raise ValueError(f'config.stats_examples={config.stats_examples} exceeds '
                     f'the {test_size} test examples.')
  if test_size and config.heatmap_example >= test_size:
    raise ValueError(f'config.heatmap_example={config.heatmap_example} must '
                     f'be below the {test_size} test examples.')


def check_config(config: Any) -> model_lib.ModelConfig:
  """Every check that needs neither data nor compilation; raises ValueError.

  main runs it before anything is read or written; tests run it on every
  config file. Returns the validated model config.
  """
  validate(config)
  data.check_fields(config.data)
  mcfg = model_lib.model_config(config, config.data.vocab_size, data.PAD_ID)
  steps_lib.make_optimizer(config.opt, config.num_train_steps)
  steps_lib.check_seed_chunk(config.seed_chunk)
  steps_lib.check_steps_per_call(config.steps_per_call)
  return mcfg


def _check_workdir_path(workdir: str) -> None:
  """Raises if workdir cannot be a writable folder, before any work."""
  if re.match(r'[A-Za-z][A-Za-z0-9+.-]*://', workdir):
    # os would take it for a relative path and create ./gs:/bucket/run.
    raise ValueError(
        f'--workdir={workdir} is a URL; the workdir must be a path on a file '
        'system (its lock and atomic renames need one): mount the bucket or '
        'share and pass the mounted path, e.g. --workdir=/mnt/runs/kv '
        '(docs/scaling.md, "Cloud storage", says which mounts are safe).')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'--workdir={workdir} is a file, not a folder.')
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(os.path.abspath(existing))
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f'--workdir={workdir}: {existing} is not writable.')


def _versions() -> dict[str, str]:
  return {name: importlib.metadata.version(name) for name in VERSIONED}


def _summary_attention(stats_S: dict[str, np.ndarray]) -> dict:
  """Per-seed attention entries: per-layer metrics, per-head and matrices.

  A metric that per_layer() averages over heads also goes in per head, as
  `<name>_per_head`; the layer x layer matrices go in as they are.
  """
  out = attn_stats.per_layer(stats_S)
  for name, value in stats_S.items():
    if name in attn_stats.HEAD_METRICS:
      out[f'{name}_per_head'] = value
    elif name in attn_stats.LAYER_MATRICES:
      out[name] = value
  return out


def _review_maps(steps, params, tokens_T: np.ndarray,
                 pad_id: int) -> np.ndarray:
  """probs_SNHTT of one review, cropped to its valid tokens."""
  n = max(int((tokens_T != pad_id).sum()), 1)
  probs_SNBHTT = steps.real(distributed.fetch(
      steps.maps(params, steps.put_shared(tokens_T[None]))))
  return np.asarray(probs_SNBHTT)[:, :, 0, :, :n, :n]


class ConfigError(ValueError):
  """Bad input found before compilation: main prints it as one line."""


def _prepare(config: Any, workdir: str, read_texts: Callable | None):
  """The checks, then the data: returns (model config, dataset texts).

  Writes nothing, so a run that fails here leaves the workdir as it was.
  """
  try:
    mcfg = check_config(config)
    _check_workdir_path(workdir)
    workdir_lib.check_workdir(workdir, workdir_lib.config_dict(config))
    kwargs = {'read_texts': read_texts} if read_texts else {}
    texts = data.read_dataset(
        config.data, tokenizer_texts=config.data.tokenizer_train_examples,
        **kwargs)
    _check_split_sizes(config, len(texts.train), len(texts.test))
  except ValueError as e:
    raise ConfigError(str(e)) from e
  return mcfg, texts


def train_and_evaluate(config: Any, workdir: str, config_name: str = '',
                       read_texts: Callable | None = None) -> dict:
  """Trains config.num_seeds replicas in one vmapped step; returns summary.

  Raises ConfigError for bad input, or a workdir that another run holds,
  before anything is compiled or written, and data.DataMissingError when the
  dataset cannot be had.
  """
  start_time = time.time()
  mcfg, texts = _prepare(config, workdir, read_texts)
  os.makedirs(workdir, exist_ok=True)
  try:
    # The lock names one pid on one host: process 0 holds it for them all.
    with distributed.held_by_primary(
        'locking the workdir', lambda: workdir_lib.lock(workdir)):
      try:
        distributed.check_shared_file(
            os.path.join(workdir, workdir_lib.LOCK_FILE))
      except ValueError as e:
        raise ConfigError(str(e)) from e
      return _train(config, workdir, config_name, mcfg, texts, start_time)
  except workdir_lib.WorkdirInUseError as e:
    raise ConfigError(str(e)) from e


@dataclasses.dataclass
class _Run:
  """What a run fixes before its first step: data, steps and where it writes."""
  config: Any
  cfg: dict  # config as JSON, what config.json and summary.json hold
  workdir: str
  config_name: str
  spec: str
  seeds: list[int]
  steps: steps_lib.SeedSteps
  dataset: data.TextDataset
  batches: data.TrainBatches
  params_count: dict
  cost_summary: dict
  start_time: float


@dataclasses.dataclass
class _Progress:
  """What a run has done: restored from a checkpoint, or a fresh start."""
  state: steps_lib.TrainState
  history: list[dict]
  diverged: dict[int, int]
  wall_before: float
  phase_s: dict[str, float]
  step: int
  # The step this process started from, and how long its first calls took.
  start_step: int = 0
  first_calls_s: list[float] = dataclasses.field(default_factory=list)
  summary: dict | None = None

  @contextlib.contextmanager
  def timed(self, phase: str):
    start = time.time()
    yield
    self.phase_s[phase] += time.time() - start


def _train(config: Any, workdir: str, config_name: str,
           mcfg: model_lib.ModelConfig, texts: data.DatasetTexts,
           start_time: float) -> dict:
  """train_and_evaluate's work, in a workdir that this process holds.

  The story of a run: set it up, restore or initialise the replicas, then
  logging windows of training steps, each possibly followed by an
  evaluation and a checkpoint, until the last step.
  """
  run = _set_up(config, workdir, config_name, mcfg, texts, start_time)
  ckpt = checkpoint.Checkpointer(workdir, config.max_to_keep)
  try:
    progress = _restore_or_init(run, ckpt)
    writers = _open_writers(run, progress.step)
    try:
      with metric_writers.ensure_flushes(*writers.all):
        _train_loop(run, progress, ckpt, writers)
    finally:
      writers.close()
  finally:
    ckpt.close()
  summary = progress.summary
  if summary is None:  # Resumed after the last step: nothing left to do.
    summary = workdir_lib.read_summary(workdir)
  logging.info('%s', closing_line(summary, workdir))
  return summary


def _set_up(config: Any, workdir: str, config_name: str,
            mcfg: model_lib.ModelConfig, texts: data.DatasetTexts,
            start_time: float) -> _Run:
  """Checks the held workdir, writes config.json, tokenizes, builds steps."""
  cfg = workdir_lib.config_dict(config)
  # Again, now that the workdir is ours: a run that held it meanwhile may
  # have trained there.
  try:
    replaced = workdir_lib.check_workdir(workdir, cfg)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if replaced and distributed.is_primary():
    logging.warning('Replacing the config.json of %s, since nothing was '
                    'trained with it: %s', workdir, '; '.join(replaced))
    # Its tokenizer was trained for the replaced config.
    shutil.rmtree(os.path.join(workdir, 'tokenizer'), ignore_errors=True)
  spec = mcfg.sharing.to_string()
  seeds = [config.seed + i for i in range(config.num_seeds)]
  optimizer = steps_lib.make_optimizer(config.opt, config.num_train_steps)
  per_seed = config.data.seed_mode == 'per_seed'
  steps = steps_lib.SeedSteps(model_lib.make_model(mcfg), optimizer,
                              config.data.max_length, config.num_seeds,
                              per_seed, config.seed_chunk,
                              config.steps_per_call)
  layout = steps.layout.describe()
  logging.info('Seeds over devices: %d seeds on %d devices, %d per device, '
               'padded with %d repeated replicas whose results are dropped.',
               config.num_seeds, layout['devices'],
               layout['seeds_per_device'], layout['padding'])
  if distributed.is_primary():
    workdir_lib.write_config(workdir, cfg, {
        'config_name': config_name, 'seeds': seeds, 'sharing': spec,
        'versions': _versions(), 'devices': [str(d) for d in jax.devices()],
        'seed_layout': layout})
  try:
    # Process 0 trains the tokenizer into the workdir; the others load it.
    dataset = distributed.primary_first(
        'training the tokenizer',
        lambda: data.tokenize_dataset(texts, config.data, workdir))
    distributed.check_same(
        [dataset.train.tokens, dataset.train.labels, dataset.test.tokens,
         dataset.test.labels],
        'the tokenized data differs between hosts: each must read the same '
        'dataset (same tensorflow-datasets version and files)')
  except ValueError as e:  # A vocab_size that does not suit the texts.
    raise ConfigError(str(e)) from e
  batches = data.TrainBatches(dataset.train, config.batch_size,
                              config.data.data_seed,
                              seeds if per_seed else None)
  return _Run(config=config, cfg=cfg, workdir=workdir,
              config_name=config_name, spec=spec, seeds=seeds, steps=steps,
              dataset=dataset, batches=batches,
              params_count=cost.param_counts(mcfg),
              cost_summary=cost.summary(mcfg), start_time=start_time)


def _restore_or_init(run: _Run, ckpt: checkpoint.Checkpointer) -> _Progress:
  """The latest checkpoint that restores, or freshly initialised replicas."""
  keys = steps_lib.seed_keys(run.seeds)
  phase_s = dict.fromkeys(PHASES, 0.0)
  if ckpt.latest_step() is None:
    state = run.steps.init(keys)
    history, diverged, wall_before = [], {}, 0.0
  else:
    try:
      state, meta = ckpt.restore(run.steps.restore_target(keys))
    except checkpoint.CheckpointError as e:
      raise ConfigError(str(e)) from e
    history = meta['history']
    diverged = {int(k): v for k, v in meta['diverged'].items()}
    wall_before = meta['wall_time_s']
    state = run.steps.pad_state(state)
    phase_s.update(meta.get('phase_s', {}))
  # The restored state's own step: the latest checkpoint may not restore.
  step = int(distributed.fetch(state.step)[0])
  if step:
    logging.info('Resumed %s from step %d.', run.workdir, step)
  return _Progress(state=state, history=history, diverged=diverged,
                   wall_before=wall_before, phase_s=phase_s, step=step,
                   start_step=step)


def _open_writers(run: _Run, first_step: int) -> writers_lib.SeedWriters:
  writers = writers_lib.SeedWriters(run.workdir, run.seeds, first_step,
                                    write=distributed.is_primary())
  if first_step == 0:
    writers.write_hparams({'sharing': run.spec,
                           'num_seeds': run.config.num_seeds,
                           **{f'params/{k}': v
                              for k, v in run.params_count.items()}})
  logging.info('Sharing %s; parameters %s; seeds %s.', run.spec,
               run.params_count, run.seeds)
  return writers


def _train_loop(run: _Run, progress: _Progress,
                ckpt: checkpoint.Checkpointer,
                writers: writers_lib.SeedWriters) -> None:
  """Logging windows until the last step, evaluating and saving between."""
  config = run.config
  evals_left = len(evaluation_steps(config, progress.step))
  # Both splits go to the devices once; batches are gathered there.
  train_split = run.steps.put_split(run.dataset.train)
  test_split = run.steps.put_eval_split(run.dataset.test,
                                        config.eval_batch_size)
  while progress.step < config.num_train_steps:
    train_S = _train_window(run, progress, train_split, writers, evals_left)
    step = progress.step
    last = step == config.num_train_steps
    if evaluates_at(config, step):
      evals_left -= 1
      progress.summary = _evaluate(run, progress, test_split, writers,
                                   train_S, last)
    if last or step % config.ckpt_every_steps == 0:
      with progress.timed('checkpoints'):
        _save(run, progress, ckpt)


def _train_window(run: _Run, progress: _Progress, train_split: dict,
                  writers: writers_lib.SeedWriters,
                  evals_left: int) -> dict[str, np.ndarray]:
  """Trains to the end of one logging window and logs it; returns its means.

  Every evaluation and checkpoint step also ends a logging window
  (window_end), so a resumed run logs the same windows as an uninterrupted
  one.
  """
  config, steps = run.config, run.steps
  first_step, end = progress.step, window_end(config, progress.step)
  window, window_start = steps.zero_window(), time.time()
  step = first_step
  while step < end:
    call_start = time.time()
    # The first two calls of a process are one step each (_FIRST_CALLS), so
    # that the log says at once what compiling and one step cost.
    first_calls = step - progress.start_step < _FIRST_CALLS
    call_end = (step + 1 if first_calls
                else min(step + config.steps_per_call, end))
    # Only the rows leave the host: no sync until the window ends.
    rows = steps.put_rows(np.stack([run.batches.rows(s)
                                    for s in range(step, call_end)]))
    with jax.profiler.StepTraceAnnotation('train', step_num=step + 1):
      progress.state, window = steps.train_steps(
          progress.state, window, train_split, rows, call_end - step)
    if first_calls:
      jax.block_until_ready(window)
      progress.first_calls_s.append(time.time() - call_start)
      _log_first_calls(config, progress)
    step = call_end
  progress.step = end
  window_steps = end - first_step
  train_S = {k: v / window_steps
             for k, v in steps.real(distributed.fetch(window)).items()}
  seconds = time.time() - window_start
  progress.phase_s['train'] += seconds
  flag_nonfinite(train_S['loss'], end, progress.diverged, run.seeds,
                 config.halt_on_nonfinite)
  # A diverged replica's metrics are missing from then on, so every
  # aggregate over seeds covers the live replicas only.
  train_S = mask_diverged(train_S, progress.diverged)
  live = config.num_seeds - len(progress.diverged)
  examples_per_s = (window_steps * config.batch_size * config.num_seeds
                    / seconds)
  with progress.timed('writers'):
    writers.write_scalars(end, {f'train/{k}': v for k, v in train_S.items()})
    writers.agg.write_scalars(end, {'train/examples_per_sec': examples_per_s,
                                    'train/live_replicas': live})
  evals_done = len(progress.history)
  eval_s = ((progress.phase_s['eval'] + progress.phase_s['attention_stats'])
            / evals_done if evals_done else 0.0)
  logging.info(
      'step %d/%d: train loss %.4f (mean over %d of %d seeds), %.2f steps/s '
      '(%.0f examples/s); ETA %s', end, config.num_train_steps,
      float(np.nanmean(train_S['loss'])) if live else float('nan'), live,
      config.num_seeds, window_steps / seconds, examples_per_s,
      format_seconds((config.num_train_steps - end) * seconds / window_steps
                     + evals_left * eval_s))
  return train_S


# One-step calls a process starts with: the first compiles the step, the
# second times it alone.
_FIRST_CALLS = 2


def _log_first_calls(config: Any, progress: _Progress) -> None:
  """Says what compiling the step and one step took, and what to expect."""
  first_s = progress.first_calls_s
  step = progress.start_step + len(first_s)
  if len(first_s) == 1:
    logging.info('Step %d took %s, compilation included; progress is logged '
                 'every %d steps.', step, format_seconds(first_s[0]),
                 config.log_every_steps)
    return
  step_s = first_s[1]
  logging.info(
      'Compiled in %s; one step %.3gs. A logging window of %d steps should '
      'take about %s on this device (the first call of %d steps compiles '
      'once more).', format_seconds(max(first_s[0] - step_s, 0.0)), step_s,
      config.log_every_steps,
      format_seconds(step_s * config.log_every_steps),
      config.steps_per_call)


def _evaluate(run: _Run, progress: _Progress, test_split: dict,
              writers: writers_lib.SeedWriters, train_S: dict[str, np.ndarray],
              last: bool) -> dict:
  """Test metrics and attention statistics, written out; returns the summary.

  The last evaluation also writes the attention maps, before the summary
  that says the run is finished.
  """
  config, steps, step = run.config, run.steps, progress.step
  params = progress.state.params
  test, review = run.dataset.test, config.heatmap_example
  with progress.timed('eval'):
    test_S = steps_lib.evaluate(steps, params, test_split)
  with progress.timed('attention_stats'):
    stats_S = steps_lib.attention_statistics(
        steps, params, test.tokens[:config.stats_examples],
        config.stats_batch_size)
    maps_SNHTT = _review_maps(steps, params, test.tokens[review],
                              data.PAD_ID)
  test_S = mask_diverged(test_S, progress.diverged)
  stats_S = mask_diverged(stats_S, progress.diverged)
  layer_S = attn_stats.per_layer(stats_S)
  progress.history.append({
      'step': step, 'train_loss': train_S['loss'],
      **{f'test_{k}': v for k, v in test_S.items()},
      'attention': {k: layer_S[k] for k in attn_stats.PER_LAYER_METRICS}})
  pieces = data.pieces(run.dataset.tokenizer, test.tokens[review])
  label = test.labels[review]
  with progress.timed('writers'):
    writers.write_scalars(step, {f'test/{k}': v for k, v in test_S.items()})
    writers.write_scalars(step, writers_lib.flatten_layers(layer_S))
    writers.write_scalars(step, writers_lib.flatten_layers(
        {k: v for k, v in stats_S.items() if k in attn_stats.HEAD_METRICS}),
                          aggregate=False)
    if distributed.is_primary():  # Only its writers write.
      _write_heatmaps(writers, step, maps_SNHTT, pieces, run.seeds, label,
                      config)
    if last and distributed.is_primary():
      workdir_lib.write_attention_maps(run.workdir, maps_SNHTT, pieces,
                                       label, step)
  return _write_summary(run, progress, _summary_attention(stats_S))


def _write_summary(run: _Run, progress: _Progress,
                   final_attention: dict) -> dict:
  value = workdir_lib.jsonable(workdir_lib.summary(
      config=run.cfg, config_name=run.config_name, sharing=run.spec,
      seeds=run.seeds, params=run.params_count, cost=run.cost_summary,
      completed_steps=progress.step,
      wall_time_s=progress.wall_before + time.time() - run.start_time,
      history=progress.history, diverged=progress.diverged,
      final_attention=final_attention,
      sparsity_thresholds=_threshold_descriptions(),
      phase_s=progress.phase_s))
  if distributed.is_primary():
    workdir_lib.write_summary(run.workdir, value)
  return value


def _save(run: _Run, progress: _Progress,
          ckpt: checkpoint.Checkpointer) -> None:
  """A checkpoint of the real replicas, with the history to resume from."""
  ckpt.save(progress.step, run.steps.real_state(progress.state), {
      'seeds': run.seeds, 'sharing': run.spec,
      'history': workdir_lib.jsonable(progress.history),
      'diverged': progress.diverged,
      'wall_time_s': progress.wall_before + time.time() - run.start_time,
      'phase_s': progress.phase_s,
      'config_hash': workdir_lib.config_hash(run.cfg)})


def format_seconds(seconds: float) -> str:
  """'1h02m', '4m05s', '12s'."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


def evaluates_at(config: Any, step: int) -> bool:
  """Whether the run evaluates at `step`: every eval_every_steps, and last."""
  return step % config.eval_every_steps == 0 or step == config.num_train_steps


def window_end(config: Any, step: int) -> int:
  """Where the logging window after `step` ends.

  The first logging, evaluation or checkpoint step after it, or the last.
  """
  return min([(step // every + 1) * every
              for every in (config.log_every_steps, config.eval_every_steps,
                            config.ckpt_every_steps)]
             + [config.num_train_steps])


def evaluation_steps(config: Any, after: int = 0) -> list[int]:
  """The steps after `after` at which the run evaluates."""
  return [s for s in range(after + 1, config.num_train_steps + 1)
          if evaluates_at(config, s)]


def closing_line(summary: dict, workdir: str) -> str:
  """The last line of a run: its test metrics, wall time and outputs."""
  kept = [e for e in summary['per_seed'] if not e['diverged']]
  metrics = sorted(k for k in summary['per_seed'][0] if k.startswith('test_'))
  parts = []
  for name in metrics:
    values = np.array([e[name] for e in kept if e[name] is not None], float)
    if values.size:
      sd = values.std(ddof=1) if values.size > 1 else 0.0
      parts.append(f'{name.removeprefix("test_").replace("_", " ")} '
                   f'{values.mean():.4f} ± {sd:.4f}')
  diverged = len(summary['per_seed']) - len(kept)
  seeds = f'{len(kept)} seeds' + (f' ({diverged} diverged, left out)'
                                  if diverged else '')
  state = ('Finished' if summary['finished'] else
           f'Stopped at step {summary["completed_steps"]} of')
  summary_path = os.path.join(workdir, workdir_lib.SUMMARY_FILE)
  return (f'{state} {summary["num_train_steps"]} steps in '
          f'{format_seconds(summary["wall_time_s"])}: test '
          f'{", ".join(parts) or "metrics unavailable"} (mean ± sd over '
          f'{seeds}). Summary: {summary_path}; '
          f'TensorBoard: tensorboard --logdir {os.path.join(workdir, "tb")}')


def _threshold_descriptions() -> dict[str, str]:
  return {name: f'weight < {value:g}' + ('/n' if kind == 'relative' else '')
          for name, kind, value in attn_stats.SPARSITY_THRESHOLDS}


def mask_diverged(values_S: Mapping[str, np.ndarray],
                  diverged: Mapping[int, int]) -> dict[str, np.ndarray]:
  """Metrics [S, ...] with the diverged replicas' entries NaN (missing)."""
  out = {}
  for name, value in values_S.items():
    value = np.array(value, dtype=np.result_type(value, np.float32))
    value[list(diverged)] = np.nan
    out[name] = value
  return out


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


def _write_heatmaps(writers, step, maps_SNHTT, pieces, seeds, label: int,
                    config: Any) -> None:
  """One layers x heads image per replica, titled with its seed and review."""
  # Imported here, not at the top: matplotlib costs every importer of
  # jax_attnshare.main its import time, and only this function draws.
  from jax_attnshare import plotting  # pylint: disable=g-import-not-at-top
  review = plotting.review_title(label, config.get('task', 'classify'),
                                 config.data.dataset)
  images = [plotting.attention_heatmap_image(m, pieces, f'seed {s}: {review}')
            for s, m in zip(seeds, maps_SNHTT)]
  writers.write_images(step, images, writers_lib.HEATMAP_TAG)
