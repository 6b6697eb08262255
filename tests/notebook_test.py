"""launch/colab.ipynb runs top to bottom, as a user opens it in Colab.

Here on 8 CPU devices, in a kernel of its own virtual environment (with this
machine's packages beside it, so nothing is downloaded but the build tools),
so that the notebook's install cell installs the project there as it would
in Colab: from an sdist built from this checkout's tracked files. Only the
parameters cell is replaced: the sdist, a tiny config, no TensorBoard. The
notebook reads IMDB through tfds, from a tiny tfds dataset that
TFDS_DATA_DIR points at.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import types

import nbclient
import nbformat
import pytest

import tiny_tfds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'launch', 'colab.ipynb')


def _outputs(cell, kind):
  return [o for o in cell.get('outputs', []) if kind in o.get('data', {})]


def _build_sdist(tmp_path) -> str:
  """`python -m build --sdist` of the tracked files, without the build
  package: setuptools' own PEP 517 hook, in a copy (it writes egg-info)."""
  tree = tmp_path / 'checkout'
  files = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode().split('\0')
  for name in filter(None, files):
    (tree / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(ROOT, name), tree / name)
  name = subprocess.run(
      [sys.executable, '-c', 'import sys; from setuptools import build_meta; '
       'print(build_meta.build_sdist(sys.argv[1]))', str(tmp_path / 'dist')],
      cwd=tree, check=True, capture_output=True, text=True).stdout.split()[-1]
  return str(tmp_path / 'dist' / name)


def _kernel(tmp_path, monkeypatch) -> str:
  """A Jupyter kernel running a fresh venv's Python; returns its name."""
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages',
                  str(venv)], check=True)
  jupyter = tmp_path / 'jupyter'
  subprocess.run([str(venv / 'bin' / 'python'), '-m', 'ipykernel', 'install',
                  '--prefix', str(jupyter), '--name', 'colab-test'],
                 check=True, capture_output=True)
  monkeypatch.setenv('JUPYTER_PATH', str(jupyter / 'share' / 'jupyter'))
  return 'colab-test'


@pytest.mark.slow
def test_colab_notebook_installs_from_an_sdist_and_runs_top_to_bottom(
    tmp_path, monkeypatch):
  sdist = _build_sdist(tmp_path)
  with tarfile.open(sdist) as f:  # The command line reads them by path.
    assert 'jax_attnshare-0.1.0/configs/kv_share.py' in f.getnames()
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  parameters = [c for c in notebook.cells
                if 'parameters' in c.metadata.get('tags', [])]
  assert len(parameters) == 1 and notebook.cells.index(parameters[0]) <= 1
  workdir = tmp_path / 'runs' / 'kv'
  project = tmp_path / 'project'
  parameters[0].source = '\n'.join([
      "CONFIG = 'configs/kv_share.py'", "SIZE = 'tiny'", 'SEEDS = 15',
      f'WORKDIR = {str(workdir)!r}', f'SOURCE = {sdist!r}',
      f'PROJECT_DIR = {str(project)!r}', 'SHOW_TENSORBOARD = False'])
  # The kernel and the commands it runs inherit these; not the test's
  # PYTHONPATH, which would import this checkout instead of the install.
  monkeypatch.delenv('PYTHONPATH', raising=False)
  monkeypatch.setenv('TFDS_DATA_DIR',
                     tiny_tfds.write_tiny_imdb(str(tmp_path / 'tfds')))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

  nbclient.NotebookClient(notebook, timeout=600,
                          kernel_name=_kernel(tmp_path, monkeypatch),
                          resources={'metadata': {'path': str(tmp_path)}}
                          ).execute()

  # The install cell installed the sdist into the kernel's venv.
  assert list((tmp_path / 'venv').glob(
      'lib/python*/site-packages/jax_attnshare/main.py'))
  assert (project / 'configs' / 'kv_share.py').exists()
  text = '\n'.join(o.get('text', '') for c in notebook.cells
                   for o in c.get('outputs', []))
  assert ('8 cpu device(s) (cpu): size tiny, 15 seeds at 2 per device, 1 '
          'padding replica(s); --config=configs/kv_share.py:tiny,seeds=15'
          in text)
  with open(workdir / 'summary.json') as f:
    summary = json.load(f)
  assert summary['finished'] and len(summary['per_seed']) == 15
  report_cell = notebook.cells[-1]
  figures = _outputs(report_cell, 'image/png')
  assert len(figures) == len([n for n in os.listdir(tmp_path / 'runs_report')
                              if n.endswith('.png')]) > 0
  assert _outputs(report_cell, 'text/markdown')


def _runtime_check(monkeypatch, platform, size='auto', seeds=0,
                   hardware=()) -> dict:
  """Runs the runtime cell with JAX's answer (one `platform` device) and the
  device files and commands of the runtime (`hardware`) faked."""
  cell = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells
              if 'probe = subprocess.run(' in c.source)
  monkeypatch.setattr(subprocess, 'run', lambda *a, **k: subprocess.
                      CompletedProcess(a, 0, stdout=f'{platform} 1 a chip\n'))
  scope = {'CONFIG': 'configs/kv_share.py', 'SIZE': size, 'SEEDS': seeds,
           'subprocess': subprocess, 'sys': sys,
           'os': types.SimpleNamespace(path=types.SimpleNamespace(
               exists=hardware.__contains__, isdir=hardware.__contains__)),
           'shutil': types.SimpleNamespace(which=lambda name: (
               name if name in hardware else None))}
  exec(cell.source, scope)  # pylint: disable=exec-used
  return scope


@pytest.mark.parametrize('platform,size,seeds,expected', [
    ('tpu', 'auto', 0, 'configs/kv_share.py:seeds=15'),  # A v5e-1.
    ('gpu', 'auto', 3, 'configs/kv_share.py:seeds=3'),
    ('cpu', 'auto', 0, 'configs/kv_share.py:cpu,seeds=5'),
    ('tpu', 'tiny', 0, 'configs/kv_share.py:tiny,seeds=2'),
])
def test_the_runtime_check_sizes_the_run_to_the_devices(
    monkeypatch, platform, size, seeds, expected):
  assert _runtime_check(monkeypatch, platform, size, seeds)['config'] == (
      expected)


@pytest.mark.parametrize('hardware,extra', [
    (('/dev/vfio',), 'jax[tpu]'), (('nvidia-smi',), 'jax[cuda12]')])
def test_the_runtime_check_stops_where_jax_misses_the_accelerator(
    monkeypatch, hardware, extra):
  with pytest.raises(RuntimeError, match=re.escape(
      f"JAX sees only the CPU: run !pip install -U '{extra}>=0.7.1'")):
    _runtime_check(monkeypatch, 'cpu', hardware=hardware)
