"""Image decoding and resizing, the same at training and at inference.

Contract: `decode_and_resize(contents, (h, w))` takes the encoded bytes of a
JPEG, PNG, GIF (first frame) or BMP file and returns float32 [h, w, 3] in
[0, 1]: grayscale is repeated to 3 channels, alpha is dropped, and the image
is resized to exactly h x w with bilinear interpolation and antialiasing (no
aspect-preserving crop, as retrain.py did). The exported SavedModel's bytes
signature and the label_image tool call this same function, so a photo gets
the same pixels at training and at inference.

Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by the JPEG decoder itself
when the result is still at least the target size: decoding a 12-megapixel
photo at full size costs far more than running the module on it.
"""

from __future__ import annotations

from typing import Tuple

import tensorflow as tf

# The JPEG decoder can scale by 1/2, 1/4 and 1/8 while decoding.
_JPEG_RATIOS = (1, 2, 4, 8)


def _decode_jpeg_scaled(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H', W', 3]: the JPEG decoded at the coarsest scale still >= size."""
  shape = tf.io.extract_jpeg_shape(contents)
  # How many times larger than the target the image is, on its tighter side.
  scale = tf.minimum(shape[0] // size[0], shape[1] // size[1])
  index = tf.add_n([tf.cast(scale >= r, tf.int32) for r in _JPEG_RATIOS[1:]])
  # decode_jpeg needs `ratio` as a constant, hence one branch per ratio.
  return tf.switch_case(index, [
      (lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r))
      for r in _JPEG_RATIOS])


def decode_image(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H', W', 3], H' >= size[0] or the full image; see module doc."""
  return tf.cond(
      tf.io.is_jpeg(contents),
      lambda: _decode_jpeg_scaled(contents, size),
      lambda: tf.ensure_shape(
          tf.io.decode_image(contents, channels=3, expand_animations=False,
                             dtype=tf.uint8), [None, None, 3]))


def decode_and_resize(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> float32 [h, w, 3] in [0, 1]."""
  image = decode_image(contents, size)
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.resize(image, size, method='bilinear', antialias=True)
  return tf.clip_by_value(image, 0.0, 1.0)


def load_image(path: str, size: Tuple[int, int]) -> tf.Tensor:
  """Reads and decodes one file eagerly; raises on an unreadable image."""
  return decode_and_resize(tf.io.read_file(path), size)
