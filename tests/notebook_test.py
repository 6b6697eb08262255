"""launch/colab_tpu.ipynb runs top to bottom, here on 8 CPU devices.

Only the parameters cell is replaced: a tiny config, no install, the CPU
platform, no TensorBoard server. The notebook reads IMDB through tfds as in
Colab, from a tiny tfds dataset that TFDS_DATA_DIR points at.
"""

import json
import os

import nbclient
import nbformat

import tiny_tfds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'launch', 'colab_tpu.ipynb')


def _outputs(cell, kind):
  return [o for o in cell.get('outputs', []) if kind in o.get('data', {})]


def test_colab_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  parameters = [c for c in notebook.cells
                if 'parameters' in c.metadata.get('tags', [])]
  assert len(parameters) == 1 and notebook.cells.index(parameters[0]) <= 1
  workdir = tmp_path / 'runs' / 'kv'
  parameters[0].source = '\n'.join([
      "CONFIG = 'configs/kv_share.py:tiny'", 'SEEDS = 15',
      f'WORKDIR = {str(workdir)!r}', 'INSTALL = False', "REPO_URL = ''",
      f'PROJECT_DIR = {ROOT!r}', "PLATFORM = 'cpu'",
      'SHOW_TENSORBOARD = False'])
  # The kernel and the commands it runs inherit these.
  monkeypatch.setenv('TFDS_DATA_DIR',
                     tiny_tfds.write_tiny_imdb(str(tmp_path / 'tfds')))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

  nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}
                          ).execute()

  text = '\n'.join(o.get('text', '') for c in notebook.cells
                   for o in c.get('outputs', []))
  assert ('8 cpu devices: 15 seeds at 2 per device, 1 padding replica(s).'
          in text)
  with open(workdir / 'summary.json') as f:
    summary = json.load(f)
  assert summary['finished'] and len(summary['per_seed']) == 15
  report_cell = notebook.cells[-1]
  figures = _outputs(report_cell, 'image/png')
  assert len(figures) == len([n for n in os.listdir(tmp_path / 'runs_report')
                              if n.endswith('.png')]) > 0
  assert _outputs(report_cell, 'text/markdown')
