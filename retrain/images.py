"""Image decoding and resizing, the same at training and at inference.

Contract: `decode_and_resize(contents, (h, w))` takes the encoded bytes of a
JPEG, PNG, GIF (first frame), BMP or WebP file and returns float32 [h, w, 3] in
[0, 1]: grayscale is repeated to 3 channels, alpha is dropped, and the image
is resized to exactly h x w (no aspect-preserving crop, as retrain.py did):
area averaging when shrinking, antialiased bilinear otherwise. The exported SavedModel's bytes
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
`retrain.errors.ImageError` with a reason a user can act on (`decode_failure_reason`).
"""

from __future__ import annotations

import io
import os
from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

from retrain import image_header
from retrain.common import walk as walk_lib
from retrain.errors import ImageError

# The files taken for images, in folders (training and label_image alike),
# matched case-insensitively against the name's ending: every format
# `load_image` decodes (TIFF through Pillow).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp', '.tif',
                    '.tiff')


def is_image_file(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS
                  ) -> bool:
  """True for a visible file whose name ends in one of `extensions` (any
  case)."""
  return walk_lib.is_image_file(name, extensions)


# Pixels decoded at once by all threads of the eager path (label_image's
# pool, the bottleneck step's second chance): one largest allowed image,
# or several smaller ones, never one largest image per thread.
_BUDGET = image_header.DecodeBudget(image_header.MAX_IMAGE_PIXELS)

_JPEG_RATIOS = image_header.JPEG_RATIOS


