"""Where the images and their labels come from, and which set each is in.

Three layouts, chosen by `load_layout(options)`:

- Class folders (retrain.py's): `image_dir/<class>/...`; every image is
  assigned to train, validation or test by the stable hash (retrain.data.split).
- Split folders: `image_dir/{train, validation or val, test}/<class>/...`,
  detected when those are the only folders of image_dir (or forced with
  --image_layout split_folders). The given split is used as is; a missing
  validation or test folder is carved out of train by the stable hash with
  --validation_percentage / --testing_percentage.
- CSV labels: rows `path, label` (path relative to the CSV's folder, or
  absolute; optional header; spaces around fields ignored; labels are names
  or integers). --image_labels_csv is one CSV split by the hash;
  --train_csv [--validation_csv] [--test_csv] are used as given (a missing
  one is carved out of train, as above).

Like discovery, this only lists files; decoding belongs to the bottleneck
step. A CSV row whose file does not exist is skipped and reported; a file
listed twice with different labels, or a validation/test label the train
set does not have, is an error that says which rows to fix.

Label order: class folder names (or CSV labels) sorted by Python's string
order, or numerically when every CSV label is an integer; class id i is
`Layout.dataset.labels[i]`. --label_style retrain renames the labels
afterwards (retrain.py's lower-case form) and keeps that order.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import stat
from typing import List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from retrain import images as images_lib
from retrain.common import walk as walk_lib
from retrain.data import discover as discover_lib
from retrain.data import labels as labels_lib
from retrain.data import split as split_lib
from retrain.data.split import SUBSET_CODES, SUBSETS, TEST, TRAIN, VALIDATION
from retrain.errors import DatasetError

# Folder names of a ready-made split (matched case-insensitively) and the
# set each stands for.
SPLIT_FOLDERS = {'train': TRAIN, 'validation': VALIDATION, 'val': VALIDATION,
                 'test': TEST}
_CSV_SETTINGS = ('image_labels_csv', 'train_csv', 'validation_csv', 'test_csv')


@dataclasses.dataclass(frozen=True)
class Layout:
  """The images of a run and, when the user gave one, their split.

  Attributes:
    dataset: the images and labels (see retrain.data.discover.Dataset).
    subsets: None to split every image by the stable hash; else int8 [n],
      the set of dataset.images[i] as its split.SUBSET_CODES code (0 train,
      1 validation, 2 test).
    carve: (validation, test): whether that set was not given and is to be
      taken out of train by the stable hash.
    skipped: (path, reason) of listed files that do not exist.
    description: one line for the log.
  """
  dataset: discover_lib.Dataset
  subsets: Optional[np.ndarray] = None
  carve: Tuple[bool, bool] = (False, False)
  skipped: tuple = ()
  description: str = ''


def retrain_label(name: str) -> str:
  """retrain.py's label for a folder name: 'Sun_Flowers' -> 'sun flowers'."""
  return re.sub(r'[^a-z0-9]+', ' ', name.lower())


def check_layout_options(options) -> None:
  """Checks the CSV settings together before any slow work (the declared
  choices of image_layout and label_style are checked by Config.check)."""
  given = [name for name in _CSV_SETTINGS if getattr(options, name)]
  if not given:
    return
  if options.image_labels_csv and len(given) > 1:
    raise DatasetError(
        f'image_labels_csv and {given[1]} were both given: use either one '
        'CSV (split by hash) or train_csv with validation_csv / '
        'test_csv (split as given).',
        fields=('image_labels_csv', 'train_csv', 'validation_csv',
                'test_csv', given[1]))
  if not options.image_labels_csv and not options.train_csv:
    raise DatasetError(f'{given[0]} needs train_csv: the train CSV '
                       'defines the classes.',
                       fields=('train_csv', given[0]))
  if options.image_dir:
    raise DatasetError(
        f'image_dir and {given[0]} were both given: with CSV labels the '
        'paths in each CSV are relative to the CSV\'s own folder, so drop '
        'image_dir.',
        fields=('image_dir', given[0]))


def load_layout(options) -> Layout:
  """Lists the images, labels and given split of a run (see module doc)."""
  if options.image_labels_csv:
    layout = _from_one_csv(options.image_labels_csv)
  elif options.train_csv:
    layout = _from_split_csvs(options.train_csv, options.validation_csv,
                              options.test_csv)
  else:
    folders = None
    if options.image_layout != 'class_folders' and options.image_dir:
      folders = detect_split_folders(options.image_dir,
                                     options.image_layout == 'split_folders')
    if folders:
      layout = _from_split_folders(options.image_dir, folders,
                                   options.follow_outside_links)
    else:
      dataset = discover_lib.discover_images(
          options.image_dir,
          follow_outside_links=options.follow_outside_links)
      layout = Layout(dataset, skipped=dataset.skipped_files, description=(
          f'one folder per class under {dataset.image_dir}, split by the '
          'stable hash'))
  if layout.skipped:
    logging.warning('%d listed files are skipped before decoding (first: '
                    '%s: %s).', len(layout.skipped), *layout.skipped[0])
  return _apply_label_style(layout, options.label_style)


