"""Tiny files that declare huge images, made on the fly (a few KB each)."""

import io
import struct
import zlib

import numpy as np


def _jpeg_bytes(width=64, height=64, seed=0):
  from PIL import Image
  rng = np.random.default_rng(seed)
  out = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(
      out, format='JPEG')
  return out.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
  """A 64x64 JPEG whose frame header (SOF0) declares width x height."""
  data = bytearray(_jpeg_bytes())
  at = data.index(b'\xff\xc0')
  struct.pack_into('>HH', data, at + 5, height, width)
  return bytes(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
  return (struct.pack('>I', len(body)) + kind + body +
          struct.pack('>I', zlib.crc32(kind + body) & 0xFFFFFFFF))


def png_1bit(width: int, height: int) -> bytes:
  """A valid all-black 1-bit grayscale PNG, compressed to a few KB."""
  row = b'\x00' + bytes((width + 7) // 8)
  compressor = zlib.compressobj(9)
  parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
  parts.append(compressor.compress(row * (height % 1000)))
  parts.append(compressor.flush())
  return (b'\x89PNG\r\n\x1a\n' +
          _chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0,
                                      0)) +
          _chunk(b'IDAT', b''.join(parts)) + _chunk(b'IEND', b''))


def truncated_jpeg() -> bytes:
  whole = _jpeg_bytes(256, 256, seed=3)
  return whole[:len(whole) * 2 // 3]


def truncated_png() -> bytes:
  from PIL import Image
  out = io.BytesIO()
  rng = np.random.default_rng(4)
  Image.fromarray(rng.integers(0, 255, (128, 128, 3), np.uint8)).save(
      out, format='PNG')
  whole = out.getvalue()
  return whole[:len(whole) // 2]