def _jpeg_scale_index(shape: tf.Tensor, size) -> tf.Tensor:
  """int32 index into _JPEG_RATIOS: the coarsest scale at which a JPEG
  whose stored sides are `shape` [2] still has both sides >= size."""
  # How many times larger than the target the image is, on its tighter side.
  scale = tf.minimum(shape[0] // size[0], shape[1] // size[1])
  return tf.add_n([tf.cast(scale >= r, tf.int32) for r in _JPEG_RATIOS[1:]])


def _decode_jpeg_at(contents: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
  """uint8 [H', W', 3]: the JPEG decoded at scale 1 / _JPEG_RATIOS[index]."""
  # decode_jpeg needs `ratio` as a constant, hence one branch per ratio.
  return tf.switch_case(index, [
      (lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r))
      for r in _JPEG_RATIOS])


def _decode_jpeg_scaled(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H', W', 3]: the JPEG decoded at the coarsest scale still >= size."""
  return _decode_jpeg_at(contents, _jpeg_scale_index(
      tf.io.extract_jpeg_shape(contents), size))


# EXIF: cameras write the APP1 "Exif" segment first or right after the
# JFIF (APP0) header, its first IFD right after the TIFF header (offset 8),
# and the orientation tag among the first entries of that IFD, all within
# the first few hundred bytes. The parse below reads a fixed-size head and
# indexes it with two constant gathers, with no loop and no branch: in a
# tf.data map every op costs a few microseconds per image and a tf.cond or
# tf.while_loop far more, so a segment-by-segment walk cost 15-25% more CPU
# per image than the JPEG decoding itself (bench/bench_decode.py).
_EXIF_SEARCH = 512  # where the APP1 segment may start
_EXIF_MAX_ENTRIES = 16  # IFD entries looked at
_ORIENTATION_TAG = 0x0112
# Relative to the TIFF header: byte order (2 bytes), first-IFD offset (4),
# entry count (2), then per entry the tag (2) and the first 2 value bytes.
_TIFF_READ = np.array([0, 1, 4, 5, 6, 7, 8, 9] + [
    10 + 12 * e + k for e in range(_EXIF_MAX_ENTRIES) for k in (0, 1, 8, 9)],
                      np.int32)
_EXIF_HEAD = _EXIF_SEARCH + 10 + int(_TIFF_READ[-1]) + 1
# APP1 marker, any 2-byte length, 'Exif\0\0'; mask 0 where any byte goes.
_APP1_EXPECTED = np.array([0xFF, 0xE1, 0, 0] + [ord(c) for c in 'Exif'] +
                          [0, 0], np.int32)
_APP1_MASK = np.array([1, 1, 0, 0, 1, 1, 1, 1, 1, 1], np.int32)
_APP1_WINDOWS = (np.arange(_EXIF_SEARCH)[:, None] +
                 np.arange(10)[None, :]).astype(np.int32)


def jpeg_orientation(contents: tf.Tensor) -> tf.Tensor:
  """int32 scalar in 1..8: the EXIF orientation of a JPEG, 1 when absent."""
  # Exactly _EXIF_HEAD bytes, zero-padded, so every index below is valid.
  head = tf.strings.substr(
      tf.strings.join([tf.strings.substr(contents, 0, _EXIF_HEAD),
                       b'\x00' * _EXIF_HEAD]), 0, _EXIF_HEAD)
  head = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int32)
  windows = tf.gather(head, _APP1_WINDOWS) * _APP1_MASK
  hits = tf.cast(tf.reduce_all(tf.equal(windows, _APP1_EXPECTED), axis=1),
                 tf.int32)
  segment = tf.cast(tf.argmax(hits), tf.int32)  # the first hit, or 0
  # The TIFF header starts after the 10 bytes matched.
  b = tf.reshape(tf.gather(head, segment + 10 + _TIFF_READ), [-1, 2])
  little = tf.equal(b[0, 0], ord('I'))  # 'II' little-endian, 'MM' big
  u16 = tf.reduce_sum(b * tf.where(little, [1, 256], [256, 1]), axis=1)
  # u16: byte order, IFD offset (two halves), count, (tag, value) pairs.
  ifd_at_8 = tf.equal(tf.where(little, u16[1], u16[2]), 8) & tf.equal(
      u16[1] + u16[2], 8)
  pairs = tf.reshape(u16[4:], [_EXIF_MAX_ENTRIES, 2])
  match = (tf.equal(pairs[:, 0], _ORIENTATION_TAG) &
           (tf.range(_EXIF_MAX_ENTRIES) < u16[3]))
  value = tf.reduce_max(tf.where(match, pairs[:, 1], 0))
  valid = (tf.gather(hits, segment) > 0) & ifd_at_8 & (value >= 1) & (
      value <= 8)
  return tf.where(valid, value, 1)


# Orientation o as upright = flip(transpose(stored)): row o of _PERMS is the
# transpose permutation, row o of _STRIDES the row and column strides (-1
# flips). Row 0 is unused.
_PERMS = np.array([[0, 1, 2]] * 5 + [[1, 0, 2]] * 4, np.int32)
_STRIDES = np.array([[1, 1, 1], [1, 1, 1], [1, -1, 1], [-1, -1, 1],
                     [-1, 1, 1], [1, 1, 1], [1, -1, 1], [-1, -1, 1],
                     [-1, 1, 1]], np.int32)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
  """[H, W, C] as stored -> upright, for EXIF orientation 1..8.

  Branch-free: a transpose and a full-range strided slice whose
  permutation and strides come from tables; for orientation 1 both are
  identities, which TensorFlow passes through without copying.
  """
  image = tf.transpose(image, tf.gather(_PERMS, orientation))
  return tf.strided_slice(image, [0, 0, 0], [0, 0, 0],
                          tf.gather(_STRIDES, orientation), begin_mask=7,
                          end_mask=7)


def _stored_size(size, orientation: tf.Tensor):
  """The target (h, w) in the JPEG's stored orientation: orientations 5-8
  store the picture turned by 90 degrees, so the sides swap."""
  turned = orientation >= 5
  return (tf.where(turned, size[1], size[0]),
          tf.where(turned, size[0], size[1]))


def _decode_jpeg_upright(contents: tf.Tensor,
                         size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H', W', 3]: the JPEG decoded at reduced scale, EXIF applied."""
  orientation = jpeg_orientation(contents)
  return tf.ensure_shape(
      apply_orientation(_decode_jpeg_scaled(
          contents, _stored_size(size, orientation)), orientation),
      [None, None, 3])


def shrink_large(image: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [H/k, W/k, 3], box-averaged by the largest
  integer k that keeps both sides at least twice the target (k = 1, a
  plain copy, for images smaller than that).

  For formats without reduced-scale decoding (PNG, WebP, TIFF...): the float
  copy that the final resize makes would be 4 bytes per channel at full
  size, about 290 MB for a 6000x4000 photo; area resizing reads the uint8
  pixels directly, so the peak stays near the decoded image itself.
  """
  shape = tf.shape(image)
  k = tf.maximum(1, tf.minimum(shape[0] // (2 * size[0]),
                               shape[1] // (2 * size[1])))
  small = tf.image.resize(image, [shape[0] // k, shape[1] // k],
                          method='area')
  return tf.cast(tf.round(tf.clip_by_value(small, 0.0, 255.0)), tf.uint8)


def decode_image(contents: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H', W', 3], H' >= size[0] or the full image; see module doc."""
  return tf.cond(
      tf.io.is_jpeg(contents),
      lambda: _decode_jpeg_upright(contents, size),
      lambda: shrink_large(_decode_other(contents), size))


def _decode_other(contents: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3], a non-JPEG image at full size (first GIF frame)."""
  return tf.ensure_shape(tf.io.decode_image(
      contents, channels=3, expand_animations=False, dtype=tf.uint8),
                         [None, None, 3])


def resize_pixels(image: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 [h, w, 3] in [0, 1]; every decoder ends here.

  Shrinking on both sides uses area (box-filter) averaging: as free of
  aliasing as antialiased bilinear, and about 2.5 times cheaper, which
  matters because decoding shares the CPU with the module (on 2 cores,
  antialiased bilinear made decoding a third of the bottleneck phase).
  Anything else (enlarging a small image, or one side only) uses
  antialiased bilinear.
  """
  image = tf.image.convert_image_dtype(image, tf.float32)
  shape = tf.shape(image)
  shrinking = tf.logical_and(shape[0] >= size[0], shape[1] >= size[1])
  image = tf.cond(
      shrinking,
      lambda: tf.image.resize(image, size, method='area'),
      lambda: tf.image.resize(image, size, method='bilinear', antialias=True))
  if all(isinstance(side, int) for side in size):
    image = tf.ensure_shape(image, [size[0], size[1], 3])
  return tf.clip_by_value(image, 0.0, 1.0)


def decode_and_resize(contents: tf.Tensor, size: Tuple[int, int],
                      box=None) -> tf.Tensor:
  """Encoded image bytes (scalar string) -> float32 [h, w, 3] in [0, 1].

  Args:
    contents: scalar string, the encoded file.
    size: (h, w) of the result.
    box: None for the whole image, else float32 [4] (top, left, bottom,
      right) in [0, 1] of the upright image: the image is cropped to it
      after decoding and orientation, before the resize (--crop_to_boxes).
  """
  if box is None:
    return resize_pixels(decode_image(contents, size), size)
  box = tf.convert_to_tensor(box, tf.float32)
  # Decode at the coarsest scale where the crop still has the target size.
  sides = tf.maximum(box[2:] - box[:2], 1e-6)
  needed = tf.cast(tf.math.ceil(tf.constant(size, tf.float32) / sides),
                   tf.int32)
  return resize_pixels(crop_to_box(decode_image(contents, (needed[0],
                                                           needed[1])), box),
                       size)


def crop_to_box(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
  """[H, W, C] -> the pixels covered by box (top, left, bottom, right) in
  [0, 1], at least one pixel on each side."""
  shape = tf.shape(image)
  hw = tf.cast(tf.stack([shape[0], shape[1], shape[0], shape[1]]),
               tf.float32)
  edges = box * hw
  top = tf.cast(tf.floor(edges[0]), tf.int32)
  left = tf.cast(tf.floor(edges[1]), tf.int32)
  top = tf.clip_by_value(top, 0, shape[0] - 1)
  left = tf.clip_by_value(left, 0, shape[1] - 1)
  bottom = tf.clip_by_value(tf.cast(tf.math.ceil(edges[2]), tf.int32),
                            top + 1, shape[0])
  right = tf.clip_by_value(tf.cast(tf.math.ceil(edges[3]), tf.int32),
                           left + 1, shape[1])
  return image[top:bottom, left:right]


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
  from PIL import (
    Image,
    ImageOps,
  )
  with Image.open(io.BytesIO(contents)) as image:
    if image.format == 'JPEG':
      height, width = size
      if image.getexif().get(_ORIENTATION_TAG, 1) >= 5:
        height, width = width, height
      image.draft('RGB', (width, height))
    upright = ImageOps.exif_transpose(image)
    return _pillow_to_rgb(upright)


def decode_bytes(contents: bytes, size: Tuple[int, int],
                 name: str = 'image',
                 max_pixels: int = image_header.MAX_IMAGE_PIXELS,
                 box=None) -> tf.Tensor:
  """Eager: encoded bytes -> float32 [h, w, 3] in [0, 1], or ImageError.

  The header is checked first (retrain.image_header): an image whose
  decoded size would exceed `max_pixels`, or whose data ends early, is
  refused without decoding. Then TensorFlow's decoder (the one the
  bottleneck pipeline and the export use), Pillow only when it fails.
  `box` as for decode_and_resize.
  """
  reason, header = image_header.check_bytes(contents, size, max_pixels)
  if reason:
    raise ImageError(name, reason)
  pixels = image_header.decoded_pixels(header, size) if header else 0
  with _BUDGET.hold(pixels):
    return _decode_bytes(contents, size, name, box)


def _decode_bytes(contents: bytes, size: Tuple[int, int],
                  name: str, box=None) -> tf.Tensor:
  try:
    return decode_and_resize(tf.constant(contents), size, box)
  except tf.errors.OpError:
    pass
  try:
    pixels = decode_with_pillow(contents, size)
  except Exception as e:
    # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError
    # and more for bad input; all mean the same here.
    raise ImageError(name, decode_failure_reason(contents, e)) from e
  if box is not None:
    pixels = crop_to_box(tf.constant(pixels), tf.constant(box, tf.float32))
  return resize_pixels(shrink_large(tf.constant(pixels), size), size)


def load_image(path: str, size: Tuple[int, int],
               max_pixels: int = image_header.MAX_IMAGE_PIXELS,
               box=None) -> tf.Tensor:
  """Reads and decodes one file eagerly: float32 [h, w, 3] in [0, 1].

  Only regular files are opened (a FIFO would block), files of at most
  image_header.max_file_bytes(max_pixels) bytes read, once, and only
  images within `max_pixels` decoded (see decode_bytes). `box`: None for
  the whole image, else its crop (see decode_and_resize).

  Raises:
    ImageError: the file cannot be read or is not a usable image; its
      `reason` says why.
  """
  try:
    contents = walk_lib.read_file(path,
                                  image_header.max_file_bytes(max_pixels))
  except OSError as e:
    raise ImageError(path, os_error_reason(path, e)) from e
  return decode_bytes(contents, size, path, max_pixels, box=box)


# --- Why a file is not a usable image -------------------------------------

# Leading bytes of the image formats we know; used only to word a reason.
_SIGNATURES = (
    (b'\xff\xd8\xff', 'JPEG'),
    (b'\x89PNG\r\n\x1a\n', 'PNG'),
    (b'GIF87a', 'GIF'),
    (b'GIF89a', 'GIF'),
    (b'BM', 'BMP'),
    (b'II*\x00', 'TIFF'),
    (b'MM\x00*', 'TIFF'),
)


def sniff_format(head: bytes) -> str:
  """'JPEG', 'PNG', 'GIF', 'BMP', 'TIFF', 'WebP' or '' from a file's first bytes."""
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return 'WebP'
  for signature, name in _SIGNATURES:
    if head.startswith(signature):
      return name
  return ''


def _looks_like_text(head: bytes) -> bool:
  if not head or b'\x00' in head:
    return False
  try:
    head.decode('utf-8')
  except UnicodeDecodeError as e:
    # A multi-byte character cut at the end of the sample is still text.
    if e.start < len(head) - 3:
      return False
  return True


def _first_line(error: BaseException) -> str:
  message = getattr(error, 'message', None) or str(error)
  lines = [line for line in message.strip().splitlines() if line.strip()]
  # TensorFlow prefixes '{{function_node ...}} '; the useful part follows.
  text = lines[0] if lines else type(error).__name__
  return text.split('}} ')[-1].strip()


def os_error_reason(path: str, error: OSError) -> str:
  """Why a file could not be opened: a broken link is named as one."""
  if isinstance(error, walk_lib.FileRefused):
    return error.reason
  if os.path.islink(path) and not os.path.exists(path):
    return (f'broken symbolic link (points to {os.readlink(path)!r}, which '
            'does not exist)')
  return f'cannot be read: {error.strerror or error}'


def decode_failure_reason(contents: bytes, error: BaseException) -> str:
  """Why bytes that neither decoder accepted are not an image.

  Args:
    contents: the file's bytes.
    error: the last decoder's exception (its first line is quoted).
  """
  if not contents:
    return 'empty file (0 bytes)'
  head = contents[:512]
  kind = sniff_format(head)
  if kind:
    return f'truncated or corrupt {kind}: {_first_line(error)}'
  if _looks_like_text(head):
    stripped = head.lstrip().lower()
    what = ('HTML' if stripped.startswith((b'<!doctype html', b'<html', b'<'))
            else 'text')
    return (f'{what}, not an image (a web page or text saved with an image '
            'extension)')
  return ('not an image in any known format (first bytes '
          f'{contents[:8].hex(" ")}); accepted: JPEG, PNG, GIF, BMP, WebP, '
          'TIFF')
