"""The crop of a box as fractions of the upright photo, and the boxes of one
annotation file as crops to classify (label_image --boxes)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

from retrain.data.annotations.box import Box
from retrain.data.annotations.table import read_boxes_csv
from retrain.data.annotations.voc import check_image_exists, read_voc_xml


def upright_size(path: str) -> Tuple[int, int]:
  """(width, height) of the photo as displayed (EXIF orientation applied).

  Reads only the header. Raises OSError (or Pillow's errors) when the file
  is not a readable image.
  """
  from PIL import Image
  with Image.open(path) as image:
    width, height = image.size
    try:
      orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001
      orientation = 1  # a broken EXIF block: the decoders ignore it too.
  return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def crop_fraction(box: Box, width: int, height: int, margin: float,
                  min_size: int) -> Tuple[Optional[np.ndarray], str]:
  """The crop of a box as fractions of the photo, or None and why not.

  Args:
    box: the annotation (VOC pixel coordinates, inclusive).
    width, height: the upright photo's size in pixels.
    margin: percent of the box's width (height) added on the left and right
      (top and bottom), then clipped to the photo.
    min_size: boxes narrower or lower than this (after clipping, before the
      margin) are skipped.

  Returns:
    (float32 [4] (top, left, bottom, right) in [0, 1], '') or (None, reason).
  """
  if box.xmax <= box.xmin or box.ymax <= box.ymin:
    return None, (f'box {box.coords()} of {box.label!r} ({box.where}) is '
                  'inverted or empty (xmax <= xmin or ymax <= ymin)')
  # VOC pixels are inclusive: a box from 1 to 10 covers 10 pixels; the
  # crop runs from the left edge of xmin to the right edge of xmax.
  left, top = max(box.xmin - 1, 0.0), max(box.ymin - 1, 0.0)
  right, bottom = min(box.xmax, float(width)), min(box.ymax, float(height))
  if right <= left or bottom <= top:
    return None, (f'box {box.coords()} of {box.label!r} ({box.where}) lies '
                  f'outside the {width}x{height} photo')
  if right - left < min_size or bottom - top < min_size:
    return None, (f'box {box.coords()} of {box.label!r} ({box.where}) is '
                  f'{right - left:g}x{bottom - top:g} pixels, smaller than '
                  f'--min_box_size={min_size}')
  dx = (right - left) * margin / 100.0
  dy = (bottom - top) * margin / 100.0
  left, right = max(left - dx, 0.0), min(right + dx, float(width))
  top, bottom = max(top - dy, 0.0), min(bottom + dy, float(height))
  return np.array([top / height, left / width, bottom / height,
                   right / width], np.float32), ''


@dataclasses.dataclass(frozen=True)
class InferenceCrop:
  """One box to classify: image path, float32 [4] crop as in Crops.boxes,
  and its name in the results, 'photo.jpg#xmin,ymin,xmax,ymax'."""
  image: str
  box: np.ndarray
  name: str


def crops_for_inference(annotation: str, margin: float, min_size: int,
                        image_dir: str = ''):
  """The boxes of one VOC XML or CSV file, as crops to classify.

  Args:
    annotation: a .csv (columns as for --boxes_csv; the label column is
      optional) or a VOC XML file (its <filename> beside it).
    margin, min_size: as --crop_margin and --min_box_size.
    image_dir: for a CSV, the folder its paths are relative to ('' for the
      CSV's folder).

  Returns:
    (crops, skipped): skipped is (name, reason) of boxes that cannot be
    cropped (inverted, outside, too small, unreadable image).
  """
  if annotation.lower().endswith('.csv'):
    found = read_boxes_csv(annotation, image_dir, need_label=False).boxes
  else:
    found = read_voc_xml(annotation)
  crops, skipped, sizes = [], [], {}
  for box in found:
    name = f'{box.image}#{box.coords()}'
    if box.image not in sizes:
      check_image_exists(box.image, annotation)
      try:
        sizes[box.image] = upright_size(box.image)
      except Exception as e:  # noqa: BLE001
        sizes[box.image] = f'not a readable image ({e})'
    if isinstance(sizes[box.image], str):
      skipped.append((name, sizes[box.image]))
      continue
    fraction, reason = crop_fraction(box, *sizes[box.image], margin, min_size)
    if fraction is None:
      skipped.append((name, reason))
    else:
      crops.append(InferenceCrop(box.image, fraction, name))
  return crops, skipped
