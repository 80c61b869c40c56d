"""Folds for choosing and cross-fitting: stratified by class, and by group
(an image and its distorted copies always in one fold). Numpy only."""

from __future__ import annotations

from typing import Optional

import numpy as np


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
  """int [n] fold of each row: each class's rows, shuffled with `seed`,
  dealt round-robin, so every fold has each class in proportion."""
  rng = np.random.default_rng(seed)
  fold = np.empty(len(y), np.int64)
  for c in np.unique(y):
    rows = rng.permutation(np.flatnonzero(y == c))
    fold[rows] = np.arange(len(rows)) % folds
  return fold


def group_folds(y: np.ndarray, groups: np.ndarray, folds: int,
                seed: int) -> np.ndarray:
  """int [n] fold of each row, as stratified_folds deals them, but dealing
  groups (int [n], e.g. an image and its distorted copies share one) so a
  group's rows always share a fold; a group's class is its first row's."""
  _, first, inverse = np.unique(groups, return_index=True,
                                return_inverse=True)
  return stratified_folds(y[first], folds, seed)[inverse.ravel()]


def groups_per_class(y: np.ndarray, groups: Optional[np.ndarray],
                     num_classes: int) -> np.ndarray:
  """int64 [num_classes]: the groups (int [n]; None: each row its own) of
  each class id, a group's class being its first row's, as group_folds
  deals them."""
  y = np.asarray(y)
  if groups is None:
    return np.bincount(y, minlength=num_classes)
  _, first = np.unique(groups, return_index=True)
  return np.bincount(y[first], minlength=num_classes)


def usable_folds(y: np.ndarray, groups: Optional[np.ndarray],
                 num_classes: int, folds: int) -> int:
  """How many folds group_folds can give every class with rows a group
  in: `folds`, or fewer when such a class has fewer groups (under 2:
  nothing can be held out)."""
  counts = groups_per_class(y, groups, num_classes)
  counts = counts[counts > 0]
  return min(folds, int(counts.min())) if len(counts) else 0
