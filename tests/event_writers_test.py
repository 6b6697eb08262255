"""event_writers' own parts (writers_test runs SeedWriters on them)."""

import io

import numpy as np
from PIL import Image
import pytest

from jax_attnshare import event_writers


def test_png_decodes_to_the_image():
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
  decoded = np.asarray(Image.open(io.BytesIO(event_writers.png(image))))
  np.testing.assert_array_equal(decoded, image)


def test_png_refuses_what_is_not_an_rgb_byte_image():
  with pytest.raises(ValueError, match=r'\[H, W, 3\] uint8'):
    event_writers.png(np.zeros((2, 2, 3), np.float32))
