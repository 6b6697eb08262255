"""Training: pure one-replica steps, vmapped over seeds in one place.

`init_state`, `train_step`, `eval_step`, `stats_step` and `maps_step` see one
replica. `SeedSteps` jits their `jax.vmap` over a leading seed axis once, and
shards that axis over the devices, padded to a multiple of their count with
repeats of real replicas that every result drops (`SeedLayout`), so replica i
depends on seed i alone and equals a single-seed run. The seeds on each
device can instead be vmapped in chunks that the jitted step maps over
(`seed_chunk`): the same replicas, with one chunk's activations in memory at
a time. The splits live on the device: training gathers each step's batch
there from the rows that data.TrainBatches gives, several steps per call
(`steps_per_call`), and evaluation runs over the whole test split in one
call.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_attnshare import attn_stats
from jax_attnshare import data
from jax_attnshare import distributed
from jax_attnshare import model as model_lib

SCHEDULES = ('constant', 'cosine', 'linear')
OPTIMIZERS = ('adamw', 'adam')
# What train_step returns per replica; training sums them over each logging
# window on the device.
TRAIN_METRICS = ('loss', 'accuracy', 'grad_norm')


class TrainState(train_state.TrainState):
  rng: jax.Array  # base key of this replica's dropout stream


def make_optimizer(opt: Any,
                   num_train_steps: int) -> optax.GradientTransformation:
  """Linear warmup, then the configured decay; global-norm clipping."""
  if opt.name not in OPTIMIZERS:
    raise ValueError(f'config.opt.name must be one of {OPTIMIZERS}, got '
                     f'{opt.name!r}.')
  if opt.schedule not in SCHEDULES:
    raise ValueError(f'config.opt.schedule must be one of {SCHEDULES}, got '
                     f'{opt.schedule!r}.')
  if not 0 <= opt.warmup_steps <= num_train_steps:
    raise ValueError(f'config.opt.warmup_steps={opt.warmup_steps} must be in '
                     f'[0, config.num_train_steps={num_train_steps}].')
  _check_positive(opt, 'learning_rate')
  _check_positive(opt, 'clip_norm')
  for name in ('b1', 'b2'):
    if not 0 <= opt[name] < 1:
      raise ValueError(f'config.opt.{name} must be in [0, 1), got '
                       f'{opt[name]}.')
  if not (math.isfinite(opt.weight_decay) and opt.weight_decay >= 0):
    raise ValueError(f'config.opt.weight_decay must be a finite number >= 0, '
                     f'got {opt.weight_decay}.')
  warmup = optax.linear_schedule(0.0, opt.learning_rate, opt.warmup_steps)
  decay_steps = max(num_train_steps - opt.warmup_steps, 1)
  decay = {
      'constant': optax.constant_schedule(opt.learning_rate),
      'cosine': optax.cosine_decay_schedule(opt.learning_rate, decay_steps),
      'linear': optax.linear_schedule(opt.learning_rate, 0.0, decay_steps),
  }[opt.schedule]
  schedule = optax.join_schedules([warmup, decay], [opt.warmup_steps])
  if opt.name == 'adamw':
    update = optax.adamw(schedule, b1=opt.b1, b2=opt.b2,
                         weight_decay=opt.weight_decay)
  else:
    update = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
  return optax.chain(optax.clip_by_global_norm(opt.clip_norm), update)


def _check_positive(opt: Any, name: str) -> None:
  value = opt[name]
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f'config.opt.{name} must be a finite number > 0, got '
                     f'{value}.')


def seed_keys(seeds) -> jax.Array:
  """Typed keys [S]; key i is exactly jax.random.key(seeds[i])."""
  return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


def init_state(key: jax.Array, model: nn.Module,
               optimizer: optax.GradientTransformation,
               length: int) -> TrainState:
  params_key, dropout_key = jax.random.split(key)
  tokens_BT = jnp.zeros((1, length), jnp.int32)
  params = model.init(params_key, tokens_BT)['params']
  return TrainState.create(apply_fn=model.apply, params=params, tx=optimizer,
                           rng=dropout_key)


def classification_losses(logits_BC, batch: dict):
  """Loss, correctness and weight (1) of each example's label."""
  labels_B = batch['labels']
  loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC, labels_B)
  correct_B = (logits_BC.argmax(-1) == labels_B).astype(jnp.float32)
  return loss_B, correct_B, jnp.ones_like(loss_B)


