"""Bounding boxes: read annotations, and make one example per annotated box.

With --crop_to_boxes every box becomes an example: the photo cropped to the
box (plus --crop_margin percent of context on each side, clipped to the
photo), labelled with the box's object name, then decoded and resized
exactly as a whole image is (retrain.images.decode_and_resize with a box).
The annotations are read by retrain/data/annotations/ (its doc lists the
layouts).

Boxes that cannot be used are skipped with a reason (listed in the skipped-
files report): inverted (xmax <= xmin or ymax <= ymin), entirely outside
the photo, smaller than --min_box_size pixels on a side after clipping, or
marked `difficult` (unless --boxes_include_difficult).

Split: all boxes of one photo go to the same set, chosen by the stable hash
of the photo's path (retrain.data.split.hash_percentage), so no photo is in
two sets. Label order: object names sorted by Python's string order.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

import numpy as np
from absl import logging

from retrain.data import discover as discover_lib
from retrain.data import sources
from retrain.data import split as split_lib
from retrain.data.annotations.box import Box, number_text
from retrain.data.annotations.crop import crop_fraction, upright_size
from retrain.data.annotations.layouts import read_annotations
from retrain.data.annotations.voc import check_image_exists
from retrain.errors import DatasetError


def crop_key(box: Box, margin: float) -> str:
  """The part of a crop's cache key after the photo's content hash."""
  return f':box={box.coords()}:margin={number_text(margin)}'


@dataclasses.dataclass(frozen=True)
class Crops:
  """The crop of each example of a crop layout.

  Attributes:
    boxes: float32 [n, 4], (top, left, bottom, right) in [0, 1] of the
      upright photo, for layout.dataset.images[i].
    key_suffixes: n strings appended to the photo's content hash to make
      the crop's cache key (box and margin).
  """
  boxes: np.ndarray
  key_suffixes: Tuple[str, ...]

  @staticmethod
  def bottleneck_args(crops: Optional['Crops']) -> dict:
    """Keyword arguments of compute_bottlenecks for these crops ({} for
    whole images)."""
    if crops is None:
      return {}
    return {'boxes': crops.boxes, 'key_suffixes': crops.key_suffixes}


def load_examples(data, crop) -> Tuple[sources.Layout, Optional['Crops']]:
  """The examples of a run: load_crop_layout(data, crop) with
  crop.crop_to_boxes, else (sources.load_layout(data), None)."""
  if crop.crop_to_boxes:
    return load_crop_layout(data, crop)
  return sources.load_layout(data), None


def load_crop_layout(data, crop) -> Tuple[sources.Layout, Crops]:
  """One example per usable box (see module doc).

  Args:
    data: the run's config.data (image_dir and the split percentages).
    crop: the run's config.crop (the annotations and how boxes are cut).

  Returns:
    (layout, crops): layout.dataset.images[i] is the photo of example i with
    rel_path 'photo/path.jpg#xmin,ymin,xmax,ymax' and its box's class id;
    layout.subsets is always set (every box in its photo's set).
  """
  if crop.crop_margin < 0:
    raise DatasetError(f'crop_margin={crop.crop_margin} must be 0 or '
                       'more (percent of the box added on each side).', fields=('crop_margin',))
  if crop.min_box_size < 1:
    raise DatasetError(f'min_box_size={crop.min_box_size} must be at '
                       'least 1 pixel.', fields=('min_box_size',))
  annotations = read_annotations(crop.boxes, data.image_dir,
                                 crop.boxes_csv, crop.boxes_label_column)
  skipped = [(path, 'no annotated box') for path in annotations.unannotated]
  sizes, kept = {}, []
  for box in annotations.boxes:
    if box.image not in sizes:
      check_image_exists(box.image, box.where)
      try:
        sizes[box.image] = upright_size(box.image)
      except Exception as e:  # noqa: BLE001 unreadable photos are reported by the step that reads them
        # Unreadable photos are left to the bottleneck step, which skips
        # them with the decoders' reason.
        logging.debug('No header size for %s: %s', box.image, e)
        sizes[box.image] = None
    if box.difficult and not crop.boxes_include_difficult:
      skipped.append((box.image, f'box {box.coords()} of {box.label!r} '
                      f'({box.where}) is marked difficult (use '
                      '--boxes_include_difficult to keep it)'))
      continue
    size = sizes[box.image] or (1 << 30, 1 << 30)
    fraction, reason = crop_fraction(box, *size, crop.crop_margin,
                                     crop.min_box_size)
    if fraction is None:
      skipped.append((box.image, reason))
      continue
    if sizes[box.image] is None:
      fraction = np.zeros(4, np.float32)  # never decoded: the file is bad
    kept.append((box, fraction))
  if not kept:
    raise DatasetError(f'crop_to_boxes: no usable box in '
                       f'{annotations.description}.', fields=('crop_to_boxes',))
  labels = sorted({box.label for box, _ in kept})
  sources._check_classes(labels, annotations.description)  # noqa: SLF001 a helper shared inside retrain.data
  index = {label: i for i, label in enumerate(labels)}
  base = annotations.base

  def rel(path):
    return os.path.relpath(path, base).replace(os.sep, '/')

  kept.sort(key=lambda bf: (index[bf[0].label], rel(bf[0].image),
                            bf[0].coords()))
  images, codes = [], []
  for box, _ in kept:
    photo = rel(box.image)
    images.append(discover_lib.ImageFileAt(f'{photo}#{box.coords()}',
                                       index[box.label], base, box.image))
    codes.append(_photo_subset(photo, box.image, annotations.subsets,
                               data.validation_percentage,
                               data.testing_percentage))
  crops = Crops(np.stack([f for _, f in kept]).astype(np.float32),
                tuple(crop_key(box, crop.crop_margin) for box, _ in kept))
  layout = sources.Layout(
      discover_lib.Dataset(base, tuple(labels), tuple(images)),
      subsets=np.array(codes, np.int8), carve=(False, False),
      skipped=tuple(skipped),
      description=(f'{len(images)} boxes of {len(sizes)} photos, '
                   f'{annotations.description}, crop margin '
                   f'{crop.crop_margin:g}%'))
  if skipped:
    logging.warning('%d boxes or photos are not used (first: %s: %s); see the '
                    'skipped-files report.', len(skipped), *skipped[0])
  return layout, crops


def _photo_subset(rel_photo: str, path: str, given: Optional[dict],
                  validation_percentage: float,
                  testing_percentage: float) -> int:
  """The set of a photo: as given (VOC ImageSets), else by the stable hash.

  A photo absent from a given split (or a split without val/test) is
  placed by the hash, like a missing folder of a ready-made split.
  """
  if given and path in given:
    return given[path]
  split_lib.check_percentages(validation_percentage, testing_percentage)
  percent = split_lib.hash_percentage(rel_photo)
  if percent < validation_percentage:
    return split_lib.SUBSET_CODES[split_lib.VALIDATION]
  if percent < validation_percentage + testing_percentage:
    return split_lib.SUBSET_CODES[split_lib.TEST]
  return split_lib.SUBSET_CODES[split_lib.TRAIN]


