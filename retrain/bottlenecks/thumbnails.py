"""Thumbnails made from the pixels the bottleneck pass decodes.

The embedding projector shows a thumbnail of each image it samples. Made
from the file, that is one more open and decode of the photo; here the
bottleneck pass makes it from the pixels it decoded for the module
(before they are resized to the module's input), for the images the
run asked for (`want`: the projector's sample, at most
projector_max_images, so memory stays at SIDE x SIDE x 3 bytes an image,
12 KB). `take` hands one to the projector; an image the pass did not
decode (its vector was cached) has none, and the projector reads the file
as before.

A thumbnail is the upright image (EXIF orientation applied, as the
module saw it) centre-cropped to a square and area-resized to SIDE x SIDE,
uint8 [SIDE, SIDE, 3].
"""

from __future__ import annotations

import threading
from typing import Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrain import images as images_lib

SIDE = 64

_lock = threading.Lock()
_wanted: set = set()  # paths whose thumbnail the run wants
_made: dict = {}  # path -> uint8 [SIDE, SIDE, 3]


def want(paths: Iterable[str]) -> None:
  """Asks the next passes for the thumbnails of `paths` (replacing any
  earlier wish and dropping thumbnails not taken)."""
  with _lock:
    _wanted.clear()
    _wanted.update(paths)
    _made.clear()


def forget() -> None:
  """Drops every wish and thumbnail."""
  want(())


def take(path: str) -> Optional[np.ndarray]:
  """The thumbnail made of `path` (uint8 [SIDE, SIDE, 3]), or None."""
  with _lock:
    return _made.pop(path, None)


def _put(path: str, thumb: np.ndarray) -> None:
  with _lock:
    if path in _wanted:
      _made[path] = thumb


def square(pixels: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [SIDE, SIDE, 3], its centre square."""
  shape = tf.shape(pixels)
  side = tf.minimum(shape[0], shape[1])
  top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
  crop = pixels[top:top + side, left:left + side]
  small = tf.image.resize(crop, [SIDE, SIDE], method='area',
                          antialias=True)
  return tf.cast(tf.round(tf.clip_by_value(small, 0.0, 255.0)), tf.uint8)


def decode_and_resize(contents: tf.Tensor, size, index: tf.Tensor,
                      paths: Sequence[str]) -> tf.Tensor:
  """images.decode_and_resize(contents, size) (the same pixels, bit for
  bit), keeping the thumbnail of paths[index] when it is wanted."""
  with _lock:
    wanted = np.array([path in _wanted for path in paths], bool)
  pixels = images_lib.decode_image(contents, size)
  if wanted.any():
    def keep():
      def put(i, thumb):
        _put(paths[int(i)], thumb.numpy())
        return np.int32(0)
      return tf.py_function(put, [index, square(pixels)], tf.int32)
    done = tf.cond(tf.gather(tf.constant(wanted), index), keep,
                   lambda: tf.constant(0, tf.int32))
    with tf.control_dependencies([done]):
      pixels = tf.identity(pixels)
  return images_lib.resize_pixels(pixels, size)
