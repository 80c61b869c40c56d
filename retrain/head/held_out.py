"""Held-out predictions: each image predicted by a head that did not train
on it (see retrain/head/solver.py, "Held-out predictions")."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

from retrain.head import folds as folds_lib
from retrain.head import lbfgs as lbfgs_lib
from retrain.head import math as head_math


@dataclasses.dataclass
class HeldOut:
  """Predictions of heads that did not train on the image they predict.

  Attributes:
    logits: float32 [n_train + n_val, N], row i of [train_x; val_x] (the
      order fit_head was given them); rows without a held-out prediction
      are NaN (the training rows when the final head did not train on
      validation: then only its validation logits are held out).
    n_train: rows of train_x.
    folds: folds cross-fitted, 0 when the final head's own validation
      logits are used.
    method: one sentence saying how the logits were obtained.
    iterations: L-BFGS iterations the cross-fitting took.
    y: int64 [n_train + n_val] class id of each row (None: unknown, then
      `summary` gives no figures).
    photos: int64 rows of the photos whose held-out logits are the run's
      validation figures: when cross-fitted every training photo (each
      group's first row; distorted copies left out) then every validation
      photo; else the validation rows. None: every row with a prediction.
  """
  logits: np.ndarray
  n_train: int
  folds: int
  method: str
  iterations: int = 0
  y: Optional[np.ndarray] = None
  photos: Optional[np.ndarray] = None

  @property
  def validation_logits(self) -> np.ndarray:
    """float32 [n_val, N]: the validation rows' held-out logits."""
    return self.logits[self.n_train:]

  @property
  def photo_rows(self) -> np.ndarray:
    """int64 [m]: the rows every figure called validation is computed on
    (see `photos`), training photos first, in the order given."""
    if self.photos is not None:
      return np.asarray(self.photos, np.int64)
    return np.flatnonzero(~np.isnan(self.logits).any(axis=1))

  def summary(self) -> dict:
    """JSON-ready: the method, and with `y` the validation figures of
    `photo_rows`: accuracy in [0, 1], mean cross entropy (nats) and count
    (when cross-fitted, every training and validation photo: ~9x the
    validation photos, so a far steadier estimate of the test accuracy,
    also given as held_out_accuracy and held_out_count), and the accuracy
    of the validation photos alone (validation_split_only)."""
    data = {'method': self.method, 'folds': self.folds,
            'cross_fit_iterations': self.iterations}
    rows = self.photo_rows
    if self.y is None or not len(rows):
      return data
    z, y = self.logits[rows], np.asarray(self.y)[rows]
    data.update(validation_count=int(len(rows)),
                validation_accuracy=head_math.accuracy(z, y),
                validation_cross_entropy=head_math.cross_entropy(z, y))
    if self.folds:
      data.update(held_out_count=data['validation_count'],
                  held_out_accuracy=data['validation_accuracy'])
      split = rows[rows >= self.n_train]
      if len(split):
        data['validation_split_only'] = {
            'count': int(len(split)),
            'accuracy': head_math.accuracy(self.logits[split],
                                           np.asarray(self.y)[split]),
            'note': 'the validation photos alone: fewer, so a noisier '
                    'estimate; not what the run reports'}
    return data


def photo_rows(groups: np.ndarray, n_val: int) -> np.ndarray:
  """int64 rows of [train; val] that are photos: the first row of each
  training group (groups int [n_train]; a photo's distorted copies share
  its group and follow it), then every validation row."""
  _, first = np.unique(groups, return_index=True)
  return np.concatenate([np.sort(first),
                         len(groups) + np.arange(n_val)]).astype(np.int64)


def describe(photos: int, folds: int) -> str:
  """How cross-fitted figures were obtained, for the log and summaries."""
  return (f'out-of-fold predictions of the {photos} training and validation '
          f'photos, {folds} folds (cross-fitting: each predicted by a head '
          'that did not train on it)')


def cross_fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
              num_classes: int, chosen, options,
              start: Optional[lbfgs_lib.Fit] = None,
              class_weights: Optional[np.ndarray] = None
              ) -> Optional[Tuple[np.ndarray, int, int]]:
  """Out-of-fold logits of the chosen setting (a solver Candidate: its l2
  and label_smoothing) on x float32 [n, D], y [n], each fit weighted by
  class_weights float [N] as in solver.fit_head; options: the
  SolverOptions (folds, seed and the fitting limits).

  Each fold (group_folds, up to options.folds, fewer when a class has
  fewer groups) is predicted by a head fitted on the other folds, warm
  started from `start` (the final fit: its parameters and L-BFGS
  curvature pairs).

  Returns:
    (logits float32 [n, N], folds, iterations summed), or None when some
    class that has rows has fewer than two groups (nothing to hold out).
  """
  _, first = np.unique(groups, return_index=True)
  per_class = np.bincount(y[first], minlength=num_classes)
  folds = min(options.folds, int(per_class[per_class > 0].min()))
  if folds < 2:
    return None
  fold = folds_lib.group_folds(y, groups, folds, options.seed)
  logits = np.full((len(y), num_classes), np.nan, np.float32)
  iterations = 0
  fitter = lbfgs_lib.SoftmaxLbfgs.of(chosen.l2, chosen.label_smoothing,
                                     options)
  for k in range(folds):
    inside = fold != k
    fit = fitter.fit(x[inside], y[inside], num_classes,
                     lbfgs_lib.class_sample_weight(class_weights, y[inside]),
                     None if start is None else start.theta,
                     memory=lbfgs_lib.carried(start, chosen.l2))
    logits[~inside] = fit.head().logits(x[~inside])
    iterations += fit.iterations
  return logits, folds, iterations
