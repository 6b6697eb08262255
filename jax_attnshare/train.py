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
import errno
import itertools
import math
import os
import re
import shutil
import time
from typing import Any, Callable, Mapping

from absl import logging
import jax
import numpy as np

from jax_attnshare import attn_stats
from jax_attnshare import checkpoint
from jax_attnshare import compilation
from jax_attnshare import cost
from jax_attnshare import data
from jax_attnshare import data_cache
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
  # Replica i's key is jax.random.key(seed + i), a uint32.
  if not 0 <= config.seed <= 2**32 - config.num_seeds:
    raise ValueError(f'config.seed must be in [0, 2**32 - config.num_seeds], '
                     f'got {config.seed}.')
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


def _versions() -> dict[str, str | None]:
  return workdir_lib.versions(VERSIONED)


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
                 buckets: tuple[int, ...]) -> np.ndarray:
  """probs_SNHTT of one review at its bucket's length, cropped to its tokens.
  """
  n = max(int((tokens_T != data.PAD_ID).sum()), 1)
  length = buckets[data.bucket_index(tokens_T[None], buckets)[0]]
  probs_SNBHTT = steps.real(distributed.fetch(
      steps.maps(params, steps.put_shared(tokens_T[None, :length]))))
  return np.asarray(probs_SNBHTT)[:, :, 0, :, :n, :n]


class ConfigError(ValueError):
  """Bad input found before compilation: main prints it as one line."""


class Preempted(Exception):
  """SIGTERM stopped the run at a step boundary, after a checkpoint."""


class DiskFullError(Exception):
  """A write failed for want of space; the message says what to free."""


def disk_full_path(error: BaseException) -> str | None:
  """The file that `error` (or what caused it) could not write for want of
  space ('' if it names none); None if it is no full disk."""
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return os.fspath(error.filename or '')
    if 'No space left on device' in str(error):  # tensorstore, TensorFlow
      return ''
    error = error.__cause__ or error.__context__
  return None


def _size(num_bytes: float) -> str:
  for unit in ('bytes', 'kB', 'MB', 'GB'):
    if num_bytes < 1000 or unit == 'GB':
      return (f'{num_bytes:.0f} {unit}' if unit == 'bytes'
              else f'{num_bytes:.1f} {unit}')
    num_bytes /= 1000
  raise AssertionError('unreachable')


def _disk_full_message(path: str, workdir: str, state_bytes: int) -> str:
  """What DiskFullError says: where, what is free, what to free."""
  path = path or workdir
  folder = path
  while not os.path.isdir(folder):
    folder = os.path.dirname(os.path.abspath(folder))
  free = shutil.disk_usage(folder).free
  needed = max(workdir_lib.checkpoint_size(workdir) or 0, state_bytes)
  return (f'no space left on the device of {path} ({_size(free)} free): '
          f'free at least {_size(needed)} (one checkpoint) and rerun the '
          'same command to resume from the last checkpoint.')


def _state_bytes(config: Any, mcfg: model_lib.ModelConfig) -> int:
  """Bytes of the state a checkpoint holds, padded as the devices hold it."""
  seeds = steps_lib.seed_layout(config.num_seeds).padded_seeds
  init = steps_lib.seed_init(
      model_lib.make_model(mcfg),
      steps_lib.make_optimizer(config.opt, config.num_train_steps),
      config.data.max_length)
  state = jax.eval_shape(init, steps_lib.seed_keys(range(seeds)))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def _prepare(config: Any, workdir: str, read_texts: Callable | None):
  """The checks, then the data: returns (model config, prepared entry).

  Writes nothing in the workdir, so a run that fails here leaves it as it
  was. The data is read from its prepared entry, which is made first if
  there is none (data_cache).
  """
  try:
    mcfg = check_config(config)
    _check_workdir_path(workdir)
    workdir_lib.check_workdir(workdir, workdir_lib.config_dict(config))
    # Process 0 prepares the entry if need be; the others then read it, or
    # prepare their own where they do not share its cache folder.
    entry = distributed.primary_first(
        'preparing the data',
        lambda: data_cache.load_or_prepare(config.data, read_texts))
    _check_split_sizes(config, len(entry.dataset.train),
                       len(entry.dataset.test))
  except ValueError as e:
    raise ConfigError(str(e)) from e
  return mcfg, entry


