"""An image's declared size, read from its header before any decoding.

A few kilobytes can declare a picture of gigapixels: a JPEG whose frame
header says 65000 x 65000, a 1-bit PNG of 20000 x 20000 (48 KB on disk,
1.2 GB decoded to RGB). Decoders allocate what the header declares, and
libjpeg fills data that ends early with grey instead of failing. So before
an image is decoded, `check_image` reads its header and refuses it when
the decoded pixels would exceed the limit (`--max_image_pixels`), or when
its data ends early (a JPEG without its end-of-image marker after the
scan, a PNG without its IEND chunk).

Sizes: JPEG (SOF), PNG (IHDR), GIF (logical screen), BMP and WebP (VP8,
VP8L, VP8X) are parsed here; anything else through Pillow's lazy open,
which reads only the header. A JPEG larger than the limit is still used
when decoding at the reduced scale that `retrain.images` will use (libjpeg
DCT scaling by 1/2, 1/4 or 1/8, chosen from the target size) stays within
it: a 100-megapixel photo decoded at 1/8 is 1.6 megapixels.

`DecodeBudget` bounds the pixels decoded at once by several threads
(label_image's pool), so the threads do not multiply the worst case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import threading
from typing import BinaryIO, Iterator, Optional, Tuple

# JPEG frame headers: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
        0xCE, 0xCF}
# The JPEG decoder can scale by 1/2, 1/4 and 1/8 while decoding (shared with
# retrain.images, whose decoder must pick the same ratio).
JPEG_RATIOS = (1, 2, 4, 8)
_SCAN_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Header:
  """What an image file declares.

  Attributes:
    format: 'JPEG', 'PNG', 'GIF', 'BMP', 'WebP' or Pillow's format name.
    width, height: declared size in pixels.
    truncated: the data ends before the image does (JPEG and PNG only).
  """
  format: str
  width: int
  height: int
  truncated: bool = False


def _be16(b: bytes, i: int) -> int:
  return (b[i] << 8) | b[i + 1]


def _le(b: bytes, i: int, n: int) -> int:
  return int.from_bytes(b[i:i + n], 'little')


def _find_after(f: BinaryIO, start: int, needle: bytes) -> bool:
  """Whether `needle` occurs in f at or after offset `start`."""
  f.seek(start)
  tail = b''
  while True:
    block = f.read(_SCAN_BLOCK)
    if not block:
      return False
    if needle in tail + block:
      return True
    tail = block[-(len(needle) - 1):]


def _jpeg(f: BinaryIO) -> Optional[Header]:
  pos, size = 2, None
  while True:
    f.seek(pos)
    marker = f.read(2)
    if len(marker) < 2:
      break
    if marker[0] != 0xFF:
      return None  # Not a marker where one must be: corrupt.
    kind = marker[1]
    if kind == 0xFF:  # fill byte
      pos += 1
      continue
    if kind == 0xD8 or kind == 0x01 or 0xD0 <= kind <= 0xD7:
      pos += 2
      continue
    if kind == 0xD9:
      break
    head = f.read(7)
    if len(head) < 2:
      break
    length = _be16(head, 0)
    if kind in _SOF and len(head) >= 7 and size is None:
      size = (_be16(head, 5), _be16(head, 3))  # (width, height)
    if kind == 0xDA:  # start of scan: the entropy-coded data follows
      if size is None:
        return None
      # The scan data cannot contain FF D9 (an FF in it is stuffed as
      # FF 00), so the end-of-image marker after it proves the data whole.
      f.seek(-2, os.SEEK_END)
      whole = f.read(2) == b'\xff\xd9' or _find_after(f, pos, b'\xff\xd9')
      return Header('JPEG', size[0], size[1], truncated=not whole)
    pos += 2 + length
  if size is None:
    return None
  return Header('JPEG', size[0], size[1], truncated=True)


def _png(f: BinaryIO, head: bytes) -> Optional[Header]:
  if len(head) < 24 or head[12:16] != b'IHDR':
    return None
  width, height = int.from_bytes(head[16:20], 'big'), int.from_bytes(
      head[20:24], 'big')
  f.seek(0, os.SEEK_END)
  end = f.tell()
  f.seek(max(0, end - 12))
  whole = b'IEND' in f.read(12) or _find_after(f, 8, b'IEND')
  return Header('PNG', width, height, truncated=not whole)


def _webp(head: bytes) -> Optional[Header]:
  chunk = head[12:16]
  if chunk == b'VP8 ' and len(head) >= 30:
    return Header('WebP', _le(head, 26, 2) & 0x3FFF, _le(head, 28, 2) & 0x3FFF)
  if chunk == b'VP8L' and len(head) >= 25:
    bits = _le(head, 21, 4)
    return Header('WebP', 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
  if chunk == b'VP8X' and len(head) >= 30:
    return Header('WebP', 1 + _le(head, 24, 3), 1 + _le(head, 27, 3))
  return None


def read_header(f: BinaryIO) -> Optional[Header]:
  """The declared size of the image in seekable binary file `f`, or None
  when it cannot be told (not an image; the decoder will say why)."""
  f.seek(0)
  head = f.read(32)
  if head[:3] == b'\xff\xd8\xff':
    return _jpeg(f)
  if head[:8] == b'\x89PNG\r\n\x1a\n':
    return _png(f, head)
  if head[:6] in (b'GIF87a', b'GIF89a') and len(head) >= 10:
    return Header('GIF', _le(head, 6, 2), _le(head, 8, 2))
  if head[:2] == b'BM' and len(head) >= 26:
    if _le(head, 14, 4) == 12:  # OS/2 BITMAPCOREHEADER
      return Header('BMP', _le(head, 18, 2), _le(head, 20, 2))
    height = int.from_bytes(head[22:26], 'little', signed=True)
    return Header('BMP', _le(head, 18, 4), abs(height))
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return _webp(head)
  try:
    from PIL import Image
    f.seek(0)
    with Image.open(f) as image:  # lazy: reads the header only
      return Header(image.format or '?', image.width, image.height)
  except Exception:  # noqa: BLE001 Pillow raises many types for non-images
    return None  # Pillow raises many types for non-images.


def jpeg_ratio(width: int, height: int, size: Tuple[int, int]) -> int:
  """The DCT scale retrain.images decodes a JPEG at, for target (h, w).

  The coarsest of 1, 2, 4, 8 that keeps both sides at least the target's;
  orientation (EXIF) may swap the target's sides, so the smaller of the two
  choices is taken (more pixels: the safe side for a limit).
  """
  def ratio(th, tw):
    scale = min(height // max(1, th), width // max(1, tw))
    return max(r for r in JPEG_RATIOS if scale >= r or r == 1)
  return min(ratio(size[0], size[1]), ratio(size[1], size[0]))


def decoded_pixels(header: Header, size: Tuple[int, int]) -> int:
  """Pixels the decoder will allocate for this image at target size (h, w)."""
  if header.format == 'JPEG':
    r = jpeg_ratio(header.width, header.height, size)
    return -(-header.width // r) * -(-header.height // r)
  return header.width * header.height


def problem(header: Optional[Header], size: Tuple[int, int],
            max_pixels: int) -> Optional[str]:
  """Why an image of this header must not be decoded, or None."""
  if header is None:
    return None
  if header.truncated:
    return (f'truncated or corrupt {header.format}: the data ends before '
            f'the image does (declared {header.width}x{header.height}); it '
            'would be padded with grey, so it is not used')
  if header.width <= 0 or header.height <= 0:
    return (f'corrupt {header.format}: declares a size of '
            f'{header.width}x{header.height}')
  pixels = decoded_pixels(header, size)
  if pixels > max_pixels:
    scaled = (' even at 1/8 scale'
              if header.format == 'JPEG' else '')
    return (f'{header.format} declares {header.width}x{header.height} pixels '
            f'({header.width * header.height / 1e6:.0f} megapixels), over the '
            f'limit of {max_pixels / 1e6:g} megapixels{scaled}; pass '
            '--max_image_pixels to raise the limit if the image is genuine')
  return None


def check_file(path: str, size: Tuple[int, int],
               max_pixels: int) -> Tuple[Optional[str], Optional[Header]]:
  """(reason the file must not be decoded or None, its header or None).

  Reads only the header (and, for JPEG and PNG, looks for the end marker).
  OSError propagates (the caller words it).
  """
  with open(path, 'rb') as f:
    header = read_header(f)
  return problem(header, size, max_pixels), header


def check_bytes(contents: bytes, size: Tuple[int, int],
                max_pixels: int) -> Tuple[Optional[str], Optional[Header]]:
  """check_file for bytes already in memory."""
  header = read_header(io.BytesIO(contents))
  return problem(header, size, max_pixels), header


# Images whose decoded size would exceed this many pixels are refused (the
# default of Config.max_image_pixels, which reads it from here): about
# 50 megapixels, 150 MB of RGB, a 7000x7000 photo.
MAX_IMAGE_PIXELS = 50_000_000


def max_file_bytes(max_pixels: int) -> int:
  """The largest image file read at all, for a limit of `max_pixels`: 4
  bytes per pixel (an uncompressed RGBA image) plus 1 MiB of headers and
  metadata; 201 MiB at the default. Larger files are refused from their
  size, before any byte is read."""
  return 4 * max(1, int(max_pixels)) + (1 << 20)


class DecodeBudget:
  """At most `limit` decoded pixels in flight across threads.

  `with budget.hold(n):` waits until n pixels fit (an image larger than
  the whole budget waits until it is alone), so N decoding threads never
  hold N worst-case images at once.
  """

  def __init__(self, limit: int):
    self.limit = max(1, int(limit))
    self._used = 0
    self._cond = threading.Condition()

  @contextlib.contextmanager
  def hold(self, pixels: int) -> Iterator[None]:
    n = max(0, int(pixels))
    with self._cond:
      self._cond.wait_for(lambda: self._used == 0 or
                          self._used + n <= self.limit)
      self._used += n
    try:
      yield
    finally:
      with self._cond:
        self._used -= n
        self._cond.notify_all()
