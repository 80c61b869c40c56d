"""Choosing the annotation layout of a run and reading its boxes."""

from __future__ import annotations

import os

from retrain.data.annotations.box import Annotations
from retrain.data.annotations.table import read_boxes_csv
from retrain.data.annotations.voc import (
  images_beside_xml,
  read_stanford_dogs,
  read_voc_beside,
  read_voc_tree,
)
from retrain.errors import DatasetError

BOX_LAYOUTS = ('auto', 'voc', 'voc_tree', 'stanford_dogs', 'csv')


def detect_layout(image_dir: str, boxes_csv: str = '') -> str:
  """The annotation layout of a run (see module doc), or DatasetError."""
  if boxes_csv:
    return 'csv'
  if not image_dir or not os.path.isdir(image_dir):
    raise DatasetError(f'crop_to_boxes needs image_dir (a folder) or '
                       f'boxes_csv; {image_dir!r} is not a folder.', fields=('crop_to_boxes', 'image_dir', 'boxes_csv'))
  names = set(os.listdir(image_dir))
  if {'JPEGImages', 'Annotations'} <= names:
    return 'voc_tree'
  if {'Images', 'Annotation'} <= names:
    return 'stanford_dogs'
  if images_beside_xml(image_dir)[1]:
    return 'voc'
  raise DatasetError(
      f'crop_to_boxes: found no boxes under {image_dir}: expected '
      'JPEGImages/ + Annotations/ (VOC tree), Images/ + Annotation/ (Stanford '
      'Dogs), a .xml beside each image, or boxes_csv FILE.', fields=('crop_to_boxes', 'boxes_csv'))


def read_annotations(layout: str, image_dir: str, boxes_csv: str = '',
                     label_column: str = '') -> Annotations:
  """Reads the boxes of a layout ('auto' detects it)."""
  if layout not in BOX_LAYOUTS:
    raise DatasetError(f'boxes={layout!r} is not one of '
                       f'{", ".join(BOX_LAYOUTS)}.', fields=('boxes',))
  if layout == 'auto':
    layout = detect_layout(image_dir, boxes_csv)
  if layout == 'csv':
    if not boxes_csv:
      raise DatasetError('boxes csv needs boxes_csv FILE.', fields=('boxes', 'boxes_csv'))
    return read_boxes_csv(boxes_csv, image_dir, label_column)
  readers = {'voc': read_voc_beside, 'voc_tree': read_voc_tree,
             'stanford_dogs': read_stanford_dogs}
  return readers[layout](image_dir)
