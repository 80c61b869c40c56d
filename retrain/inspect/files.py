"""What each image file is (size, colour mode, format, EXIF orientation),
and small thumbnails, read with Pillow (headers only, except thumbnails)."""

from __future__ import annotations

import dataclasses

from retrain.common.html import thumbnail_uri  # noqa: F401 (used as files.thumbnail_uri)

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
  from PIL import Image
  with Image.open(path) as image:
    width, height = image.size
    try:
      orientation = int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 a broken EXIF block is ignored, as the decoders do
      orientation = 1
    if orientation not in range(1, 9):
      orientation = 1
    if orientation >= 5:
      width, height = height, width
    return FileInfo(width, height, image.mode, image.format or '?',
                    orientation)
