"""Photos with several labels (--multi_label): where the labels come from.

The same settings as a single-label run say where the photos are; with
--multi_label a photo may have any number of labels (none included):

- CSV labels (--image_labels_csv, or --train_csv with --validation_csv /
  --test_csv): rows `path, labels`, the photo's labels separated by ';'
  (`a.jpg, cat;dog`; an empty field or a lone ';' is a photo with no label).
- Boxes (--boxes_csv, or image_dir holding a VOC tree, a VOC XML beside each
  photo or the Stanford Dogs layout, as retrain/data/annotations/ reads them):
  a photo's labels are the distinct names of its objects; photos without
  an annotation are skipped (and reported). ImageSets/Main of a VOC tree is
  the split, as with --crop_to_boxes.
- Class folders: `image_dir/<label>/...`; the same photo (the same bytes,
  by its SHA-256) in several folders has each of those labels, and is used
  once, at its first path.

Label order: the label names sorted as a single-label run sorts its classes
(numerically when every label is an integer); column j of `targets` and of
the model's output is label j.

The split: every photo is one row, so its labels stay together. Each
photo's `ImageFile.label` is its stratum, the id of its rarest label (by
photos with that label; L for a photo with no label), which the stable-hash
split and the folds balance.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from absl import logging

import bottleneck_cache
from retrain.data import boxes as boxes_lib
from retrain.data import discover as discover_lib
from retrain.data import labels as labels_lib
from retrain.data import sources
from retrain.data.annotations.layouts import detect_layout, read_annotations
from retrain.data.split import SUBSET_CODES, TEST, TRAIN, VALIDATION
from retrain.errors import DatasetError

SEPARATOR = ';'


@dataclasses.dataclass(frozen=True)
class MultiLabels:
  """The photos of a multi-label run.

  Attributes:
    layout: dataset.labels are the L label names; dataset.images[i] is
      photo i, its `label` the stratum (see the module docstring); subsets
      and carve as in a single-label run.
    targets: bool [n, L], targets[i, j] True when photo i has label j.
  """
  layout: sources.Layout
  targets: np.ndarray


def split_labels(text: str, where: str) -> List[str]:
  """The labels of one CSV field ('cat;dog' -> ['cat', 'dog']), each
  checked; duplicates once, in order."""
  found = []
  for label in (part.strip() for part in text.split(SEPARATOR)):
    if not label:
      continue
    labels_lib.check_csv_label(label, where)
    if label not in found:
      found.append(label)
  return found


def _assemble(base: str, photos: Sequence[Tuple[str, List[str], int]],
              description: str, skipped=(), carve=(False, False),
              has_subsets: bool = False) -> MultiLabels:
  """MultiLabels from (absolute path, labels, subset code) of each photo."""
  names = sources._label_order(  # noqa: SLF001 a helper shared inside retrain.data
      {label for _, labels, _ in photos for label in labels})
  if len(names) < 2:
    raise DatasetError(
        f'{description}: found {len(names)} label(s) {names}; a multi-label '
        'classifier needs at least two.', fields=('multi_label',))
  index = {name: j for j, name in enumerate(names)}
  targets = np.zeros((len(photos), len(names)), bool)
  for i, (_, labels, _) in enumerate(photos):
    targets[i, [index[label] for label in labels]] = True
  counts = targets.sum(axis=0)
  strata = np.full(len(photos), len(names), np.int64)
  for i in range(len(photos)):
    mine = np.flatnonzero(targets[i])
    if len(mine):
      strata[i] = mine[np.argmin(counts[mine])]
  order = sorted(range(len(photos)), key=lambda i: (
      strata[i], os.path.relpath(photos[i][0], base)))
  images = tuple(discover_lib.image_file(
      photos[i][0], os.path.relpath(photos[i][0], base).replace(os.sep, '/'),
      int(strata[i]), base) for i in order)
  subsets = (np.array([photos[i][2] for i in order], np.int8) if has_subsets
             else None)
  logging.info('Multi-label: %d photos, %d labels (%s); photos per label %s; '
               '%d photos have two or more.', len(photos), len(names),
               ', '.join(names), counts.tolist(),
               int(np.sum(targets.sum(axis=1) >= 2)))
  return MultiLabels(sources.Layout(
      discover_lib.Dataset(base, tuple(names), images), subsets=subsets,
      carve=carve, skipped=tuple(skipped), description=description),
                     targets[order])


def from_csv(options) -> MultiLabels:
  """`path, a;b` rows from --image_labels_csv or the split CSVs."""
  given = ([(TRAIN, options.image_labels_csv)] if options.image_labels_csv
           else [(s, getattr(options, f'{s}_csv')) for s in (
               TRAIN, VALIDATION, TEST) if getattr(options, f'{s}_csv')])
  photos, missing, seen = [], [], set()
  for subset, csv_path in given:
    rows, gone = sources.read_labels_csv(csv_path)
    missing.extend(gone)
    for row in rows:
      if row.path in seen:
        logging.warning('%s (%s) is listed in an earlier CSV; used there '
                        'only.', row.path, row.where)
        continue
      seen.add(row.path)
      photos.append((row.path, split_labels(row.label, row.where),
                     SUBSET_CODES[subset]))
  first = given[0][1]
  split = len(given) > 1 or not options.image_labels_csv
  return _assemble(
      os.path.dirname(os.path.abspath(first)), photos,
      f'labels ({SEPARATOR}-separated) from '
      f'{", ".join(p for _, p in given)}', missing,
      carve=(not options.validation_csv, not options.test_csv) if split
      else (False, False), has_subsets=split)


def from_boxes(data, crop) -> MultiLabels:
  """Each annotated photo with the names of its objects as its labels
  (`data`, `crop`: the run's config.data and config.crop)."""
  annotations = read_annotations(
      crop.boxes, data.image_dir, crop.boxes_csv, crop.boxes_label_column)
  labels: Dict[str, List[str]] = {}
  for box in annotations.boxes:
    mine = labels.setdefault(box.image, [])
    if box.label not in mine:
      mine.append(box.label)
  photos = []
  for path, names in labels.items():
    rel = os.path.relpath(path, annotations.base).replace(os.sep, '/')
    photos.append((path, names, boxes_lib._photo_subset(  # noqa: SLF001 a helper shared inside retrain.data
        rel, path, annotations.subsets, data.validation_percentage,
        data.testing_percentage)))
  skipped = [(path, 'no annotation') for path in annotations.unannotated]
  return _assemble(annotations.base, photos,
                   f'object names as labels, {annotations.description}',
                   skipped, has_subsets=True)


def from_class_folders(image_dir: str, digest_root: str) -> MultiLabels:
  """Class folders; one photo in several folders has each folder's label."""
  if sources.detect_split_folders(image_dir):
    raise DatasetError(
        f'{image_dir} holds train/ (and validation/ or test/) folders: '
        '--multi_label reads one folder per label, a CSV of "path, a;b" rows '
        'or VOC annotations. Give --image_dir the folder of label folders, '
        'or --train_csv.', fields=('multi_label', 'image_dir'))
  dataset = discover_lib.discover_images(image_dir)
  memo = bottleneck_cache.DigestMemo(digest_root or None)
  by_digest: Dict[str, int] = {}
  photos: List[Tuple[str, List[str], int]] = []
  for image in dataset.images:
    try:
      digest = memo.digest(image.path)
    except OSError:
      digest = image.path  # unreadable: the bottleneck step reports it
    label = dataset.labels[image.label]
    if digest in by_digest:
      mine = photos[by_digest[digest]][1]
      if label not in mine:
        mine.append(label)
      continue
    by_digest[digest] = len(photos)
    photos.append((image.path, [label], SUBSET_CODES[TRAIN]))
  memo.save()
  several = sum(len(labels) > 1 for _, labels, _ in photos)
  return _assemble(
      dataset.image_dir, photos,
      f'one folder per label under {dataset.image_dir} ({several} photos '
      'found in several label folders), split by the stable hash',
      dataset.skipped_files)


def has_annotations(image_dir: str, boxes_csv: str) -> bool:
  """Whether the run's photos have box annotations to take labels from."""
  if boxes_csv:
    return True
  try:
    detect_layout(image_dir)
  except DatasetError:
    return False
  return True


def load(layout_options, crop, digest_root: str) -> MultiLabels:
  """The photos and their labels (see the module docstring).

  Args:
    layout_options: the run's config.data; crop: its config.crop (where
      annotations are).
    digest_root: the bottleneck cache folder, whose digest memo hashes the
      class folders' photos once for this and the bottleneck step.
  """
  if layout_options.image_labels_csv or layout_options.train_csv:
    found = from_csv(layout_options)
  elif has_annotations(layout_options.image_dir, crop.boxes_csv):
    found = from_boxes(layout_options, crop)
  else:
    found = from_class_folders(layout_options.image_dir, digest_root)
  if layout_options.label_style != 'verbatim':
    layout = sources._apply_label_style(  # noqa: SLF001 a helper shared inside retrain.data
        found.layout, layout_options.label_style)
    found = dataclasses.replace(found, layout=layout)
  return found