def train_and_evaluate(config: Any, workdir: str, config_name: str = '',
                       read_texts: Callable | None = None,
                       force_unlock: bool = False) -> dict:
  """Trains config.num_seeds replicas in one vmapped step; returns summary.

  Raises ConfigError for bad input, or a workdir that another run holds,
  before anything is compiled or written, and data.DataMissingError when the
  dataset cannot be had. On SIGTERM it saves a checkpoint at the next step
  boundary and raises Preempted; on a full disk it raises DiskFullError.
  `force_unlock`: take over a lock that a killed run left, whatever it says
  (workdir.lock). read_texts: data.read_tfds_texts's stand-in, for tests
  (see data_cache.load_or_prepare).
  """
  start_time = time.time()
  mcfg, entry = _prepare(config, workdir, read_texts)
  compilation.use_cache(config)
  os.makedirs(workdir, exist_ok=True)
  config_hash = workdir_lib.config_hash(workdir_lib.config_dict(config))
  try:
    # The lock names one pid on one host: process 0 holds it for them all.
    with distributed.held_by_primary(
        'locking the workdir',
        lambda: workdir_lib.lock(workdir, config_hash, force_unlock)):
      try:
        distributed.check_shared_file(
            os.path.join(workdir, workdir_lib.LOCK_FILE))
      except ValueError as e:
        raise ConfigError(str(e)) from e
      # From here a SIGTERM stops the run at the next step boundary.
      with distributed.stop_requests() as stop_requested:
        return _train(config, workdir, config_name, mcfg, entry, start_time,
                      stop_requested)
  except workdir_lib.WorkdirInUseError as e:
    raise ConfigError(str(e)) from e
  except Exception as e:  # pylint: disable=broad-exception-caught
    path = disk_full_path(e)
    if path is None:
      raise
    raise DiskFullError(_disk_full_message(
        path, workdir, _state_bytes(config, mcfg))) from e


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
  # Replica index -> the first step whose window flagged its train loss.
  exploded: dict[int, int] = dataclasses.field(default_factory=dict)
  # The mean train loss [S] of the last whole logging window.
  window_loss: np.ndarray | None = None
  # A logging window that a checkpoint cut (SIGTERM): its first step and
  # per-seed metric sums [S] so far.
  partial_window: dict | None = None
  # The step this process started from, and how long its first calls took.
  start_step: int = 0
  first_calls_s: list[float] = dataclasses.field(default_factory=list)
  # The latest evaluation's summary (finished: False until the end).
  summary: dict | None = None
  # Real tokens and positions (padding included) per example, summed over
  # the steps done: the training batches' padding share.
  positions: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(2))
  saved_step: int = -1
  # Set at a step boundary at which SIGTERM stops the run.
  stopping: bool = False

  @contextlib.contextmanager
  def timed(self, phase: str):
    start = time.time()
    yield
    self.phase_s[phase] += time.time() - start


def _train(config: Any, workdir: str, config_name: str,
           mcfg: model_lib.ModelConfig, entry: data_cache.Entry,
           start_time: float, stop_requested: Callable[[int], bool]) -> dict:
  """train_and_evaluate's work, in a workdir that this process holds.

  The story of a run: set it up, restore or initialise the replicas, then
  logging windows of training steps, each possibly followed by an
  evaluation and a checkpoint, until the last step.
  """
  run = _set_up(config, workdir, config_name, mcfg, entry, start_time)
  ckpt = checkpoint.Checkpointer(workdir, config.max_to_keep)
  try:
    progress = _restore_or_init(run, ckpt)
    writers = _open_writers(run, progress.step)
    try:
      _train_loop(run, progress, ckpt, writers, stop_requested)
    finally:
      writers.close()  # Which flushes them.
  finally:
    ckpt.close()
  summary = _finish(run, progress)
  logging.info('%s', closing_line(summary, workdir))
  return summary


