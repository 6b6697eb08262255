"""Linear probe on frozen features, and forward latency.

The probe is multinomial logistic regression with an L2 penalty, fitted by
L-BFGS (scipy) on standardized features: deterministic, no sklearn. The
penalty is chosen per feature set by k-fold cross-validation on the training
examples, so a perturbed encoder is not judged by a probe tuned for another.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np
from scipy import optimize
from scipy import special


@dataclasses.dataclass(frozen=True)
class Probe:
  mean_D: np.ndarray
  scale_D: np.ndarray
  w_DC: np.ndarray
  b_C: np.ndarray

  def logits(self, x_ND: np.ndarray) -> np.ndarray:
    return ((x_ND - self.mean_D) / self.scale_D) @ self.w_DC + self.b_C

  def predict(self, x_ND: np.ndarray) -> np.ndarray:
    return self.logits(x_ND).argmax(-1)

  def accuracy(self, x_ND: np.ndarray, labels_N: np.ndarray) -> float:
    return float(np.mean(self.predict(x_ND) == labels_N))


def fit(x_ND: np.ndarray, labels_N: np.ndarray, l2: float = 1e-3,
        max_iter: int = 500) -> Probe:
  """Minimizes mean cross-entropy + l2/2·‖w‖² over (w, b)."""
  if l2 < 0:
    raise ValueError(f'config.probe.l2 must be >= 0, got {l2}.')
  x_ND = np.asarray(x_ND, np.float64)
  n, d = x_ND.shape
  c = int(labels_N.max()) + 1
  mean_D = x_ND.mean(0)
  scale_D = np.maximum(x_ND.std(0), 1e-8)
  z_ND = (x_ND - mean_D) / scale_D
  onehot_NC = np.eye(c)[labels_N]

  def loss_and_grad(theta):
    w_DC, b_C = theta[:d * c].reshape(d, c), theta[d * c:]
    logits_NC = z_ND @ w_DC + b_C
    logp_NC = logits_NC - special.logsumexp(logits_NC, axis=1, keepdims=True)
    loss = -np.sum(onehot_NC * logp_NC) / n + 0.5 * l2 * np.sum(w_DC ** 2)
    err_NC = (np.exp(logp_NC) - onehot_NC) / n
    grad = np.concatenate([(z_ND.T @ err_NC + l2 * w_DC).ravel(),
                           err_NC.sum(0)])
    return loss, grad

  result = optimize.minimize(loss_and_grad, np.zeros(d * c + c), jac=True,
                             method='L-BFGS-B',
                             options={'maxiter': max_iter})
  theta = result.x
  return Probe(mean_D, scale_D, theta[:d * c].reshape(d, c), theta[d * c:])


def fit_cv(x_ND: np.ndarray, labels_N: np.ndarray, l2_grid, folds: int = 5,
           seed: int = 0) -> tuple[Probe, float]:
  """The probe refitted on all examples with the best cross-validated l2.

  Ties go to the larger penalty. Returns (probe, chosen l2).
  """
  if folds < 2 or not l2_grid:
    raise ValueError(f'config.probe: folds={folds} must be >= 2 and '
                     f'l2_grid={l2_grid!r} non-empty.')
  fold_N = np.random.default_rng(seed).permutation(len(labels_N)) % folds
  scores = []
  for l2 in l2_grid:
    correct = sum(fit(x_ND[fold_N != k], labels_N[fold_N != k], l2)
                  .accuracy(x_ND[fold_N == k], labels_N[fold_N == k])
                  * np.sum(fold_N == k) for k in range(folds))
    scores.append((correct / len(labels_N), l2))
  best = max(scores)[1]
  return fit(x_ND, labels_N, best), best


def latency_ms(calls: list[tuple[Callable, tuple]], repeats: int = 10,
               warmup: int = 2) -> list[float]:
  """Median wall time in ms of each fn(*args), after `warmup` calls each.

  Every argument is put on the device first: a numpy tree (a pretrained
  model's parameters) would otherwise be copied to the device in every
  timed call, which a fine-tuned model's device tree is not, and the copy
  would pass for a difference between the models. The calls are timed in
  rounds (one of each per round, the order rotated by one each round), so a
  slow spell of a shared machine, or what one call leaves behind for the
  next, weighs on all of them alike.
  """
  if repeats < 1:
    raise ValueError(f'config.latency.repeats must be >= 1, got {repeats}.')
  calls = [(fn, jax.device_put(args)) for fn, args in calls]
  for fn, args in calls:
    for _ in range(warmup):
      jax.block_until_ready(fn(*args))
  times = np.zeros((repeats, len(calls)))
  for r in range(repeats):
    for i in np.roll(np.arange(len(calls)), -r):
      fn, args = calls[i]
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[r, i] = time.perf_counter() - start
  return list(1000 * np.median(times, axis=0))
