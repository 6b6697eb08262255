"""The persistent compilation cache: where it is, and that it is read."""

import os

import jax
from jax._src import compilation_cache
import jax.numpy as jnp
import ml_collections
import pytest

from jax_attnshare import compilation

_HIT = '/jax/compilation_cache/cache_hits'


def test_on_by_default_on_accelerators_only():
  default = os.path.expanduser(compilation.DEFAULT_DIR)
  assert compilation.cache_dir('', 'cpu', None) is None
  assert compilation.cache_dir('', 'gpu', None) == default
  assert compilation.cache_dir('', 'tpu', None) == default
  # A cache set before (JAX_COMPILATION_CACHE_DIR) is kept.
  assert compilation.cache_dir('', 'cpu', '/set/before') == '/set/before'
  assert compilation.cache_dir('off', 'gpu', '/set/before') is None
  assert compilation.cache_dir('here', 'cpu', None) == os.path.abspath('here')


@pytest.fixture
def jax_cache_settings():
  """Restores jax's cache settings, and its cache, after the test."""
  names = ('jax_compilation_cache_dir',
           'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  before = {name: getattr(jax.config, name) for name in names}
  yield
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _compile_and_run():
  """What a run does: compile a program (as a new function) and run it."""
  return jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0))


def test_a_second_run_reads_its_programs_from_the_cache(tmp_path,
                                                        jax_cache_settings):
  del jax_cache_settings  # Used for its teardown.
  folder = tmp_path / 'xla'
  config = ml_collections.ConfigDict({'compilation_cache_dir': str(folder)})
  assert compilation.use_cache(config) == str(folder)
  hits = []

  def listen(event, **kwargs):
    del kwargs
    if event == _HIT:
      hits.append(event)

  jax.monitoring.register_event_listener(listen)
  try:
    _compile_and_run()
    written = sorted(os.listdir(folder))
    assert written and not hits  # Even this small, fast program.
    jax.clear_caches()  # What a new process starts with.
    _compile_and_run()
    # Each program run 1 wrote (the lambda's, jnp.arange's) is read.
    assert sorted(os.listdir(folder)) == written
    assert len(hits) == len(written)
  finally:
    jax.monitoring.unregister_event_listener(listen)


def test_off_turns_a_cache_set_before_off(jax_cache_settings, tmp_path):
  del jax_cache_settings  # Used for its teardown.
  jax.config.update('jax_compilation_cache_dir', str(tmp_path))
  config = ml_collections.ConfigDict({'compilation_cache_dir': 'off'})
  assert compilation.use_cache(config) is None
  assert jax.config.jax_compilation_cache_dir is None