def _finish(run: _Run, progress: _Progress) -> dict:
  """The summary that says finished, written last.

  After the final checkpoint has committed and the writers have flushed, so
  a run killed before this is no finished run, and its rerun finishes it.
  """
  summary = progress.summary
  if summary is None:  # Restored at the end, from a checkpoint without it.
    summary = workdir_lib.read_summary(run.workdir)
  summary = {**summary, 'finished': True}
  if distributed.is_primary():
    workdir_lib.write_summary(run.workdir, summary)
  return summary


def _set_up(config: Any, workdir: str, config_name: str,
            mcfg: model_lib.ModelConfig, entry: data_cache.Entry,
            start_time: float) -> _Run:
  """Checks the workdir, writes config.json and tokenizer/, builds the steps."""
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
  if (replaced or not workdir_lib.read_config(workdir)) and (
      distributed.is_primary()):
    # Trained for the replaced config, or by a run killed before it wrote
    # config.json (which comes after the tokenizer): of unknown config.
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
  dataset = entry.dataset
  try:
    # The report and post-hoc studies read the tokenizer from the workdir.
    distributed.primary_only(
        'copying the tokenizer',
        lambda: data_cache.copy_tokenizer(entry, workdir,
                                          data.tokenizer_kind(config.data)))
    distributed.check_same(
        [dataset.train.tokens, dataset.train.labels, dataset.test.tokens,
         dataset.test.labels],
        'the prepared data differs between hosts: give every host the same '
        'entry (config.data.cache_dir on a folder they all mount, or a copy '
        'of process 0\'s)')
  except ValueError as e:  # A workdir trained with another tokenizer.
    raise ConfigError(str(e)) from e
  if distributed.is_primary():
    workdir_lib.write_config(workdir, cfg, {
        'config_name': config_name, 'seeds': seeds, 'sharing': spec,
        'versions': _versions(), 'devices': [str(d) for d in jax.devices()],
        'seed_layout': layout,
        'prepared_data': {'entry': entry.path,
                          'source': entry.meta['source']}})
  batches = data.TrainBatches(dataset.train, config.batch_size,
                              config.data.data_seed,
                              seeds if per_seed else None,
                              data.bucket_lengths(config.data),
                              data.bucket_run_steps(config.data))
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
    return _Progress(state=run.steps.init(keys), history=[], diverged={},
                     wall_before=0.0, phase_s=phase_s, step=0)
  try:
    state, meta = ckpt.restore(run.steps.restore_target(keys),
                               run.config.num_seeds)
  except checkpoint.CheckpointError as e:
    raise ConfigError(str(e)) from e
  phase_s.update(meta.get('phase_s', {}))
  # The restored state's own step, the same for every replica.
  steps_S = np.unique(distributed.fetch(state.step))
  if len(steps_S) != 1:
    raise ConfigError(f'the checkpoint of {run.workdir} holds replicas at '
                      f'different steps {steps_S.tolist()}; it was not '
                      'written by this code.')
  step = int(steps_S[0])
  window_loss = meta.get('window_loss')
  progress = _Progress(
      state=state, history=meta['history'],
      diverged={int(k): v for k, v in meta['diverged'].items()},
      wall_before=meta['wall_time_s'], phase_s=phase_s, step=step,
      start_step=step,
      exploded={int(k): v for k, v in meta.get('exploded', {}).items()},
      window_loss=(None if window_loss is None
                   else np.array(window_loss, np.float32)),
      partial_window=meta.get('window'), summary=meta.get('summary'),
      saved_step=step,
      # The batches depend only on the step: no state to restore.
      positions=np.array(run.batches.positions(0, step)) * step)
  logging.info('Resumed %s from step %d.', run.workdir, step)
  _restore_summary(run, progress.summary)
  return progress


