"""A checkpoint that does not restore is reported and the one before it used."""

import glob
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attnshare import checkpoint


def _state(value: float) -> dict:
  return {'w': jnp.full((2, 3), value), 'b': {'c': jnp.arange(4.0) + value}}


def _abstract(state_fn=_state):
  return jax.eval_shape(lambda: state_fn(0.0))


def _save_steps(workdir: str, steps=(1, 2)) -> str:
  ckpt = checkpoint.Checkpointer(workdir)
  for step in steps:
    ckpt.save(step, _state(float(step)), {'step': step})
  ckpt.close()
  return os.path.join(workdir, 'checkpoints')


def _files(step_dir: str, pattern: str) -> list[str]:
  found = [p for p in glob.glob(os.path.join(step_dir, pattern),
                                recursive=True) if os.path.isfile(p)]
  assert found, pattern
  return found


def _truncate(path: str) -> None:
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _truncate_data_file(step_dir):
  for path in _files(step_dir, 'state/**/d/*'):
    _truncate(path)


def _delete_state_metadata(step_dir):
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _delete_manifests(step_dir):
  for path in _files(step_dir, '**/manifest.ocdbt'):
    os.remove(path)


def _truncate_meta(step_dir):
  _truncate(os.path.join(step_dir, 'meta', 'metadata'))


def _empty_step_folder(step_dir):
  for name in os.listdir(step_dir):
    path = os.path.join(step_dir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


def _listing(directory: str) -> list[tuple[str, int]]:
  return sorted((p, os.path.getsize(p)) for p in
                glob.glob(os.path.join(directory, '**'), recursive=True))


def _reports(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if 'does not restore' in r.getMessage()]


@pytest.mark.parametrize('corrupt', [
    _truncate_data_file, _delete_state_metadata, _delete_manifests,
    _truncate_meta, _empty_step_folder])
def test_corrupt_latest_falls_back_to_the_one_before(tmp_path, caplog,
                                                     corrupt):
  directory = _save_steps(str(tmp_path))
  corrupt(os.path.join(directory, '2'))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.restore(_abstract())
  assert meta == {'step': 1}
  jax.tree.map(np.testing.assert_array_equal, state, _state(1.0))
  [report] = _reports(caplog)
  assert report.startswith(f'checkpoint {directory}/2 does not restore (')
  assert '\n' not in report and 'tensorstore_spec' not in report
  assert 'trying step 1' in report and '2.unrestorable' in report

  # The run goes on from step 1 and saves step 2 again; the folder that did
  # not restore is kept under another name.
  listing = _listing(os.path.join(directory, '2'))
  ckpt.save(2, _state(5.0), {'step': 2})
  ckpt.close()
  moved = os.path.join(directory, '2' + checkpoint.UNRESTORABLE_SUFFIX)
  assert _listing(moved) == [(p.replace(f'{directory}/2', moved), size)
                             for p, size in listing]
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  state, meta = ckpt.restore(_abstract())
  ckpt.close()
  assert meta == {'step': 2}
  jax.tree.map(np.testing.assert_array_equal, state, _state(5.0))


def test_none_restores_is_one_line_and_nothing_is_deleted(tmp_path, caplog):
  directory = _save_steps(str(tmp_path))
  _truncate_meta(os.path.join(directory, '2'))
  _delete_state_metadata(os.path.join(directory, '1'))
  before = _listing(str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    with pytest.raises(checkpoint.CheckpointError) as error:
      ckpt.restore(_abstract())
  ckpt.close()
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(f'no checkpoint in {directory} restores: step 2 '
                            '(JSONDecodeError: ')
  assert 'step 1 (FileNotFoundError: ' in message
  assert 'delete the step folders 1, 2 in it' in message
  assert len(_reports(caplog)) == 1
  assert _listing(str(tmp_path)) == before


def test_state_of_another_model_is_named(tmp_path):
  _save_steps(str(tmp_path), steps=(1,))
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  wider = lambda v: {**_state(v), 'w': jnp.full((2, 4), v)}
  extra = lambda v: {**_state(v), 'e': jnp.zeros(2)}
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'w is float32\[2, 3\] in the checkpoint, '
                     r'float32\[2, 4\] in this model'):
    ckpt.restore(_abstract(wider))
  with pytest.raises(checkpoint.CheckpointError,
                     match='the checkpoint lacks e, which this model has'):
    ckpt.restore(_abstract(extra))
  ckpt.close()
