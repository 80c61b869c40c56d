"""A folder of real-world image files: odd formats, broken files and clutter.

`make_messy_corpus(root)` writes two classes, `red` and `blue`, with a few
clean JPEGs each plus one file of every awkward kind, all made with Pillow,
and returns {relative path: expected outcome}. The outcome is USABLE,
IGNORED (not an image file; discovery never lists it) or a reason fragment
for an unusable file, which the report must contain.
"""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np

from tests.conftest import write_image

USABLE = 'usable'
IGNORED = 'ignored'
RED = (220, 30, 30)
BLUE = (20, 40, 220)


def _solid(rgb, size=(40, 40), noise=8, seed=0):
  from PIL import Image
  rng = np.random.default_rng(seed)
  pixels = np.clip(np.array(rgb, np.float32) + rng.normal(0, noise, size + (3,)),
                   0, 255).astype(np.uint8)
  return Image.fromarray(pixels)


def _encode(image, fmt, **kw) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kw)
  return buffer.getvalue()


def quadrants(size=(40, 60)):
  """uint8 [h, w, 3] with four distinct quadrants (to see rotations)."""
  h, w = size
  pixels = np.zeros((h, w, 3), np.uint8)
  pixels[:h // 2, :w // 2] = (250, 0, 0)
  pixels[:h // 2, w // 2:] = (0, 250, 0)
  pixels[h // 2:, :w // 2] = (0, 0, 250)
  pixels[h // 2:, w // 2:] = (250, 250, 250)
  return pixels


def jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
  from PIL import Image
  image = Image.fromarray(pixels)
  exif = image.getexif()
  exif[0x0112] = orientation
  return _encode(image, 'JPEG', quality=95, exif=exif.tobytes())


def make_messy_corpus(root) -> dict:
  """Writes the corpus under root; returns {rel path: expected outcome}."""
  from PIL import Image
  root = pathlib.Path(root)
  expected = {}

  def put(rel, data, outcome=USABLE):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    expected[rel] = outcome

  for name, rgb in (('red', RED), ('blue', BLUE)):
    for k in range(6):
      write_image(root / name / f'clean_{k}.jpg', rgb, seed=k + 10 * len(name))
      expected[f'{name}/clean_{k}.jpg'] = USABLE

  red = _solid(RED)
  # --- unusable ------------------------------------------------------------
  whole = _encode(_solid(RED, size=(64, 64), noise=40), 'JPEG')
  put('red/truncated.jpg', whole[:len(whole) // 2], 'truncated or corrupt JPEG')
  put('red/empty.jpg', b'', 'empty file (0 bytes)')
  # The same (empty) bytes in the other class: unusable, so no conflict.
  put('blue/also empty.gif', b'', 'empty file (0 bytes)')
  put('red/page.jpg', b'<!DOCTYPE html><html><body>Not found</body></html>',
      'HTML, not an image')
  put('blue/notes.png', b'just some notes\nsaved as png\n', 'text, not an image')
  put('blue/random.jpeg',
      np.random.default_rng(7).integers(0, 256, 3000, np.uint8).tobytes(),
      'not an image in any known format')
  os.symlink(root / 'red' / 'gone.jpg', root / 'red' / 'broken_link.jpg')
  expected['red/broken_link.jpg'] = 'broken symbolic link'

  # --- usable with care ------------------------------------------------------
  put('red/png_inside.jpg', _encode(red, 'PNG'))
  put('red/UPPER CASE.JPG', _encode(red, 'JPEG'))
  put('red/cmyk.jpg', _encode(red.convert('CMYK'), 'JPEG'))
  put('red/gray.jpg', _encode(red.convert('L'), 'JPEG'))
  rgba = red.convert('RGBA')
  rgba.putalpha(Image.fromarray(
      np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1))))
  put('red/rgba.png', _encode(rgba, 'PNG'))
  put('red/palette.gif', _encode(red.convert('P'), 'GIF'))
  palette_png = red.convert('P')
  put('red/palette_transparent.png',
      _encode(palette_png, 'PNG', transparency=0))
  frames = [_solid(RED, seed=1).convert('P'), _solid((0, 255, 0)).convert('P')]
  put('red/animated.gif', _encode(frames[0], 'GIF', save_all=True,
                                  append_images=frames[1:], duration=100,
                                  loop=0))
  sixteen = (np.asarray(red.convert('L'), np.uint16) * 257).astype(np.uint16)
  put('red/sixteen_bit.png', _encode(Image.fromarray(sixteen), 'PNG'))
  put('red/one_pixel.png', _encode(Image.new('RGB', (1, 1), RED), 'PNG'))
  # A 24-megapixel camera-sized photo; smooth, so the file stays small.
  ramp = np.linspace(150, 250, 6000, dtype=np.float32)[None, :, None]
  big = np.broadcast_to(ramp * np.array([1.0, 0.1, 0.1]), (4000, 6000, 3))
  put('red/large_6000x4000.jpg',
      _encode(Image.fromarray(big.astype(np.uint8)), 'JPEG', quality=80))
  put('blue/image.bmp', _encode(_solid(BLUE, seed=3), 'BMP'))
  put('blue/image.webp', _encode(_solid(BLUE, seed=4), 'WEBP'))
  put('blue/image.tiff', _encode(_solid(BLUE, seed=5), 'TIFF'))
  put('blue/IMAGE.TIF', _encode(_solid(BLUE, seed=6), 'TIFF',
                                compression='tiff_lzw'))
  put('blue/rotated_exif_6.jpg',
      jpeg_with_orientation(np.asarray(_solid(BLUE, size=(30, 50))), 6))
  put('blue/name with spaces é 日本.jpg', _encode(_solid(BLUE, seed=8), 'JPEG'))

  # --- the same bytes in two classes (usable, with a warning) ---------------
  duplicate = _encode(_solid(BLUE, seed=9), 'JPEG')
  put('blue/dup.jpg', duplicate)
  put('red/dup copy.jpg', duplicate)

  # --- clutter, ignored quietly ---------------------------------------------
  for rel in ('red/.DS_Store', 'blue/Thumbs.db', 'blue/readme.txt',
              'red/labels.csv', '.DS_Store'):
    put(rel, b'\x00\x01clutter', IGNORED)
  return expected