def _restore_summary(run: _Run, summary: dict | None) -> None:
  """Writes the restored checkpoint's summary if summary.json is older.

  A run killed after a checkpoint committed and before the summary of its
  evaluation was written leaves summary.json behind it.
  """
  if summary is None or not distributed.is_primary():
    return
  try:
    written = workdir_lib.read_summary(run.workdir)['completed_steps']
  except (FileNotFoundError, ValueError):  # None yet, or unreadable.
    written = -1
  if written < summary['completed_steps']:
    workdir_lib.write_summary(run.workdir, summary)


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
                writers: writers_lib.SeedWriters,
                stop_requested: Callable[[int], bool]) -> None:
  """Logging windows until the last step, evaluating and saving between.

  A summary is written once the checkpoint of its step (if it has one) has
  committed. SIGTERM stops the loop at the next step boundary, after a
  checkpoint, with Preempted.
  """
  config = run.config
  evals_left = len(evaluation_steps(config, progress.step))
  # Both splits go to the devices once; batches are gathered there.
  train_split = run.steps.put_split(run.dataset.train)
  test_split = run.steps.put_eval_split(run.dataset.test,
                                        config.eval_batch_size,
                                        run.batches.buckets)
  calls = itertools.count()
  while progress.step < config.num_train_steps:
    train_S = _train_window(run, progress, train_split, writers, evals_left,
                            lambda: stop_requested(next(calls)))
    step = progress.step
    last = step == config.num_train_steps
    evaluated = train_S is not None and evaluates_at(config, step)
    if evaluated:
      evals_left -= 1
      progress.summary = _evaluate(run, progress, test_split, writers,
                                   train_S, last)
    if train_S is not None and (last or step % config.ckpt_every_steps == 0):
      with progress.timed('checkpoints'):
        _save(run, progress, ckpt)
        if evaluated:
          ckpt.wait_until_finished()
    if evaluated:
      _write_summary(run, progress.summary)
    if progress.stopping and not last:
      if progress.saved_step != step:
        with progress.timed('checkpoints'):
          _save(run, progress, ckpt)
      ckpt.wait_until_finished()
      raise Preempted(
          f'stopped by SIGTERM at step {step} of {config.num_train_steps}, '
          f'which is saved in {ckpt.directory}; rerun the same command to '
          'resume from it.')


