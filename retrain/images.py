"""Image decoding and resizing, the same at training and at inference.

Contract: `decode_and_resize(contents, (h, w))` takes the encoded bytes of a
JPEG, PNG, GIF (first frame), BMP or WebP file and returns float32 [h, w, 3] in
[0, 1]: grayscale is repeated to 3 channels, alpha is dropped, and the image
is resized to exactly h x w with bilinear interpolation and antialiasing (no
aspect-preserving crop, as retrain.py did). The exported SavedModel's bytes
signature and the label_image tool call this same function, so a photo gets
the same pixels at training and at inference.

Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by the JPEG decoder itself
when the result is still at least the target size: decoding a 12-megapixel
photo at full size costs far more than running the module on it.

A JPEG's EXIF orientation (how the camera was held) is applied, in graph
ops, so a portrait photo is upright at training, in the exported bytes
signature and in label_image alike. WebP is decoded by TensorFlow too.

`load_image(path, size)` (eager, Python) first tries the same graph
decoder, and only for files TensorFlow cannot decode (TIFF, odd BMP or
JPEG variants) falls back to Pillow, which produces uint8 RGB pixels that
then go through the same resize. Anything neither can decode raises
`retrain.errors.ImageError` with a reason from `retrain.unusable`.
"""

from __future__ import annotations

import io
from typing import Tuple

import numpy as np
import tensorflow as tf

from retrain import unusable
from retrain.errors import ImageError

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


# EXIF: the APP1 segment is among the first few of a JPEG, and the
# orientation tag among the first entries of its first IFD; these bounds
# keep the parse to a handful of small ops per image.
_EXIF_MAX_SEGMENTS = 16
_EXIF_MAX_ENTRIES = 64
_ORIENTATION_TAG = 0x0112


def _bytes_at(contents: tf.Tensor, pos, n: int) -> tf.Tensor:
  """int32 [n]: bytes pos .. pos+n-1 of contents, zeros past its end."""
  pos = tf.clip_by_value(pos, 0, tf.strings.length(contents))
  values = tf.io.decode_raw(tf.strings.substr(contents, pos, n), tf.uint8)
  values = tf.cast(values, tf.int32)
  return tf.pad(values, [[0, n - tf.shape(values)[0]]])


def jpeg_orientation(contents: tf.Tensor) -> tf.Tensor:
  """int32 scalar in 1..8: the EXIF orientation of a JPEG, 1 when absent."""

  def keep_looking(i, pos, tiff):
    return (i < _EXIF_MAX_SEGMENTS) & (tiff < 0) & (pos >= 0)

  def next_segment(i, pos, tiff):
    del tiff
    b = _bytes_at(contents, pos, 4)  # 0xFF, marker, length (big-endian)
    marker = b[1]
    is_marker = tf.equal(b[0], 0xFF)
    exif = tf.equal(tf.strings.substr(
        contents, tf.clip_by_value(pos + 4, 0, tf.strings.length(contents)),
        6), b'Exif\x00\x00')
    found = is_marker & tf.equal(marker, 0xE1) & exif
    # APPn and COM segments come before the image data; anything else
    # means there is no EXIF block.
    skippable = is_marker & (((marker >= 0xE0) & (marker <= 0xEF)) |
                             tf.equal(marker, 0xFE))
    next_pos = tf.where(skippable, pos + 2 + b[2] * 256 + b[3], -1)
    return (i + 1, tf.where(found, pos, next_pos),
            tf.where(found, pos + 10, -1))

  _, _, tiff = tf.while_loop(keep_looking, next_segment,
                             (tf.constant(0), tf.constant(2), tf.constant(-1)))

  def read_orientation():
    little = tf.equal(_bytes_at(contents, tiff, 2)[0], ord('I'))

    def u16(b):
      return tf.where(little, b[..., 0] + 256 * b[..., 1],
                      256 * b[..., 0] + b[..., 1])

    b = _bytes_at(contents, tiff + 4, 4)
    first_ifd = tf.where(little, u16(b[0:2]) + 65536 * u16(b[2:4]),
                         65536 * u16(b[0:2]) + u16(b[2:4]))
    ifd = tiff + first_ifd
    count = u16(_bytes_at(contents, ifd, 2))
    entries = tf.reshape(_bytes_at(contents, ifd + 2, 12 * _EXIF_MAX_ENTRIES),
                         [_EXIF_MAX_ENTRIES, 12])  # tag, type, count, value
    match = (tf.equal(u16(entries[:, 0:2]), _ORIENTATION_TAG) &
             (tf.range(_EXIF_MAX_ENTRIES) < count))
    value = tf.reduce_max(tf.where(match, u16(entries[:, 8:10]), 0))
    return tf.where((value >= 1) & (value <= 8), value, 1)

  return tf.cond(tiff >= 0, read_orientation, lambda: tf.constant(1))


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
  """[H, W, C] as stored -> upright, for EXIF orientation 1..8."""
  transpose = lambda x: tf.transpose(x, [1, 0, 2])  # noqa: E731
  return tf.switch_case(orientation, [
      lambda: image,  # 0: not an EXIF value
      lambda: image,  # 1: upright
      lambda: tf.reverse(image, [1]),  # 2: mirrored
      lambda: tf.reverse(image, [0, 1]),  # 3: upside down
      lambda: tf.reverse(image, [0]),  # 4: mirrored upside down
      lambda: transpose(image),  # 5: mirrored, rotated
      lambda: tf.image.rot90(image, 3),  # 6: turned 90 degrees clockwise
      lambda: tf.reverse(transpose(image), [0, 1]),  # 7
      lambda: tf.image.rot90(image, 1),  # 8: 90 degrees anticlockwise
  ])