def next_token_losses(logits_BTV, batch: dict, pad_id: int):
  """Loss, correctness and weight of each next token; padding weighs 0."""
  targets_BT = batch['tokens'][:, 1:]
  logits_BTV = logits_BTV[:, :-1]
  loss_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV,
                                                            targets_BT)
  correct_BT = (logits_BTV.argmax(-1) == targets_BT).astype(jnp.float32)
  return loss_BT, correct_BT, (targets_BT != pad_id).astype(jnp.float32)


def objective(cfg: model_lib.ModelConfig) -> Callable:
  """(model output, batch) -> per-prediction (loss, correct, weight)."""
  if cfg.causal:
    return functools.partial(next_token_losses, pad_id=cfg.pad_id)
  return classification_losses


def train_step(state: TrainState, batch: dict,
               losses: Callable = classification_losses
               ) -> tuple[TrainState, dict]:
  """One optimizer update of one replica; dropout keyed by (replica, step)."""
  dropout_key = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    out = state.apply_fn({'params': params}, batch['tokens'],
                         deterministic=False, rngs={'dropout': dropout_key})
    loss_X, correct_X, w_X = losses(out, batch)
    count = jnp.maximum(w_X.sum(), 1.0)
    return (loss_X * w_X).sum() / count, (correct_X * w_X).sum() / count

  (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  metrics = {'loss': loss, 'accuracy': accuracy,
             'grad_norm': optax.global_norm(grads)}
  return state.apply_gradients(grads=grads), metrics


def eval_step(params: Any, batch: dict, model: nn.Module) -> dict:
  """Sums of loss and correct predictions over a batch's real targets.

  Targets are the labels of the real rows, or for the LM their real next
  tokens.
  """
  out = model.apply({'params': params}, batch['tokens'])
  loss_X, correct_X, w_X = objective(model.config)(out, batch)
  w_B = batch['weights']
  w_X = w_X * w_B.reshape(w_B.shape + (1,) * (w_X.ndim - 1))
  return {'loss_sum': (loss_X * w_X).sum(), 'correct': (correct_X * w_X).sum(),
          'count': w_X.sum()}


def maps_step(params: Any, tokens_BT: jax.Array, model: nn.Module):
  """Attention probabilities probs_NBHTT of every layer."""
  _, variables = model.apply({'params': params}, tokens_BT,
                             mutable=[model_lib.ATTENTION_COLLECTION])
  return model_lib.attention_probs(variables[model_lib.ATTENTION_COLLECTION])


def stats_step(params: Any, tokens_BT: jax.Array, model: nn.Module) -> dict:
  """Attention statistics, reduced inside jit so maps never leave the device."""
  probs_NBHTT = maps_step(params, tokens_BT, model)
  return attn_stats.attention_stats(probs_NBHTT,
                                    tokens_BT != model.config.pad_id)


def over_seeds(fn: Callable, per_seed: tuple[bool, ...],
               chunk: int) -> Callable:
  """fn over a leading seed axis of the arguments marked per-seed.

  chunk 0: one jax.vmap over all seeds. chunk c: jax.lax.map over groups of
  c seeds, each group vmapped, inside the same function, so only one group's
  activations exist at a time. On a CPU, S replicas' attention maps overflow
  the caches and one vmap over all of them is slower than seeds in turn.
  """
  if not chunk:
    return jax.vmap(fn, in_axes=tuple(0 if p else None for p in per_seed))

  def mapped(*args):
    def one(seeded):
      it = iter(seeded)
      return fn(*(next(it) if p else a for a, p in zip(args, per_seed)))
    return jax.lax.map(one, [a for a, p in zip(args, per_seed) if p],
                       batch_size=chunk)
  return mapped


def seed_init(model: nn.Module, optimizer: optax.GradientTransformation,
              length: int, seed_chunk: int = 0) -> Callable:
  """Typed keys [S] -> the seed-stacked TrainState (see over_seeds).

  Training jits it; restoring a workdir takes its jax.eval_shape.
  """
  init = functools.partial(init_state, model=model, optimizer=optimizer,
                           length=length)
  return over_seeds(init, (True,), seed_chunk)


@dataclasses.dataclass(frozen=True)
class SeedLayout:
  """S replicas over the devices, padded to a multiple of their count.

  Padding replica j repeats real replica j % num_seeds (its key and, with
  per-seed batches, its batch): it trains like that replica, so it cannot
  diverge on its own, and every result drops it. It adds no wall time: each
  device runs seeds_per_device replicas either way.
  """
  num_seeds: int
  devices: int

  @property
  def padded_seeds(self) -> int:
    return -(-self.num_seeds // self.devices) * self.devices

  @property
  def seeds_per_device(self) -> int:
    return self.padded_seeds // self.devices

  @property
  def padding(self) -> int:
    return self.padded_seeds - self.num_seeds

  def pad_index(self) -> np.ndarray:
    """The real replica that each padded replica is."""
    return np.arange(self.padded_seeds) % self.num_seeds

  def describe(self) -> dict[str, int]:
    return {'devices': self.devices, 'seeds_per_device': self.seeds_per_device,
            'padding': self.padding}


def seed_layout(num_seeds: int, num_devices: int | None = None) -> SeedLayout:
  """The layout of num_seeds replicas over num_devices (all by default)."""
  return SeedLayout(num_seeds, num_devices or jax.device_count())


def check_seed_chunk(seed_chunk: int) -> None:
  if seed_chunk < 0:
    raise ValueError(f'config.seed_chunk must be >= 0 (0 = all seeds in '
                     f'one vmap), got {seed_chunk}.')


def check_steps_per_call(steps_per_call: int) -> None:
  if steps_per_call < 1:
    raise ValueError(f'config.steps_per_call must be >= 1 (training steps '
                     f'per host call), got {steps_per_call}.')


def gather_batch(split: dict, rows, length: int | None = None) -> dict:
  """The batch of a resident split's rows [(S,) B]: tokens, labels.

  Tokens are cut to their first `length` positions (a bucket's; None: all).
  """
  return {'tokens': split['tokens'][rows, :length],
          'labels': split['labels'][rows]}


class SeedSteps:
  """The seed-mapped, jitted steps over S replicas, sharded over devices.

  The seed axis is padded to a multiple of the device count (SeedLayout) and
  sharded over the devices; on one device there is no padding. seed_chunk 0
  vmaps all of a device's replicas at once; seed_chunk c vmaps c at a time
  inside each step (over_seeds). The steps take and return padded trees;
  `real` drops the padding from what leaves the device.
  `train_steps` runs up to steps_per_call steps in one call.
  """

  def __init__(self, model: nn.Module, optimizer, length: int,
               num_seeds: int, per_seed_batches: bool, seed_chunk: int = 0,
               steps_per_call: int = 1):
    check_seed_chunk(seed_chunk)
    check_steps_per_call(steps_per_call)
    self.steps_per_call = steps_per_call
    self.layout = seed_layout(num_seeds)
    # Auto axes: XLA propagates the seed sharding through the vmapped steps.
    mesh = jax.make_mesh((self.layout.devices,), ('seed',),
                         axis_types=(jax.sharding.AxisType.Auto,))
    self.seed_sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec('seed'))
    self.replicated = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec())
    self.causal = model.config.causal
    self.per_seed_batches = per_seed_batches
    self.batch_sharding = (self.seed_sharding if per_seed_batches
                           else self.replicated)
    # Rows [C, (S,) B]: per-seed rows are sharded along their seed axis.
    self.rows_sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, 'seed') if per_seed_batches
        else jax.sharding.PartitionSpec())

    def on_devices(mapped, per_seed):
      if not seed_chunk or self.layout.devices == 1:
        return mapped
      # lax.map over the sharded seed axis would gather it onto one device:
      # each device maps over its own seeds instead.
      spec = jax.sharding.PartitionSpec
      return jax.shard_map(
          mapped, mesh=mesh,
          in_specs=tuple(spec('seed') if p else spec() for p in per_seed),
          out_specs=spec('seed'))

    def seeded(fn, per_seed_batch=False):
      per_seed = (True, per_seed_batch)
      return on_devices(over_seeds(fn, per_seed, seed_chunk), per_seed)

    self._seed_init = seed_init(model, optimizer, length, seed_chunk)
    self._init = jax.jit(on_devices(self._seed_init, (True,)),
                         out_shardings=self.seed_sharding)
    train = seeded(functools.partial(train_step,
                                     losses=objective(model.config)),
                   per_seed_batches)
    self.train = jax.jit(train, donate_argnums=0)

    def scanned_steps(state, window, split, rows_C, first, steps, length):
      """Steps on the batches of rows_C[first:first + steps], in a scan.

      window sums their metrics. The scan has a fixed length and no
      conditional, so XLA knows its trip count and an accelerator runs
      every step without the host. Tokens are cut to `length` (static: a
      bucket's; None: the split's), one program per bucket length.
      """
      def one(carry, rows):
        state, window = carry
        state, metrics = train(state, gather_batch(split, rows, length))
        return (state, jax.tree.map(jnp.add, window, metrics)), None

      rows = jax.lax.dynamic_slice_in_dim(rows_C, first, steps)
      carry, _ = jax.lax.scan(one, (state, window), rows)
      return carry

    self.scanned_steps = jax.jit(scanned_steps,
                                 static_argnames=('steps', 'length'),
                                 donate_argnums=(0, 1))
    evaluate_batch = seeded(functools.partial(eval_step, model=model))
    self.eval = jax.jit(evaluate_batch)

    def eval_split(params, batches):
      """Summed eval_step over the stacked batches [nb, ...], in order."""
      first = evaluate_batch(params, jax.tree.map(lambda x: x[0], batches))

      def add(total, batch):
        return jax.tree.map(jnp.add, total, evaluate_batch(params, batch)), None

      total, _ = jax.lax.scan(add, first,
                              jax.tree.map(lambda x: x[1:], batches))
      return total

    self.eval_split = jax.jit(eval_split)
    self.stats = jax.jit(seeded(functools.partial(stats_step, model=model)))
    self.maps = jax.jit(seeded(functools.partial(maps_step, model=model)))

  def train_steps(self, state: TrainState, window: dict, split: dict,
                  rows_C: jax.Array, count: int,
                  length: int | None = None) -> tuple[TrainState, dict]:
    """Steps on the batches of rows_C[:count] (put_rows); window sums them.

    Tokens are cut to `length` (a bucket's; None: the split's).

    A full call (count = steps_per_call) is one scan of steps_per_call
    steps. A shorter one, at the end of a logging window, runs the scan of
    one step count times, dispatched without waiting: two programs serve
    every call, and no step is computed only to be thrown away.
    """
    if count == self.steps_per_call:
      return self.scanned_steps(state, window, split, rows_C, 0,
                                 steps=count, length=length)
    for i in range(count):
      state, window = self.scanned_steps(state, window, split, rows_C, i,
                                          steps=1, length=length)
    return state, window

  def init(self, keys: jax.Array) -> TrainState:
    """The padded, seed-sharded state of the replicas of typed keys [S]."""
    if self.layout.padding:
      keys = keys[self.layout.pad_index()]
    return self._init(keys)

  def restore_target(self, keys: jax.Array) -> TrainState:
    """The abstract state init returns: padded and seed-sharded.

    Checkpoints hold the state so, and restore into any other padding
    (checkpoint.Checkpointer), so a run resumes on any device count.
    """
    if self.layout.padding:
      keys = keys[self.layout.pad_index()]
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=self.seed_sharding),
        jax.eval_shape(self._seed_init, keys))

  def real(self, tree: Any) -> Any:
    """A fetched per-seed tree [S_padded, ...] without its padding."""
    if not self.layout.padding:
      return tree
    return jax.tree.map(lambda x: x[:self.layout.num_seeds], tree)

  def put_batch(self, batch: dict) -> dict:
    if self.per_seed_batches and self.layout.padding:
      batch = jax.tree.map(lambda x: x[self.layout.pad_index()], batch)
    return jax.device_put(batch, self.batch_sharding)

  def put_shared(self, batch: dict) -> dict:
    return jax.device_put(batch, self.replicated)

  def put_split(self, split) -> dict:
    """A data.Split on every device, once, for train_steps to gather from."""
    return self.put_shared({'tokens': split.tokens, 'labels': split.labels})

  def put_eval_split(self, split, batch_size: int,
                     buckets: tuple[int, ...] | None = None) -> list[dict]:
    """A data.Split as stacked eval batches [nb, ...] per bucket, on device.

    One stack per bucket that holds reviews (data.by_bucket), its batches
    cut to the bucket's length; without buckets, one stack.
    """
    stacks = []
    for part in data.by_bucket(split, buckets or (split.tokens.shape[1],)):
      batches = list(data.eval_batches(part, batch_size))
      stacks.append(self.put_shared(
          jax.tree.map(lambda *xs: np.stack(xs), *batches)))
    return stacks

  def put_rows(self, rows_CxB: np.ndarray) -> jax.Array:
    """Rows of up to steps_per_call steps, padded to steps_per_call."""
    count = len(rows_CxB)
    if not 1 <= count <= self.steps_per_call:
      raise ValueError(f'{count} steps in one call; 1 to steps_per_call='
                       f'{self.steps_per_call} fit.')
    if self.per_seed_batches and self.layout.padding:
      rows_CxB = rows_CxB[:, self.layout.pad_index()]
    pad = [(0, self.steps_per_call - count)] + [(0, 0)] * (rows_CxB.ndim - 1)
    return jax.device_put(np.pad(rows_CxB, pad).astype(np.int32),
                          self.rows_sharding)

  def zero_window(self) -> dict:
    """The metric sums of no steps: the start of a logging window."""
    zeros = np.zeros(self.layout.num_seeds, np.float32)
    return self.put_window({name: zeros for name in TRAIN_METRICS})

  def put_window(self, sums_S: dict) -> dict:
    """A window's metric sums of the real replicas [S], padded, on the
    devices: how a window that a checkpoint cut goes on after a restore."""
    index = self.layout.pad_index()
    return jax.device_put(
        {name: np.asarray(sums_S[name], np.float32)[index]
         for name in TRAIN_METRICS}, self.seed_sharding)