def _train_window(run: _Run, progress: _Progress, train_split: dict,
                  writers: writers_lib.SeedWriters, evals_left: int,
                  stop_requested: Callable[[], bool]
                  ) -> dict[str, np.ndarray] | None:
  """Trains to the end of one logging window and logs it; returns its means.

  Every evaluation and checkpoint step also ends a logging window
  (window_end), so a resumed run logs the same windows as an uninterrupted
  one; a window that a SIGTERM cut goes on from its sums (partial_window).
  Returns None when SIGTERM stops the run inside the window.
  """
  config, steps, batches = run.config, run.steps, run.batches
  end = window_end(config, progress.step)
  if progress.partial_window:
    first_step = progress.partial_window['start']
    window = steps.put_window(progress.partial_window['sums'])
    progress.partial_window = None
  else:
    first_step, window = progress.step, steps.zero_window()
  window_start, resumed = time.time(), progress.step
  step = progress.step
  while step < end and not progress.stopping:
    call_start = time.time()
    # The first two calls of a process are one step each (_FIRST_CALLS), so
    # that the log says at once what compiling and one step cost.
    first_calls = step - progress.start_step < _FIRST_CALLS
    end_of_call = (step + 1 if first_calls
                   else call_end(config, batches, step, end))
    # Only the rows leave the host: no sync until the window ends.
    rows = steps.put_rows(np.stack([batches.rows(s)
                                    for s in range(step, end_of_call)]))
    with jax.profiler.StepTraceAnnotation('train', step_num=step + 1):
      progress.state, window = steps.train_steps(
          progress.state, window, train_split, rows, end_of_call - step,
          length=batches.length(step))
    if first_calls:
      jax.block_until_ready(window)
      progress.first_calls_s.append(time.time() - call_start)
      _log_first_calls(config, progress, len(batches.buckets))
    step = end_of_call
    progress.stopping = stop_requested()
  progress.step = step
  # The fetch waits for the steps, which were dispatched without waiting.
  sums_S = steps.real(distributed.fetch(window))
  seconds = time.time() - window_start
  progress.phase_s['train'] += seconds
  if step < end:
    progress.partial_window = {'start': first_step, 'sums': sums_S}
    return None
  window_steps = end - first_step
  real, positions = batches.positions(first_step, end)
  progress.positions += np.array([real, positions]) * window_steps
  train_S = {k: v / window_steps for k, v in sums_S.items()}
  flag_nonfinite(train_S['loss'], end, progress.diverged, run.seeds,
                 config.halt_on_nonfinite)
  flag_exploding(train_S['loss'], progress.window_loss, end,
                 progress.exploded, run.seeds, _chance_loss(run))
  progress.window_loss = train_S['loss']
  # A diverged replica's metrics are missing from then on, so every
  # aggregate over seeds covers the live replicas only.
  train_S = mask_diverged(train_S, progress.diverged)
  live = config.num_seeds - len(progress.diverged)
  ran = end - resumed  # Steps of this window that this process ran.
  examples_per_s = ran * config.batch_size * config.num_seeds / seconds
  with progress.timed('writers'):
    writers.write_scalars(end, {f'train/{k}': v for k, v in train_S.items()})
    writers.agg.write_scalars(end, {
        'train/examples_per_sec': examples_per_s,
        # Positions, padding included: what the steps compute on.
        'train/tokens_per_sec': examples_per_s * positions,
        'train/padding_share': 1 - real / positions,
        'train/live_replicas': live})
  evals_done = len(progress.history)
  eval_s = ((progress.phase_s['eval'] + progress.phase_s['attention_stats'])
            / evals_done if evals_done else 0.0)
  logging.info(
      'step %d/%d: train loss %.4f (mean over %d of %d seeds), %.2f steps/s '
      '(%.0f examples/s, %.0f tokens/s, %.1f%% padding); ETA %s', end,
      config.num_train_steps,
      float(np.nanmean(train_S['loss'])) if live else float('nan'), live,
      config.num_seeds, ran / seconds, examples_per_s,
      examples_per_s * positions, 100 * (1 - real / positions),
      format_seconds((config.num_train_steps - end) * seconds / ran
                     + evals_left * eval_s))
  return train_S


# One-step calls a process starts with: the first compiles the step, the
# second times it alone.
_FIRST_CALLS = 2


def _log_first_calls(config: Any, progress: _Progress,
                     num_buckets: int) -> None:
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
      'once more%s).', format_seconds(max(first_s[0] - step_s, 0.0)), step_s,
      config.log_every_steps,
      format_seconds(step_s * config.log_every_steps),
      config.steps_per_call,
      f', as does each of the {num_buckets} bucket lengths, whose steps cost '
      'more or less than this one' if num_buckets > 1 else '')


def _evaluate(run: _Run, progress: _Progress, test_split: dict,
              writers: writers_lib.SeedWriters, train_S: dict[str, np.ndarray],
              last: bool) -> dict:
  """Test metrics and attention statistics, written out; returns the summary.

  The last evaluation also writes the attention maps. The summary is the
  caller's to write, unfinished (see _finish).
  """
  config, steps, step = run.config, run.steps, progress.step
  params = progress.state.params
  test, review = run.dataset.test, config.heatmap_example
  with progress.timed('eval'):
    test_S = steps_lib.evaluate(steps, params, test_split)
  with progress.timed('attention_stats'):
    stats_S = steps_lib.attention_statistics(
        steps, params, test.tokens[:config.stats_examples],
        config.stats_batch_size, run.batches.buckets)
    maps_SNHTT = _review_maps(steps, params, test.tokens[review],
                              run.batches.buckets)
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
  return _summary(run, progress, _summary_attention(stats_S))