# --- Split folders ------------------------------------------------------------


def _subdirs(path: str) -> List[str]:
  return sorted(entry.name for entry in os.scandir(path)
                if entry.is_dir() and not entry.name.startswith('.'))


def detect_split_folders(image_dir: str, forced: bool = False) -> Optional[dict]:
  """{set name: folder name} if image_dir is a ready-made split, else None.

  A ready-made split has a train/ folder of class folders, and no folders
  other than validation/ (or val/) and test/. With `forced`, anything else
  is an error that says what was expected.
  """
  if not os.path.isdir(image_dir):
    return None  # discover_images reports the missing folder.
  names = _subdirs(image_dir)
  by_lower = {name.lower(): name for name in names}
  others = [name for name in names if name.lower() not in SPLIT_FOLDERS]
  train = by_lower.get('train')
  if train is None or others or not _subdirs(os.path.join(image_dir, train)):
    if forced:
      raise DatasetError(
          f'image_layout split_folders: {image_dir!r} should hold train/ '
          'plus validation/ (or val/) and/or test/, each with one sub-folder '
          f'per class; found folders {names}.',
          fields=('image_layout',))
    return None
  if 'val' in by_lower and 'validation' in by_lower:
    raise DatasetError(
        f'{image_dir!r} has both {by_lower["val"]}/ and '
        f'{by_lower["validation"]}/: keep one validation folder.')
  return {SPLIT_FOLDERS[lower]: name for lower, name in by_lower.items()}


def _from_split_folders(image_dir: str, folders: dict,
                        follow_outside_links: bool = False) -> Layout:
  image_dir = os.path.abspath(image_dir)
  train_dir = os.path.join(image_dir, folders[TRAIN])
  train = discover_lib.discover_images(
      train_dir, follow_outside_links=follow_outside_links)
  labels = list(train.labels)
  entries = [(TRAIN, image.label, f'{folders[TRAIN]}/{image.rel_path}')
             for image in train.images]
  walk = walk_lib.Walk(image_dir, follow_outside_links)
  for subset in (VALIDATION, TEST):
    if subset not in folders:
      continue
    folder = folders[subset]
    for name in _subdirs(os.path.join(image_dir, folder)):
      rel_paths = walk_lib.list_images(
          os.path.join(image_dir, folder, name), image_dir,
          images_lib.IMAGE_EXTENSIONS, walk)
      if not rel_paths:
        continue
      if name not in labels:
        raise DatasetError(
            f'{folder}/{name}/ is a class that {folders[TRAIN]}/ does not '
            f'have (train classes: {", ".join(labels)}): rename it to match '
            f'a train class, or add {folders[TRAIN]}/{name}/ with images.')
      entries.extend((subset, labels.index(name), rel) for rel in rel_paths)
  entries.sort(key=lambda e: (e[1], e[2]))
  images = tuple(discover_lib.ImageFile(rel, label, image_dir)
                 for _, label, rel in entries)
  subsets = _codes([subset for subset, _, _ in entries])
  carve = (VALIDATION not in folders, TEST not in folders)
  given = ', '.join(folders[s] + '/' for s in SUBSETS if s in folders)
  return Layout(
      discover_lib.Dataset(image_dir, tuple(labels), images,
                       train.skipped_classes),
      subsets=subsets, carve=carve,
      skipped=tuple(train.skipped_files) + tuple(walk.skipped),
      description=f'ready-made split folders {given} under {image_dir}')


# --- CSV labels ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CsvRow:
  """One image listed in a CSV.

  Attributes:
    path: absolute, normalised path of the image.
    rel_path: path relative to the CSV's folder, '/'-separated (hashed by
      the split).
    label: the label text, stripped.
    where: 'file.csv:line', for messages.
  """
  path: str
  rel_path: str
  label: str
  where: str


def _csv_lines(csv_path: str) -> List[Tuple[int, List[str]]]:
  """(first line number, fields) of each row of a CSV file: a quoted field
  may span lines, and messages name the line where the row starts.

  Raises:
    DatasetError: no such file, or not a readable CSV text file.
  """
  if not os.path.isfile(csv_path):
    raise DatasetError(f'CSV file {csv_path!r} does not exist: give the path '
                       'of a file of "path, label" rows.')
  try:
    # utf-8-sig: spreadsheet programs often start the file with a BOM.
    with open(csv_path, newline='', encoding='utf-8-sig') as f:
      reader = csv.reader(f, skipinitialspace=True)
      lines, start = [], 1
      for fields in reader:
        lines.append((start, fields))
        start = reader.line_num + 1
  except (UnicodeDecodeError, csv.Error) as e:
    raise DatasetError(f'{csv_path!r} is not a readable CSV text file ({e}): '
                       'save it as UTF-8 CSV with "path, label" rows.') from e
  return lines


