"""TensorBoard writers without TensorFlow, for machines without clu.

CLU's metric_writers package imports TensorFlow, which a JAX GPU or TPU
machine may lack. These writers take the calls writers.SeedWriters makes of
CLU's (write_scalars, write_images, write_hparams, write_summaries, flush,
close) and write the events TensorFlow's summary ops would, through
tensorboard's own event file writer and protos, so TensorBoard shows the
same tags, plugins and steps either way:
  scalars   a float32 scalar tensor, scalars plugin
  images    a string tensor [width, height, PNG], images plugin
  hparams   hparams' session start summary at step 0
  summaries the given tensor under the given metadata (the Custom Scalars
            layout)
tensorboard imports TensorFlow for its file access where it is installed,
and a stub of it elsewhere.
"""

from __future__ import annotations

import struct
import time
from typing import Any, Mapping, Sequence
import zlib

from absl import logging
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer import event_file_writer
from tensorboard.util import tensor_util


def png(image: np.ndarray) -> bytes:
  """The PNG file of an [H, W, 3] uint8 image (8-bit RGB, unfiltered)."""
  height, width, channels = image.shape
  if channels != 3 or image.dtype != np.uint8:
    raise ValueError(f'png takes [H, W, 3] uint8 images, got {image.shape} '
                     f'{image.dtype}')

  def chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack('>I', len(payload)) + kind + payload
            + struct.pack('>I', zlib.crc32(kind + payload)))

  # Each row starts with its filter type, 0 (none).
  rows = np.concatenate([np.zeros([height, 1], np.uint8),
                         image.reshape(height, width * 3)], axis=1)
  return (b'\x89PNG\r\n\x1a\n'
          + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0,
                                       0))
          + chunk(b'IDAT', zlib.compress(rows.tobytes(), 6))
          + chunk(b'IEND', b''))


class SummaryWriter:
  """Events in `logdir`, as CLU's SummaryWriter writes them."""

  def __init__(self, logdir: str):
    # '.v2', as TensorFlow's writer ends its file names.
    self._writer = event_file_writer.EventFileWriter(
        logdir, filename_suffix='.v2')
    self._scalar_metadata = scalar_metadata.create_summary_metadata(
        display_name=None, description=None)
    self._image_metadata = image_metadata.create_summary_metadata(
        display_name=None, description=None)

  def _write(self, step: int, values: Sequence[summary_pb2.Summary.Value]):
    self._writer.add_event(event_pb2.Event(
        step=step, wall_time=time.time(),
        summary=summary_pb2.Summary(value=list(values))))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._write(step, [summary_pb2.Summary.Value(
        tag=tag, metadata=self._scalar_metadata,
        tensor=tensor_util.make_tensor_proto(np.float32(value)))
                       for tag, value in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """[N, H, W, 3] uint8 images per tag (or one [H, W, 3])."""
    values = []
    for tag, batch in images.items():
      batch = np.asarray(batch)
      batch = batch[None] if batch.ndim == 3 else batch
      strings = [str(batch.shape[2]).encode(), str(batch.shape[1]).encode()]
      strings += [png(image) for image in batch]
      values.append(summary_pb2.Summary.Value(
          tag=tag, metadata=self._image_metadata,
          tensor=tensor_util.make_tensor_proto(np.array(strings,
                                                        dtype=object))))
    self._write(step, values)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    summary = hparams_summary.hparams_pb(dict(hparams))
    self._writer.add_event(event_pb2.Event(step=0, wall_time=time.time(),
                                           summary=summary))

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None) -> None:
    """Tensors under their metadata (a SummaryMetadata or its bytes)."""
    out = []
    for tag, value in values.items():
      meta = (metadata or {}).get(tag)
      if isinstance(meta, bytes):
        meta = summary_pb2.SummaryMetadata.FromString(meta)
      out.append(summary_pb2.Summary.Value(
          tag=tag, metadata=meta,
          tensor=tensor_util.make_tensor_proto(np.asarray(value))))
    self._write(step, out)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class LoggingWriter:
  """Scalars and hparams on the console, as CLU's LoggingWriter logs them."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}'
              for k, v in sorted(scalars.items())]
    logging.info('[%d] %s', step, ', '.join(values))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    logging.info('[%d] Got images: %s.', step,
                 {k: np.shape(v) for k, v in images.items()})

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info('[Hyperparameters] %s', dict(hparams))

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None) -> None:
    del metadata  # Not shown.
    logging.info('[%d] Got raw tensors: %s.', step,
                 {k: np.shape(v) for k, v in values.items()})

  def flush(self) -> None:
    logging.flush()

  def close(self) -> None:
    self.flush()


class MultiWriter:
  """Every call to each of `writers`."""

  def __init__(self, writers: Sequence[Any]):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    for writer in self._writers:
      writer.write_images(step, images)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_hparams(hparams)

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None) -> None:
    for writer in self._writers:
      writer.write_summaries(step, values, metadata)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()


def AsyncWriter(writer: Any) -> Any:  # pylint: disable=invalid-name
  """`writer`: tensorboard's event file writer writes from its own thread.

  Named as CLU's, which SeedWriters wraps its event writers in.
  """
  return writer
