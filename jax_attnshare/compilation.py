"""jax's persistent compilation cache: compiled programs kept for later runs.

The conditions of a grid compile the same programs (a sharing condition
changes the parameters' tree, so not all): with the cache, each later run
reads them from disk instead of compiling them again. Set by
config.compilation_cache_dir before the first compilation of a process:
  ''      on a GPU or TPU DEFAULT_DIR, on a CPU none (its programs compile in
          seconds, and a CPU run is mostly a one-off)
  'off'   none
  DIR     DIR, on any platform
A cache that JAX_COMPILATION_CACHE_DIR (or another caller) set is kept by ''.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax

DEFAULT_DIR = os.path.join('~', '.cache', 'jax_attnshare', 'compilation')
OFF = 'off'


def cache_dir(field: str, platform: str, already: str | None) -> str | None:
  """The folder config.compilation_cache_dir=field asks for; None: no cache.

  platform: jax's default backend ('cpu', 'gpu', 'tpu'); already: the
  folder jax has been given before, if any.
  """
  if field == OFF:
    return None
  if field:
    return os.path.abspath(os.path.expanduser(field))
  if already:
    return already
  return None if platform == 'cpu' else os.path.expanduser(DEFAULT_DIR)


def use_cache(config: Any) -> str | None:
  """Points jax's persistent cache at config's folder; returns it (or None).

  Every program is kept, however fast it compiled or small it is: a grid's
  small programs (evaluation, statistics) add up too.
  """
  folder = cache_dir(config.get('compilation_cache_dir', ''),
                     jax.default_backend(),
                     jax.config.jax_compilation_cache_dir)
  if folder is None:
    if config.get('compilation_cache_dir', '') == OFF:
      jax.config.update('jax_compilation_cache_dir', None)
    return None
  jax.config.update('jax_compilation_cache_dir', folder)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  # -1: no minimum size, and jax may not raise it for the file system.
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  logging.info('Compiled programs are kept in %s for later runs '
               '(config.compilation_cache_dir).', folder)
  return folder
