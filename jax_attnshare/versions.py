"""The Python and library versions the code needs, checked at start.

setup.cfg declares the same minimums (tests/versions_test.py holds them
equal), so pip refuses an install below them; main checks again, because an
environment changes after the install: `pip install jax[tpu]` on a TPU VM
image with Python 3.10 resolves to jax 0.6.2, whose
jax.distributed.initialize has no heartbeat_timeout_seconds. This module
imports only the standard library, so main runs it before importing what it
checks.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

# The code calls jax.shard_map and jax.make_mesh(axis_types=...) (in jax
# 0.6.2) and jax.distributed.initialize(heartbeat_timeout_seconds=...) (0.7.0,
# which needs Python >= 3.11); orbax 0.11.30 (below) saves a state sharded
# over several devices under jax.sharding.set_mesh as a context manager
# (0.7.1).
PYTHON = (3, 11)
MINIMUMS = {
    'jax': '0.7.1',
    'jaxlib': '0.7.1',
    # flax.linen and flax.training.train_state; tested with jax 0.7.1.
    'flax': '0.10.0',
    # adam/adamw, multi_transform, set_to_zero, join_schedules, huber_loss.
    'optax': '0.2.3',
    # The first that restores the state's sharded typed PRNG keys
    # (jax.random.key); 0.11.16 and older fail at import with jax >= 0.7.0.
    'orbax-checkpoint': '0.11.30',
}


def parse(version: str) -> tuple[int, ...]:
  """The release numbers of a version: '0.7.0rc1' -> (0, 7, 0).

  A pre-release counts as its release, which the minimums never name.
  """
  numbers = []
  for part in version.split('.'):
    digits = re.match(r'\d*', part).group()
    if not digits:
      break
    numbers.append(int(digits))
    if len(digits) < len(part):  # '0rc1': the rest is no release number.
      break
  return tuple(numbers)


def problem(python: tuple[int, ...] | None = None) -> str | None:
  """What is too old or missing, with the fix, in one line; None if nothing.

  `python` stands for sys.version_info (tests pass an older one).
  """
  python = tuple(python or sys.version_info[:3])
  if python[:2] < PYTHON:
    needed = '.'.join(map(str, PYTHON))
    return (f'Python {".".join(map(str, python))} runs this, but '
            f'jax_attnshare needs Python >= {needed} (as jax >= '
            f'{MINIMUMS["jax"]} does): install it into a Python {needed} '
            'environment (docs/scaling.md, "Python versions").')
  found, needed = [], []
  for name, minimum in MINIMUMS.items():
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found.append(f'{name} is not installed')
    else:
      if parse(installed) >= parse(minimum):
        continue
      found.append(f'{name} {installed} is installed')
    needed.append(f'{name}>={minimum}')
  if not found:
    return None
  jax = f"'jax[tpu]>={MINIMUMS['jax']}' or 'jax[cuda12]>={MINIMUMS['jax']}'"
  extra = (f" (with jax's extra for the accelerator, e.g. {jax})"
           if any(n.startswith('jax') for n in needed) else '')
  return (f'{"; ".join(found)}, but jax_attnshare needs '
          f'{", ".join(needed)}: pip install -U '
          f'{" ".join(repr(n) for n in needed)}{extra}.')
