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
  """
  logits: np.ndarray
  n_train: int
  folds: int
  method: str
  iterations: int = 0

  @property
  def validation_logits(self) -> np.ndarray:
    """float32 [n_val, N]: the validation rows' held-out logits."""
    return self.logits[self.n_train:]

  def summary(self, val_y: Optional[np.ndarray] = None,
              train_y: Optional[np.ndarray] = None) -> dict:
    """JSON-ready: the method, and with val_y the held-out validation
    accuracy in [0, 1] and mean cross entropy (nats); with train_y too,
    when cross-fitted, the out-of-fold accuracy of every training and
    validation row (held_out_accuracy: ~9x the validation images, so far
    less noisy an estimate of the test accuracy)."""
    data = {'method': self.method, 'folds': self.folds,
            'cross_fit_iterations': self.iterations}
    if val_y is not None and len(val_y):
      z = self.validation_logits
      data.update(validation_count=int(len(val_y)),
                  validation_accuracy=head_math.accuracy(z, val_y),
                  validation_cross_entropy=head_math.cross_entropy(z, val_y))
      if train_y is not None and self.folds and len(train_y) == self.n_train:
        every = np.concatenate([train_y, val_y])
        data.update(held_out_count=int(len(every)),
                    held_out_accuracy=head_math.accuracy(self.logits, every))
    return data


def cross_fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
              num_classes: int, chosen, options,
              start: Optional[np.ndarray] = None,
              class_weights: Optional[np.ndarray] = None
              ) -> Optional[Tuple[np.ndarray, int, int]]:
  """Out-of-fold logits of the chosen setting (a solver Candidate: its l2
  and label_smoothing) on x float32 [n, D], y [n], each fit weighted by
  class_weights float [N] as in solver.fit_head; options: the
  SolverOptions (folds, seed and the fitting limits).

  Each fold (group_folds, up to options.folds, fewer when a class has
  fewer groups) is predicted by a head fitted on the other folds, warm
  started from `start` (the final fit's parameters).

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
                     start)
    logits[~inside] = fit.head().logits(x[~inside])
    iterations += fit.iterations
  return logits, folds, iterations
