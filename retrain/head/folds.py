"""Folds for choosing and cross-fitting: stratified by class, and by group
(an image and its distorted copies always in one fold). Numpy only."""

from __future__ import annotations

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