def read_labels_csv(csv_path: str) -> Tuple[List[CsvRow], list]:
  """Reads `path, label` rows.

  Returns:
    (rows, missing): rows in file order, each image once; missing is
    (path, reason) for rows whose file does not exist.

  Raises:
    DatasetError: no such CSV, a row without two fields, or one file listed
      with two different labels.
  """
  lines = _csv_lines(csv_path)
  base = os.path.dirname(os.path.abspath(csv_path))
  name = os.path.basename(csv_path)
  rows, missing, seen = [], [], {}
  first = True
  for number, fields in lines:
    fields = [field.strip() for field in fields]
    if not any(fields):
      continue
    where = f'{name}:{number}'
    if len(fields) < 2 or not fields[0] or not fields[1]:
      raise DatasetError(
          f'{where} is {",".join(fields)!r}: each row must be "path, label", '
          'e.g. "train/cat_1.jpg, cat".')
    path = os.path.normpath(os.path.join(base, fields[0]))
    if first:
      first = False
      # A header ("path,label", "filename, class", ...) names no file and
      # has no image extension; a first image row that is missing still
      # has one, and is reported as missing below.
      if not os.path.lexists(path) and not images_lib.is_image_file(
          os.path.basename(fields[0])):
        continue
    labels_lib.check_csv_label(fields[1], where)
    fields[1] = labels_lib.normalized(fields[1], where)
    if not os.path.lexists(path):
      missing.append((path, f'listed in {where} but the file does not exist'))
      continue
    # Only regular files (after links): a FIFO or device is never opened.
    try:
      mode = os.stat(path).st_mode
    except OSError:
      mode = None  # A broken link: the bottleneck step names it.
    if mode is not None and not stat.S_ISREG(mode):
      missing.append((path, f'listed in {where}, but '
                      f'{walk_lib.not_regular_reason(mode)}'))
      continue
    real = os.path.realpath(path)
    if real != path and real in seen and seen[real].label == fields[1]:
      logging.warning('%s (%s) is the same file as %s (%s); used once.', path,
                      where, seen[real].path, seen[real].where)
      continue
    earlier = seen.get(path)
    if earlier is not None:
      if earlier.label != fields[1]:
        raise DatasetError(
            f'{path} is listed twice with different labels: {earlier.label!r} '
            f'at {earlier.where} and {fields[1]!r} at {where}. Delete the '
            'wrong row.')
      continue
    row = CsvRow(path, os.path.relpath(path, base).replace(os.sep, '/'),
                 fields[1], where)
    seen[path] = row
    seen.setdefault(real, row)
    rows.append(row)
  return rows, missing


def _codes(subsets: Sequence[str]) -> np.ndarray:
  """int8 [n] SUBSET_CODES of set names."""
  return np.array([SUBSET_CODES[s] for s in subsets], dtype=np.int8)


def _label_order(labels) -> List[str]:
  labels = set(labels)
  if all(re.fullmatch(r'[+-]?\d+', label) for label in labels):
    return sorted(labels, key=int)
  return sorted(labels)


def _dataset_from_rows(base: str, coded_rows, labels: Sequence[str]):
  """(Dataset, subsets) from (set name, CsvRow) pairs."""
  index = {label: i for i, label in enumerate(labels)}
  coded_rows = sorted(coded_rows,
                      key=lambda cr: (index[cr[1].label], cr[1].rel_path))
  images = tuple(discover_lib.image_file(row.path, row.rel_path,
                                     index[row.label], base)
                 for _, row in coded_rows)
  subsets = _codes([subset for subset, _ in coded_rows])
  return discover_lib.Dataset(base, tuple(labels), images), subsets


def _check_classes(labels, where: str) -> None:
  if len(labels) < 2:
    raise DatasetError(
        f'{where} lists images of {len(labels)} class(es) '
        f'{sorted(labels)}; a classifier needs at least two.')


def _from_one_csv(csv_path: str) -> Layout:
  rows, missing = read_labels_csv(csv_path)
  labels = _label_order(row.label for row in rows)
  _check_classes(labels, csv_path)
  base = os.path.dirname(os.path.abspath(csv_path))
  dataset, _ = _dataset_from_rows(base, [(TRAIN, row) for row in rows], labels)
  return Layout(dataset, skipped=tuple(missing), description=(
      f'labels from {csv_path}, split by the stable hash'))


