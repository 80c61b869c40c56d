"""What each image file is (size, colour mode, format, EXIF orientation),
and small thumbnails, read with Pillow (headers only, except thumbnails)."""

from __future__ import annotations

import base64
import dataclasses
import io
from typing import Optional, Sequence

_ORIENTATION_TAG = 0x0112


@dataclasses.dataclass(frozen=True)
class FileInfo:
  """One readable image file.

  width, height: pixels of the upright image (EXIF orientation applied);
  mode: Pillow's colour mode ('RGB', 'L', 'RGBA', 'P', 'CMYK', ...);
  format: 'JPEG', 'PNG', ...; orientation: EXIF orientation 1..8 (1 upright).
  """
  width: int
  height: int
  mode: str
  format: str
  orientation: int


def file_info(path: str) -> FileInfo:
  """Reads the header of one file; raises OSError or Pillow's errors."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    width, height = image.size
    try:
      orientation = int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # pylint: disable=broad-except
      orientation = 1
    if orientation not in range(1, 9):
      orientation = 1
    if orientation >= 5:
      width, height = height, width
    return FileInfo(width, height, image.mode, image.format or '?',
                    orientation)


def thumbnail_uri(path: str, box: Optional[Sequence[float]] = None,
                  side: int = 112) -> str:
  """A JPEG data: URI of the upright image (or its box crop), at most
  side x side pixels; '' when the file cannot be decoded.

  box: (top, left, bottom, right) in [0, 1] of the upright image.
  """
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      if image.format == 'JPEG' and box is None:
        image.draft('RGB', (side * 2, side * 2))
      image = ImageOps.exif_transpose(image).convert('RGB')
      if box is not None:
        w, h = image.size
        top, left, bottom, right = (float(v) for v in box)
        image = image.crop((int(left * w), int(top * h),
                            max(int(left * w) + 1, int(round(right * w))),
                            max(int(top * h) + 1, int(round(bottom * h)))))
      image.thumbnail((side, side))
      out = io.BytesIO()
      image.save(out, format='JPEG', quality=80)
  except Exception:  # pylint: disable=broad-except
    return ''
  return 'data:image/jpeg;base64,' + base64.b64encode(out.getvalue()).decode()
