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

Thumbnails are also kept on disk beside the vectors
(<bottleneck_dir>/thumbnails-<SIDE>/<content hash>.npy, uint8, 12 KB
each, written atomically; `settle`), so a warm run, which decodes
nothing, shows them without opening a photo either.

A thumbnail is the upright image (EXIF orientation applied, as the
module saw it) centre-cropped to a square and area-resized to SIDE x SIDE,
uint8 [SIDE, SIDE, 3].
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from typing import Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from retrain import image_header
from retrain import images as images_lib
from retrain.common import atomic
from retrain.common import walk as walk_lib

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


def _cached(folder: str, digest: str) -> str:
  return os.path.join(folder, f'{digest[:64]}.npy')


def _load(path: str) -> Optional[np.ndarray]:
  """The thumbnail stored at `path`, or None (absent, or not one)."""
  try:
    if os.path.getsize(path) > 2 * SIDE * SIDE * 3:
      return None
    thumb = np.load(path, allow_pickle=False)
  except (OSError, ValueError):
    return None
  if thumb.shape != (SIDE, SIDE, 3) or thumb.dtype != np.uint8:
    return None
  return thumb


def settle(bottleneck_dir: str, paths: Sequence[str],
           digests: Sequence[Optional[str]],
           max_pixels: int = image_header.MAX_IMAGE_PIXELS
           ) -> None:
  """After the bottleneck pass: stores each wanted thumbnail it made
  under its content hash in <bottleneck_dir>/thumbnails-<SIDE>/, and
  brings the stored ones of wanted images it did not decode (their
  vectors were cached) into memory for `take`. digests[i]: the content
  hash (cache key) of paths[i], or None. A wanted thumbnail neither made
  nor stored (a cache filled before thumbnails were kept) is made from
  its file now and stored, so only the first warm run reads it. A cache
  that cannot be written only costs the next run a read of the photo."""
  folder = os.path.join(bottleneck_dir, f'thumbnails-{SIDE}')
  with _lock:
    wanted = [(path, digest) for path, digest in zip(paths, digests,
                                                      strict=True)
              if digest and path in _wanted]
    made = dict(_made)
  if not wanted:  # no projector, or nothing hashed: no folder either
    return
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    logging.warning('Thumbnails not kept in %s (%s); the next run reads '
                    'the photos again for them.', folder, e)
  else:
    for path, digest in wanted:
      if path in made and not os.path.exists(_cached(folder, digest)):
        _store(folder, digest, made[path])
  for path, digest in wanted:
    if path not in made:
      thumb = _load(_cached(folder, digest))
      if thumb is None:  # a cache filled before thumbnails were kept
        thumb = _from_file(path, digest, max_pixels, folder)
      if thumb is not None:
        _put(path, thumb)


def _from_file(path: str, digest: str, max_pixels: int, folder: str
               ) -> Optional[np.ndarray]:
  """The thumbnail of the image file `path` (read bounded, header-checked,
  decoded by Pillow at a small JPEG scale, upright), stored in `folder` under `digest` when its bytes
  still have that hash; None when it cannot be made (the projector then
  tries the file itself)."""
  try:
    contents = walk_lib.read_file(path, image_header.max_file_bytes(
        max_pixels))
  except OSError:
    return None
  if image_header.check_bytes(contents, (SIDE, SIDE), max_pixels)[0]:
    return None
  from PIL import Image, ImageOps
  try:
    with Image.open(io.BytesIO(contents)) as image:
      image.draft('RGB', (SIDE * 2, SIDE * 2))  # JPEG: decoded small
      thumb = np.asarray(ImageOps.fit(
          ImageOps.exif_transpose(image).convert('RGB'), (SIDE, SIDE)),
                         np.uint8)
  except Exception:  # noqa: BLE001 Pillow's errors for bad input vary; the projector shows grey
    return None
  if hashlib.sha256(contents).hexdigest() == digest[:64]:
    _store(folder, digest, thumb)
  return thumb


def _store(folder: str, digest: str, thumb: np.ndarray) -> None:
  try:
    atomic.write_bytes(_cached(folder, digest), _npy(thumb))
  except OSError as e:
    logging.warning('Thumbnail not kept in %s (%s).', folder, e)


def _npy(thumb: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, thumb, allow_pickle=False)
  return buffer.getvalue()
