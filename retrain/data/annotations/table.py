"""Boxes from a CSV file, one row per box (see the package doc)."""

from __future__ import annotations

import csv
import os
from typing import List, Optional, Sequence

from retrain.data.annotations.box import (
  CSV_BOX_COLUMNS,
  Annotations,
  Box,
  finite_number,
)
from retrain.errors import DatasetError

# Header names (lower case) accepted for the CSV's image and label columns.
CSV_PATH_COLUMNS = ('path', 'filename', 'file', 'image', 'image_path',
                    'file_name', 'image_id')
CSV_LABEL_COLUMNS = ('label', 'class', 'name', 'class_name', 'cell_type',
                     'category')


def _find_column(header: List[str], names: Sequence[str]) -> Optional[int]:
  lower = [h.strip().lower() for h in header]
  for name in names:
    if name in lower:
      return lower.index(name)
  return None


def read_boxes_csv(csv_path: str, image_dir: str = '',
                   label_column: str = '',
                   need_label: bool = True) -> Annotations:
  """One box per row; columns found by header name (see module doc).

  Raises:
    DatasetError: no such file; a column that cannot be found (the columns
      found and the flag to pass are named); a coordinate that is not a
      number; a row naming an image that does not exist.
  """
  if not os.path.isfile(csv_path):
    raise DatasetError(f'boxes_csv {csv_path!r} does not exist.', fields=('boxes_csv',))
  base = os.path.abspath(image_dir or os.path.dirname(os.path.abspath(
      csv_path)))
  with open(csv_path, newline='', encoding='utf-8-sig') as f:
    lines = list(csv.reader(f, skipinitialspace=True))
  if not lines:
    raise DatasetError(f'{csv_path} is empty: it needs a header row and one '
                       'row per box.')
  header = [h.strip() for h in lines[0]]
  path_col = _find_column(header, CSV_PATH_COLUMNS)
  label_col = _find_column(header, (label_column.lower(),) if label_column
                           else CSV_LABEL_COLUMNS)
  box_cols = [_find_column(header, (name,)) for name in CSV_BOX_COLUMNS]
  if path_col is None:
    raise DatasetError(
        f'{csv_path}: no image column among the columns found ({header}); '
        f'name it one of {", ".join(CSV_PATH_COLUMNS)}.')
  if label_col is None and need_label:
    wanted = f' {label_column!r}' if label_column else ''
    raise DatasetError(
        f'{csv_path}: no label column{wanted} among the columns found '
        f'({header}); pass boxes_label_column NAME with the column that '
        'holds the class (accepted without the flag: '
        f'{", ".join(CSV_LABEL_COLUMNS)}).', fields=('boxes_label_column',))
  absent = [name for name, col in zip(CSV_BOX_COLUMNS, box_cols, strict=True)
            if col is None]
  if absent:
    raise DatasetError(
        f'{csv_path}: no column {", ".join(absent)} among the columns found '
        f'({header}); the box needs xmin, ymin, xmax, ymax (any order).')
  name = os.path.basename(csv_path)
  boxes = []
  for number, fields in enumerate(lines[1:], 2):
    fields = [field.strip() for field in fields]
    if not any(fields):
      continue
    where = f'{name}:{number}'
    if len(fields) < len(header):
      raise DatasetError(f'{where} has {len(fields)} fields, the header '
                         f'{len(header)}.')
    image = os.path.normpath(os.path.join(base, fields[path_col]))
    if not os.path.exists(image):
      raise DatasetError(
          f'{where} names {fields[path_col]!r}, but {image} does not exist: '
          'paths are relative to image_dir when given, else to the CSV\'s '
          'folder.', fields=('image_dir',))
    try:
      coords = [finite_number(fields[col]) for col in box_cols]
    except ValueError as e:
      raise DatasetError(f'{where}: a box coordinate is not a number ({e}).'
                         ) from e
    boxes.append(Box(image, '' if label_col is None else fields[label_col],
                     *coords, where=where))
  return Annotations(boxes, base, None, (),
                     f'boxes from {csv_path}, split by the stable hash')
