"""The package's layering: training stands without the report and post-hoc.

The core (jax_attnshare/*.py) imports neither jax_attnshare.posthoc nor
jax_attnshare.report, `import jax_attnshare.main` loads no plotting or
statistics library, and the commands load no TensorFlow until they need it.
(That report/ imports no JAX is report_test's test_imports_no_jax.)
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
CORE = sorted((ROOT / 'jax_attnshare').glob('*.py'))
OUTER = ('jax_attnshare.posthoc', 'jax_attnshare.report')


def _imported(path: pathlib.Path) -> set[str]:
  """Every module an import statement of `path` names, at any depth."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      # `from jax_attnshare import report` names the package as a member.
      names.update([node.module] + [f'{node.module}.{alias.name}'
                                    for alias in node.names])
  return names


@pytest.mark.parametrize('path', CORE, ids=lambda p: p.name)
def test_core_imports_no_posthoc_or_report(path):
  outer = {name for name in _imported(path)
           if any(name == o or name.startswith(o + '.') for o in OUTER)}
  assert not outer, f'{path.name} imports {sorted(outer)}'


def test_core_is_found():
  assert {'main.py', 'train.py', 'plotting.py'} <= {p.name for p in CORE}


# Run in a fresh interpreter. TensorFlow, which clu.metric_writers imports,
# loads Keras and with it matplotlib, pandas and SciPy; they are imported
# first, so that only what jax_attnshare itself loads is checked.
_MAIN_LOADS = """
import sys
import clu.metric_writers
before = set(sys.modules)
import jax_attnshare.main
new = set(sys.modules) - before
print(sorted({m.split('.')[0] for m in new} | {
    m for m in new if m.startswith('jax_attnshare.')}))
"""


def test_main_loads_no_plotting_or_statistics():
  out = subprocess.run([sys.executable, '-c', _MAIN_LOADS], check=True,
                       cwd=ROOT, capture_output=True, text=True).stdout
  loaded = set(ast.literal_eval(out.strip().splitlines()[-1]))
  assert 'jax_attnshare.main' in loaded  # Else the check checks nothing.
  bad = loaded & {'matplotlib', 'pandas', 'scipy', 'statsmodels',
                  'jax_attnshare.plotting', *OUTER}
  assert not bad, sorted(bad)


# Each command in its own interpreter: each defines its own --config.
_COMMANDS_LOAD = """
import importlib, sys
importlib.import_module(sys.argv[1])
print(sorted({m.split('.')[0] for m in sys.modules}))
"""


@pytest.mark.slow
def test_commands_import_no_tensorflow_tfds_or_clu():
  """A machine without them runs main (without_tensorflow_test)."""
  for command in ('jax_attnshare.main', 'jax_attnshare.prepare'):
    out = subprocess.run([sys.executable, '-c', _COMMANDS_LOAD, command],
                         check=True, cwd=ROOT, capture_output=True,
                         text=True).stdout
    loaded = set(ast.literal_eval(out.strip().splitlines()[-1]))
    assert 'jax_attnshare' in loaded  # Else the check checks nothing.
    assert not loaded & {'tensorflow', 'tensorflow_datasets', 'clu'}, command