def _decode_jpeg_upright(contents: tf.Tensor,
                         size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H', W', 3]: the JPEG decoded at reduced scale, EXIF applied."""
  orientation = jpeg_orientation(contents)
  # Orientations 5-8 store the picture turned by 90 degrees: compare the
  # stored sides with the target's swapped sides when choosing the scale.
  turned = orientation >= 5
  stored = (tf.where(turned, size[1], size[0]),
            tf.where(turned, size[0], size[1]))
  return tf.ensure_shape(
      apply_orientation(_decode_jpeg_scaled(contents, stored), orientation),
      [None, None, 3])


def decode_image(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H', W', 3], H' >= size[0] or the full image; see module doc."""
  return tf.cond(
      tf.io.is_jpeg(contents),
      lambda: _decode_jpeg_upright(contents, size),
      lambda: tf.ensure_shape(
          tf.io.decode_image(contents, channels=3, expand_animations=False,
                             dtype=tf.uint8), [None, None, 3]))


def resize_pixels(image: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 [h, w, 3] in [0, 1]; every decoder ends here."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.resize(image, size, method='bilinear', antialias=True)
  return tf.clip_by_value(image, 0.0, 1.0)


def decode_and_resize(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> float32 [h, w, 3] in [0, 1]."""
  return resize_pixels(decode_image(contents, size), size)


def _pillow_to_rgb(image) -> np.ndarray:
  """uint8 [H, W, 3] from a Pillow image of any mode, alpha dropped."""
  if image.mode.startswith('I'):
    # 16-bit grayscale (PNG, TIFF): keep the high byte, as libpng's
    # 8-bit reduction does in the TensorFlow path.
    pixels = np.asarray(image).astype(np.int64)
    pixels = (np.clip(pixels, 0, 65535) >> 8).astype(np.uint8)
  elif image.mode == 'F':
    pixels = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
  else:
    # Like TensorFlow's channels=3: alpha (RGBA, LA, PA, palette
    # transparency) is discarded, not blended, and palettes are expanded.
    pixels = np.asarray(image.convert('RGB'))
  if pixels.ndim == 2:
    pixels = np.repeat(pixels[:, :, None], 3, axis=2)
  return np.ascontiguousarray(pixels[:, :, :3])


def decode_with_pillow(contents: bytes, size: Tuple[int, int]) -> np.ndarray:
  """uint8 [H', W', 3] upright RGB via Pillow; raises Pillow's errors.

  The fallback for files TensorFlow cannot decode. First frame of animated
  images; EXIF orientation applied; JPEGs decoded at the coarsest scale
  still >= size (Pillow's draft mode), like the TensorFlow path. Pillow's
  decompression-bomb limit (about 179 megapixels) turns absurd sizes into
  an error instead of exhausting memory.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(contents)) as image:
    if image.format == 'JPEG':
      height, width = size
      if image.getexif().get(_ORIENTATION_TAG, 1) >= 5:
        height, width = width, height
      image.draft('RGB', (width, height))
    upright = ImageOps.exif_transpose(image)
    return _pillow_to_rgb(upright)


def decode_bytes(contents: bytes, size: Tuple[int, int],
                 name: str = 'image') -> tf.Tensor:
  """Eager: encoded bytes -> float32 [h, w, 3] in [0, 1], or ImageError.

  TensorFlow's decoder (the one the bottleneck pipeline and the export use)
  first, Pillow only when it fails.
  """
  try:
    return decode_and_resize(tf.constant(contents), size)
  except tf.errors.OpError:
    pass
  try:
    pixels = decode_with_pillow(contents, size)
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError
    # and more for bad input; all mean the same here.
    raise ImageError(name, unusable.decode_failure_reason(contents, e)) from e
  return resize_pixels(tf.constant(pixels), size)


def load_image(path: str, size: Tuple[int, int]) -> tf.Tensor:
  """Reads and decodes one file eagerly: float32 [h, w, 3] in [0, 1].

  Raises:
    ImageError: the file cannot be read or is not a usable image; its
      `reason` says why.
  """
  try:
    with open(path, 'rb') as f:
      contents = f.read()
  except OSError as e:
    raise ImageError(path, unusable.os_error_reason(path, e)) from e
  return decode_bytes(contents, size, path)
