"""Stable train / validation / test split.

Each image's set comes from a hash of its path relative to the image folder,
so it does not depend on which other images exist, on the order they are
listed, on where the folder lives, or on a random seed: adding images never
moves an old image to another set, and the test set stays untouched by
training across runs.

As in retrain.py, everything from `_nohash_` on in the file name is left out
of the hash, so `cat_nohash_1.jpg` and `cat_nohash_2.jpg` (near-duplicates)
always land in the same set.

One exception keeps small classes usable: a class with at least 3 images
but no image hashed into train, validation or test (when that set was asked
for) gets one image moved there from its largest set. That is the only case where the set of an image
can depend on other images, and only while the class has no image of its own
in that set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Sequence

import numpy as np

from retrain.errors import DatasetError

# The three sets, in this order. Where a set is stored as a number (the
# int8 arrays of retrain.data.sources.Layout.subsets), it is its index here.
TRAIN, VALIDATION, TEST = 'train', 'validation', 'test'
SUBSETS = (TRAIN, VALIDATION, TEST)
SUBSET_CODES = {name: code for code, name in enumerate(SUBSETS)}
# retrain.py's constant, kept so percentages map to the same hash buckets.
_MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1
_NOHASH = re.compile(r'_nohash_.*$')


def near_duplicate_key(path: str) -> str:
  """`path` ('/'-separated) with everything from `_nohash_` on in its file
  name left out: what near-duplicates share, and what the split hashes."""
  directory, _, name = path.rpartition('/')
  return directory + '/' + _NOHASH.sub('', name) if directory else _NOHASH.sub(
      '', name)


def near_duplicate_groups(paths: Sequence[str]) -> np.ndarray:
  """int64 [n] group of each path: paths with one near_duplicate_key share
  a group (so held-out predictions hold them out together, as the split
  keeps them in one set)."""
  keys = [near_duplicate_key(str(p).replace('\\', '/')) for p in paths]
  if not keys:
    return np.zeros(0, np.int64)
  return np.unique(keys, return_inverse=True)[1].astype(np.int64).ravel()


def hash_percentage(rel_path: str) -> float:
  """Position in [0, 100] of an image, from its relative path.

  Args:
    rel_path: path relative to the image folder, '/'-separated.
  """
  key = near_duplicate_key(rel_path)
  digest = int(hashlib.sha1(key.encode('utf-8')).hexdigest(), 16)
  return ((digest % (_MAX_NUM_IMAGES_PER_CLASS + 1)) *
          (100.0 / _MAX_NUM_IMAGES_PER_CLASS))


@dataclasses.dataclass(frozen=True)
class Split:
  """Indices into the dataset's image list, per subset (int64 arrays)."""
  train: np.ndarray
  validation: np.ndarray
  test: np.ndarray

  def subset(self, name: str) -> np.ndarray:
    return getattr(self, name)


def check_percentages(validation_percentage: float,
                      testing_percentage: float) -> None:
  for name, value in (('validation_percentage', validation_percentage),
                      ('testing_percentage', testing_percentage)):
    if not 0 <= value < 100:
      raise DatasetError(f'{name}={value} is out of range: give a percentage '
                         'from 0 up to (not including) 100.', fields=(name,))
  if validation_percentage + testing_percentage >= 100:
    raise DatasetError(
        f'validation_percentage ({validation_percentage}) plus '
        f'testing_percentage ({testing_percentage}) leave no images to '
        'train on: their sum must be below 100.',
        fields=('validation_percentage', 'testing_percentage'))


def split_images(rel_paths: Sequence[str], labels: Sequence[int],
                 validation_percentage: float,
                 testing_percentage: float) -> Split:
  """Assigns every image to train, validation or test.

  Args:
    rel_paths: image paths relative to the image folder.
    labels: class id of each image.
    validation_percentage: share of each class for validation, in [0, 100).
    testing_percentage: share of each class for test, in [0, 100).

  Returns:
    A Split whose three index arrays partition range(len(rel_paths)).
  """
  check_percentages(validation_percentage, testing_percentage)
  percent = np.array([hash_percentage(p) for p in rel_paths], dtype=np.float64)
  labels = np.asarray(labels, dtype=np.int64)
  subset = np.full(len(rel_paths), 0, dtype=np.int8)  # 0 train, 1 val, 2 test
  subset[percent < validation_percentage + testing_percentage] = 2
  subset[percent < validation_percentage] = 1

  # Small classes: guarantee one image in each set that was asked for, where
  # the class has at least 3 images, by borrowing from the largest set.
  wanted = [0] + [code for code, pct in ((1, validation_percentage),
                                         (2, testing_percentage)) if pct > 0]
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    if len(members) < 3:
      continue
    for code in wanted:
      if np.any(subset[members] == code):
        continue
      sizes = [np.sum(subset[members] == c) for c in range(3)]
      donor = int(np.argmax(sizes))
      candidates = members[subset[members] == donor]
      # The donor image nearest to the bucket it moves to: lowest hash for
      # validation and test, highest for train.
      pick = np.argmax(percent[candidates]) if code == 0 else np.argmin(
          percent[candidates])
      subset[candidates[pick]] = code

  return Split(train=np.flatnonzero(subset == 0),
               validation=np.flatnonzero(subset == 1),
               test=np.flatnonzero(subset == 2))
