"""The minimum versions: declared in setup.cfg, checked by main at start."""

import configparser
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest

from jax_attnshare import versions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_versions(monkeypatch, **installed):
  """importlib.metadata.version, with `installed` (None: not installed)."""
  real = importlib.metadata.version

  def version(name):
    key = name.replace('-', '_')
    if key not in installed:
      return real(name)
    if installed[key] is None:
      raise importlib.metadata.PackageNotFoundError(name)
    return installed[key]
  monkeypatch.setattr(importlib.metadata, 'version', version)


def test_this_environment_meets_the_minimums():
  assert versions.problem() is None


def test_setup_cfg_declares_the_minimums_main_checks():
  setup = configparser.ConfigParser()
  setup.read(os.path.join(ROOT, 'setup.cfg'))
  declared = dict(re.findall(r'^([\w-]+)>=([\d.]+)$',
                             setup['options']['install_requires'], re.M))
  assert {name: declared.get(name) for name in versions.MINIMUMS} == (
      versions.MINIMUMS)
  assert setup['options']['python_requires'] == '>=3.11'
  assert versions.PYTHON == (3, 11)


@pytest.mark.parametrize('version,expected', [
    ('0.7.0', (0, 7, 0)), ('0.10.2', (0, 10, 2)), ('0.7.0rc1', (0, 7, 0)),
    ('0.9.0.1', (0, 9, 0, 1)), ('2.21.0.dev20250101', (2, 21, 0))])
def test_versions_compare_by_their_release_numbers(version, expected):
  assert versions.parse(version) == expected


def test_jax_too_old_names_installed_needed_and_the_fix(monkeypatch):
  # The case: jax[tpu] on a Python 3.10 TPU VM image.
  _fake_versions(monkeypatch, jax='0.6.2', jaxlib='0.6.2')
  message = versions.problem()
  assert message == (
      'jax 0.6.2 is installed; jaxlib 0.6.2 is installed, but jax_attnshare '
      "needs jax>=0.7.1, jaxlib>=0.7.1: pip install -U 'jax>=0.7.1' "
      "'jaxlib>=0.7.1' (with jax's extra for the accelerator, e.g. "
      "'jax[tpu]>=0.7.1' or 'jax[cuda12]>=0.7.1').")


def test_a_missing_or_old_library_is_named_alone(monkeypatch):
  _fake_versions(monkeypatch, flax=None, orbax_checkpoint='0.11.28')
  assert versions.problem() == (
      'flax is not installed; orbax-checkpoint 0.11.28 is installed, but '
      'jax_attnshare needs flax>=0.10.0, orbax-checkpoint>=0.11.30: pip '
      "install -U 'flax>=0.10.0' 'orbax-checkpoint>=0.11.30'.")


def test_old_python_is_named_before_the_libraries(monkeypatch):
  _fake_versions(monkeypatch, jax='0.6.2')
  message = versions.problem(python=(3, 10, 12))
  assert message.startswith('Python 3.10.12 runs this, but jax_attnshare '
                            'needs Python >= 3.11')
  assert 'jax 0.6.2' not in message


# Fakes an installed jax 0.6.2 in the process that runs main.
_OLD_JAX_MAIN = '''
import importlib.metadata, runpy, sys
real = importlib.metadata.version
importlib.metadata.version = lambda n: "0.6.2" if n == "jax" else real(n)
sys.argv = ["main", *sys.argv[1:]]
try:
  runpy.run_module("jax_attnshare.main", run_name="__main__")
finally:
  print("jax imported:", "jax" in sys.modules)
'''


@pytest.mark.slow
def test_main_stops_at_an_old_jax_with_one_line_before_importing_it(
    tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-c', _OLD_JAX_MAIN,
       '--config=configs/kv_share.py:tiny', f'--workdir={workdir}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      'error: jax 0.6.2 is installed, but jax_attnshare needs jax>=0.7.1: '
      "pip install -U 'jax>=0.7.1' (with jax's extra for the accelerator, "
      "e.g. 'jax[tpu]>=0.7.1' or 'jax[cuda12]>=0.7.1')."]
  assert result.stdout == 'jax imported: False\n'
  assert not workdir.exists()