def _summary(run: _Run, progress: _Progress, final_attention: dict) -> dict:
  """summary.json's value now, saying unfinished (_finish says finished)."""
  value = workdir_lib.jsonable(workdir_lib.summary(
      config=run.cfg, config_name=run.config_name, sharing=run.spec,
      seeds=run.seeds, params=run.params_count, cost=run.cost_summary,
      completed_steps=progress.step,
      wall_time_s=progress.wall_before + time.time() - run.start_time,
      history=progress.history, diverged=progress.diverged,
      exploded=progress.exploded, final_attention=final_attention,
      sparsity_thresholds=_threshold_descriptions(),
      phase_s=progress.phase_s,
      train_batches=_train_batches(progress)))
  return {**value, 'finished': False}


def _write_summary(run: _Run, summary: dict) -> None:
  if distributed.is_primary():
    workdir_lib.write_summary(run.workdir, summary)


def _save(run: _Run, progress: _Progress,
          ckpt: checkpoint.Checkpointer) -> None:
  """A checkpoint of the state as the devices hold it, and what else a
  resumed run needs to go on as if it had not stopped: the history, the
  flags, the last evaluation's summary and a cut window's sums."""
  ckpt.save(progress.step, progress.state, workdir_lib.jsonable({
      'seeds': run.seeds, 'sharing': run.spec,
      'history': progress.history,
      'diverged': progress.diverged, 'exploded': progress.exploded,
      'window_loss': progress.window_loss,
      'window': progress.partial_window,
      'summary': progress.summary,
      'wall_time_s': progress.wall_before + time.time() - run.start_time,
      'phase_s': progress.phase_s,
      'config_hash': workdir_lib.config_hash(run.cfg)}))
  progress.saved_step = progress.step


def _train_batches(progress: _Progress) -> dict[str, float]:
  """Padding share and positions per example of the steps done so far."""
  real, positions = progress.positions / max(progress.step, 1)
  return {'padding_share': 1 - real / positions if positions else 0.0,
          'positions_per_example': positions}


def call_end(config: Any, batches: data.TrainBatches, step: int,
             end: int) -> int:
  """Where the training call from `step` ends, at `end` at the latest.

  After steps_per_call steps, or where the batches' length (bucket)
  changes: a call is one compiled program, of one length. The batches do
  not depend on where calls end, so neither do the results.
  """
  limit = min(step + config.steps_per_call, end)
  length = batches.length(step)
  return next((s for s in range(step + 1, limit)
               if batches.length(s) != length), limit)


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


# A logging window's mean train loss is flagged as exploding when it is over
# LOSS_GROWTH times the window before's, or over LOSS_BOUND times the loss
# of a uniform prediction (ln of the classes, or of the vocabulary).
LOSS_GROWTH = 100.0
LOSS_BOUND = 10.0


def _chance_loss(run: _Run) -> float:
  outputs = (run.config.data.vocab_size if run.config.get('task') == 'lm'
             else run.config.model.num_classes)
  return math.log(outputs)


def flag_exploding(loss_S: np.ndarray, before_S: np.ndarray | None,
                   step: int, exploded: dict[int, int], seeds: list[int],
                   chance_loss: float) -> None:
  """Flags (in `exploded` and the log) replicas whose train loss blew up.

  The run goes on: a flag is for the reader of the summary, not a stop.
  """
  before_S = (np.full_like(loss_S, np.nan) if before_S is None
              else np.asarray(before_S))
  for i, (loss, before) in enumerate(zip(loss_S, before_S)):
    if i in exploded or not np.isfinite(loss):
      continue
    if before > 0 and loss > LOSS_GROWTH * before:
      why = f'{loss / before:.3g} times the window before\'s {before:.3g}'
    elif loss > LOSS_BOUND * chance_loss:
      why = (f'over {LOSS_BOUND:g} times the loss of a uniform prediction '
             f'({chance_loss:.3g})')
    else:
      continue
    exploded[i] = step
    logging.warning('Replica %d (seed %d): train loss %.4g by step %d, %s; '
                    'it is flagged in summary.json (loss_exploded_at_step) '
                    'and training goes on.', i, seeds[i], loss, step, why)


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