def _from_split_csvs(train_csv: str, validation_csv: str,
                     test_csv: str) -> Layout:
  coded, missing = [], []
  for subset, path in ((TRAIN, train_csv), (VALIDATION, validation_csv),
                     (TEST, test_csv)):
    if path:
      rows, gone = read_labels_csv(path)
      coded.extend((subset, row) for row in rows)
      missing.extend(gone)
  train_labels = {row.label for subset, row in coded if subset == TRAIN}
  _check_classes(train_labels, train_csv)
  kept, seen = [], {}
  for subset, row in coded:
    if subset != TRAIN and row.label not in train_labels:
      raise DatasetError(
          f'{row.where}: label {row.label!r} does not occur in the train CSV '
          f'{train_csv!r} (its labels: {", ".join(_label_order(train_labels))})'
          '. Fix the label, or add images of that class to the train CSV.')
    earlier = seen.get(row.path)
    if earlier is not None:
      if earlier[1].label != row.label:
        raise DatasetError(
            f'{row.path} is listed twice with different labels: '
            f'{earlier[1].label!r} at {earlier[1].where} and {row.label!r} at '
            f'{row.where}. Delete the wrong row.')
      logging.warning('%s is listed in %s and again in %s; it is used only '
                      'in the first.', row.path, earlier[1].where, row.where)
      continue
    seen[row.path] = (subset, row)
    kept.append((subset, row))
  labels = _label_order(train_labels)
  dataset, subsets = _dataset_from_rows(
      os.path.dirname(os.path.abspath(train_csv)), kept, labels)
  given = ', '.join(p for p in (train_csv, validation_csv, test_csv) if p)
  return Layout(dataset, subsets=subsets,
                carve=(not validation_csv, not test_csv),
                skipped=tuple(missing),
                description=f'labels and split from {given}')


# --- Labels and the split -------------------------------------------------------


def _apply_label_style(layout: Layout, style: str) -> Layout:
  if style == 'verbatim':
    return layout
  renamed, first = [], {}
  for name in layout.dataset.labels:
    label = retrain_label(name)
    if label in first:
      raise DatasetError(
          f'Classes {first[label]!r} and {name!r} both become label {label!r} '
          'with label_style retrain (lower case, each run of other '
          'characters one space): rename one of them, or use label_style '
          'verbatim.',
          fields=('label_style',))
    first[label] = name
    renamed.append(label)
  dataset = dataclasses.replace(layout.dataset, labels=tuple(renamed))
  return dataclasses.replace(layout, dataset=dataset)


def make_split(layout: Layout, usable: np.ndarray, labels: np.ndarray,
               validation_percentage: float,
               testing_percentage: float) -> split_lib.Split:
  """The train / validation / test split of the usable images.

  Args:
    layout: from load_layout.
    usable: int64 [m], indices into layout.dataset.images of the images
      that could be decoded.
    labels: int64 [m], class id of each usable image.
    validation_percentage: used for the hash split, or to carve validation
      out of train when it was not given.
    testing_percentage: likewise for test.

  Returns:
    A Split of indices into `usable` (0 .. m-1).
  """
  images = layout.dataset.images
  rel_paths = [images[i].rel_path for i in usable]
  if layout.subsets is None:
    split = split_lib.split_images(rel_paths, labels, validation_percentage,
                                   testing_percentage)
  else:
    codes = layout.subsets[usable].astype(np.int8)
    carve_validation = validation_percentage if layout.carve[0] else 0.0
    carve_test = testing_percentage if layout.carve[1] else 0.0
    if carve_validation or carve_test:
      train = np.flatnonzero(codes == SUBSET_CODES[TRAIN])
      carved = split_lib.split_images([rel_paths[i] for i in train],
                                      labels[train], carve_validation,
                                      carve_test)
      codes[train[carved.validation]] = SUBSET_CODES[VALIDATION]
      codes[train[carved.test]] = SUBSET_CODES[TEST]
    split = split_lib.Split(*(np.flatnonzero(codes == SUBSET_CODES[name])
                              for name in SUBSETS))
  warn_empty_classes(split, labels, layout.dataset.labels)
  return split


def warn_empty_classes(split: split_lib.Split, labels: np.ndarray,
                       names: Sequence[str]) -> List[Tuple[str, str]]:
  """Warns about each non-empty set lacking a class; returns (set, class)."""
  found = []
  for subset in split_lib.SUBSETS:
    members = labels[split.subset(subset)]
    if not len(members):
      continue
    absent = [names[i] for i in range(len(names))
              if not np.any(members == i)]
    if absent:
      found.extend((subset, name) for name in absent)
      effect = ('the classifier cannot learn them' if subset == 'train' else
                f'the {subset} accuracy says nothing about them')
      logging.warning('The %s set has no usable images of %s: %s. Add some '
                      'to it.', subset,
                      ', '.join(repr(name) for name in absent), effect)
  return found
