"""Training after post-hoc sharing: PostShare, SA fine-tuning and LISA.

Each method is a loss of (params, batch) and a set of trainable leaves; one
jitted Adam step (gradients clipped at global norm 1) does the rest. The
teacher is the unshared model, applied inside the step with its parameters
held fixed.

The task term depends on the model: the classifier's cross-entropy on the
labels, the LM's next-token loss, and for a sentence encoder (num_classes=0,
no labels and no pretraining head) a Huber distillation of the teacher's
pooled vectors, which is what "keep doing the model's job" can mean without
its training data.

Suffixes: N layers, B batch, H heads, T tokens.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_attnshare import model as model_lib
from jax_attnshare.posthoc import methods
from jax_attnshare import steps as steps_lib


def apply(cfg: model_lib.ModelConfig, params: Any, tokens_BT,
          with_maps: bool = False):
  """(output, probs_NBHTT or None) of the model that `cfg` describes."""
  model = model_lib.make_model(cfg)
  if not with_maps:
    return model.apply({'params': params}, tokens_BT), None
  out, variables = model.apply({'params': params}, tokens_BT,
                               mutable=[model_lib.ATTENTION_COLLECTION])
  return out, model_lib.attention_probs(
      variables[model_lib.ATTENTION_COLLECTION])


def has_labels(cfg: model_lib.ModelConfig) -> bool:
  return cfg.causal or cfg.num_classes > 0


def task_or_distill(cfg: model_lib.ModelConfig, out, teacher_out,
                    batch: dict) -> jax.Array:
  """Task loss where the model has one, else Huber to the teacher's output."""
  if not has_labels(cfg):
    return optax.huber_loss(out, teacher_out).mean()
  loss_X, _, w_X = steps_lib.objective(cfg)(out, batch)
  return (loss_X * w_X).sum() / jnp.maximum(w_X.sum(), 1.)


def map_kl(teacher_NBHTT, student_NBHTT, valid_BT) -> jax.Array:
  """KL(teacher || student) per valid query row, mean over rows and maps."""
  p, q = teacher_NBHTT, student_NBHTT
  kl_NBHT = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.))
                                          - jnp.log(jnp.maximum(q, 1e-30))),
                              0.), axis=-1)
  w_11B1T = valid_BT[None, :, None, :].astype(kl_NBHT.dtype)
  count = w_11B1T.sum() * p.shape[0] * p.shape[2]
  return (kl_NBHT * w_11B1T).sum() / jnp.maximum(count, 1.)


def postshare_loss_fn(cfg: model_lib.ModelConfig, teacher_params: Any,
                      links) -> Callable:
  """0.5·task + 0.5·(mean pair distance) on the unshared tree (§3.3)."""

  def loss_fn(params, batch):
    out, _ = apply(cfg, params, batch['tokens'])
    teacher_out, _ = apply(cfg, teacher_params, batch['tokens'])
    task = task_or_distill(cfg, out, jax.lax.stop_gradient(teacher_out),
                           batch)
    distance = methods.pair_distance(params, links)
    return methods.postshare_loss(task, distance), {'task': task,
                                                    'distance': distance}
  return loss_fn


def sa_loss_fn(cfg: model_lib.ModelConfig, teacher_cfg, teacher_params
               ) -> Callable:
  """SA fine-tuning: the task (or distillation) loss, everything trains."""

  def loss_fn(params, batch):
    out, _ = apply(cfg, params, batch['tokens'])
    teacher_out, _ = apply(teacher_cfg, teacher_params, batch['tokens'])
    task = task_or_distill(cfg, out, jax.lax.stop_gradient(teacher_out),
                           batch)
    return task, {'task': task}
  return loss_fn


def lisa_loss_fn(cfg: model_lib.ModelConfig, teacher_cfg, teacher_params,
                 weights: dict[str, float]) -> Callable:
  """LISA distillation: task + Huber(outputs) + KL(maps of the SA layers).

  `weights` has 'task', 'output' and 'maps'; the task term counts only for
  models with labels (an encoder's task term is the output term).
  """
  layers = np.asarray(cfg.sharing.attention_map_layers)

  def loss_fn(params, batch):
    tokens_BT = batch['tokens']
    out, probs_NBHTT = apply(cfg, params, tokens_BT, with_maps=True)
    teacher_out, teacher_NBHTT = jax.lax.stop_gradient(
        apply(teacher_cfg, teacher_params, tokens_BT, with_maps=True))
    parts = {
        'output': optax.huber_loss(out, teacher_out).mean(),
        'maps': map_kl(teacher_NBHTT[layers], probs_NBHTT[layers],
                       tokens_BT != cfg.pad_id)}
    if has_labels(cfg):
      parts['task'] = task_or_distill(cfg, out, teacher_out, batch)
    total = sum(weights[k] * v for k, v in parts.items())
    return total, parts
  return loss_fn


def finetune(params: Any, loss_fn: Callable, tokens_NT: np.ndarray,
             labels_N: np.ndarray | None, steps: int, batch_size: int,
             learning_rate: float, seed: int,
             trainable: Any = None) -> tuple[Any, list[dict]]:
  """`steps` Adam steps on random batches; frozen leaves never move.

  Args:
    trainable: a tree of bools like `params` (None: everything trains).
  Returns:
    The trained parameters and the loss parts of every step.
  """
  if steps < 0 or not 1 <= batch_size <= len(tokens_NT):
    raise ValueError(f'finetune: steps={steps} must be >= 0 and '
                     f'batch_size={batch_size} in [1, {len(tokens_NT)}].')
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))
  if trainable is not None:
    labels = jax.tree.map(lambda t: 'train' if t else 'freeze', trainable)
    tx = optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()},
                               labels)
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params,
                                                                  batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, parts

  rng = np.random.default_rng(seed)
  history = []
  for _ in range(steps):
    rows = rng.choice(len(tokens_NT), batch_size, replace=False)
    batch = {'tokens': tokens_NT[rows]}
    if labels_N is not None:
      batch['labels'] = labels_N[rows]
    params, state, parts = step(params, state, batch)
    history.append(parts)
  return params, [jax.tree.map(float, h) for h in jax.device_get(history)]