def evaluate(steps: SeedSteps, params: Any,
             eval_split: list[dict]) -> dict[str, np.ndarray]:
  """Test metrics per replica over a resident split (put_eval_split).

  Mean loss and accuracy; for the LM the mean next-token loss, perplexity =
  exp(loss) and token accuracy, each over all real next tokens.
  """
  totals = [steps.real(distributed.fetch(steps.eval_split(params, stack)))
            for stack in eval_split]
  total = jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *totals)
  loss = total['loss_sum'] / total['count']
  accuracy = total['correct'] / total['count']
  if steps.causal:
    return {'loss': loss, 'perplexity': np.exp(loss),
            'token_accuracy': accuracy}
  return {'loss': loss, 'accuracy': accuracy}


def attention_statistics(steps: SeedSteps, params: Any, tokens_BT: np.ndarray,
                         batch_size: int,
                         buckets: tuple[int, ...] | None = None
                         ) -> dict[str, np.ndarray]:
  """Statistics per replica on a fixed sample, in chunks of batch_size.

  The reviews of each bucket (data.by_bucket) are cut to its length, in
  chunks whose last is filled with all-pad rows, which every statistic
  leaves out; the chunks' statistics are averaged weighted by their
  reviews, which equals the mean over all reviews of every statistic that
  averages over examples. Without buckets every chunk is full.
  """
  chunks, weights = [], []
  split = data.Split(tokens_BT, np.zeros(len(tokens_BT), np.int32))
  for part in data.by_bucket(split, buckets or (tokens_BT.shape[1],)):
    for i in range(0, len(part), batch_size):
      chunk = part.tokens[i:i + batch_size]
      weights.append(len(chunk))
      chunk = np.pad(chunk, [(0, batch_size - len(chunk)), (0, 0)],
                     constant_values=data.PAD_ID)
      chunks.append(steps.real(distributed.fetch(
          steps.stats(params, steps.put_shared(chunk)))))
  # Equal chunks have weight 1.0 each: exactly the plain mean.
  weight_C = np.asarray(weights, np.float32) / max(weights)

  def weighted_mean(*xs):
    x_C = np.stack(xs)
    w_C = weight_C.reshape((-1,) + (1,) * (x_C.ndim - 1)).astype(x_C.dtype)
    return np.sum(w_C * x_C, axis=0) / np.sum(weight_C).astype(x_C.dtype)

  return jax.tree.map(weighted_mean, *chunks)
