"""A checkpoint that does not restore is reported and the one before it used."""

import glob
import logging
import os
import shutil

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attnshare import checkpoint
from jax_attnshare import distributed


def _state(value: float) -> dict:
  # Large enough for orbax to keep w's bytes in a data file of its own.
  return {'w': jnp.full((2, 3), value) + jnp.arange(3000.0).reshape(2, -1)[
      :, :3], 'b': {'c': jnp.arange(4.0) + value},
          'big': jnp.arange(4000.0).reshape(2, 2000) + value}


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


def _flip_one_byte(step_dir):
  """A bit rot the files' own formats do not notice: the restore of the
  largest data file's middle byte changed succeeds without checksums."""
  path = max(_files(step_dir, 'state/**/d/*'), key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 1]))


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
    _flip_one_byte, _truncate_data_file, _delete_state_metadata,
    _delete_manifests, _truncate_meta, _empty_step_folder])
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
  assert message.startswith(
      f'no checkpoint in {directory} restores: step 2 (ValueError: '
      'meta/metadata differs from its sha256 in sha256sums.json.)')
  assert 'step 1 (ValueError: state/_METADATA is missing.)' in message
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


def test_a_step_saved_without_checksums_restores_with_a_warning(tmp_path,
                                                                caplog):
  """As a step saved before checksums were written restores."""
  directory = _save_steps(str(tmp_path))
  os.remove(os.path.join(directory, '2', checkpoint.CHECKSUMS_FILE))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    _, meta = ckpt.restore(_abstract())
  ckpt.close()
  assert meta == {'step': 2}
  [warning] = [r.getMessage() for r in caplog.records]
  assert warning == (f'Restored checkpoint {directory}/2, which has no '
                     'sha256sums.json (saved by an older version), so its '
                     'bytes were not checked.')


def test_damaged_data_without_checksums_is_one_clean_line(tmp_path, caplog):
  """orbax's own error (it names tensorstore's spec as a bound method) and
  its log records are left out of the one warning line."""
  directory = _save_steps(str(tmp_path))
  step_dir = os.path.join(directory, '2')
  os.remove(os.path.join(step_dir, checkpoint.CHECKSUMS_FILE))
  for path in _files(step_dir, 'state/**/d/*'):
    with open(path, 'r+b') as f:
      data = bytearray(f.read())
      for i in range(100, len(data) - 100):
        data[i] ^= 0x5A
      f.seek(0)
      f.write(data)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  with caplog.at_level(logging.DEBUG):
    _, meta = ckpt.restore(_abstract())
  ckpt.close()
  assert meta == {'step': 1}
  [report] = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.WARNING]
  assert report.startswith(f'checkpoint {step_dir} does not restore (')
  assert 'bound method' not in report and '\n' not in report


def test_the_libraries_say_nothing_while_a_checkpoint_is_tried(tmp_path,
                                                               caplog):
  """orbax logs an ERROR with the file's contents for a damaged metadata
  file of its own, which no checksum covers (it rewrites it at commit)."""
  directory = _save_steps(str(tmp_path))
  with open(os.path.join(directory, '2', '_CHECKPOINT_METADATA'), 'w') as f:
    f.write('garbage')
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  with caplog.at_level(logging.DEBUG):
    _, meta = ckpt.restore(_abstract())
  assert meta == {'step': 2}
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  ckpt.close()


def _padded(value: float, num_real: int, length: int) -> dict:
  """_state's leaves with a leading axis of `length`: num_real replicas,
  then padding that repeats them (steps.SeedLayout)."""
  index = np.arange(length) % num_real
  return jax.tree.map(lambda x: jnp.stack([x + i for i in range(num_real)])[
      index], _state(value))


def test_a_padded_state_restores_into_any_padding(tmp_path):
  """Saved as 4 devices hold 3 seeds, restored on 1 device (3) and on 6
  (3 real + 3 padding), and as a post-hoc reader asks for it (3)."""
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(1, _padded(1.0, 3, 4), {'step': 1})
  ckpt.close()
  for length, num_real in ((3, None), (6, 3)):
    ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    target = jax.eval_shape(lambda n=length: _padded(0.0, 3, n))
    state, _ = ckpt.restore(target, num_real)
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, state,
                 _padded(1.0, 3, length))
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(checkpoint.CheckpointError,
                     match='holds 4 replicas, this run 5'):
    ckpt.restore(jax.eval_shape(lambda: _padded(0.0, 5, 5)))
  ckpt.close()


def test_every_process_restores_the_step_process_0_picked(tmp_path,
                                                          monkeypatch):
  """Simulated process 1: process 0 found step 2 damaged (its copy, or
  what it sees of the shared folder) and picked step 1; this process
  restores step 1 although its own step 2 restores, and sets step 2 aside
  when it saves it again, as process 0 does."""
  directory = _save_steps(str(tmp_path))
  monkeypatch.setattr(distributed, 'primary_value', lambda what, fn: 1)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  _, meta = ckpt.restore(_abstract())
  assert meta == {'step': 1}
  ckpt.save(2, _state(5.0), {'step': 2})
  ckpt.close()
  assert os.path.isdir(os.path.join(directory,
                                    '2' + checkpoint.UNRESTORABLE_SUFFIX))


def test_processes_that_restored_different_checkpoints_stop(tmp_path,
                                                            monkeypatch):
  """Simulated: another process restored other meta. distributed.check_same
  runs as with 2 processes, gathering this one's digest and another."""
  _save_steps(str(tmp_path))
  check_same = distributed.check_same

  def as_two_processes(arrays, error):
    with monkeypatch.context() as m:
      m.setattr(jax, 'process_count', lambda: 2)
      m.setattr(multihost_utils, 'process_allgather',
                lambda digest: np.stack([digest, np.zeros_like(digest)]))
      check_same(arrays, error)

  monkeypatch.setattr(distributed, 'check_same', as_two_processes)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  with pytest.raises(ValueError, match='the processes restored different '
                     r'checkpoints of .* \(processes \[1\] differ'):
    ckpt.restore(_abstract())
  ckpt.close()
