"""Held-out predictions: each image predicted by a head that did not train
on it (see retrain/head/solver.py, "Held-out predictions")."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

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


@dataclasses.dataclass(frozen=True)
class Groups:
  """Which rows of a solver's [train; val] belong together.

  Attributes:
    photo: int [n_train] photo of each training row: a photo and its
      distorted copies share one (the copies follow their photo).
    fold: int [n_train + n_val] rows that must share a fold when
      cross-fitting: a photo, its copies and its near-duplicates (names
      that differ only from `_nohash_` on); None: each photo with its
      copies, each validation row alone.
  """
  photo: np.ndarray
  fold: Optional[np.ndarray] = None

  def fold_groups(self, n_val: int) -> np.ndarray:
    """int64 [n_train + n_val]: `fold`, or the photo groups then one group
    per validation row."""
    if self.fold is not None:
      return np.asarray(self.fold, np.int64)
    photo = np.asarray(self.photo, np.int64)
    return np.concatenate([photo, np.max(photo, initial=-1) + 1 +
                           np.arange(n_val)])


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


def cross_fit(vectors: lbfgs_lib.Vectors, y: np.ndarray, groups: np.ndarray,
              num_classes: int, chosen, options,
              start: Optional[np.ndarray] = None,
              class_weights: Optional[np.ndarray] = None
              ) -> Optional[Tuple[np.ndarray, int, int]]:
  """Out-of-fold logits of the chosen setting (a solver Candidate: its l2
  and label_smoothing) on vectors.x float32 [n, D], y [n], each fit
  weighted by class_weights float [N] as in solver.fit_head; options: the
  SolverOptions (folds, seed and the fitting limits).

  Each fold (group_folds, up to options.folds, fewer when a class has
  fewer groups) is predicted by a head fitted on the other folds; the
  folds' heads are fitted as one problem (_Folds), each warm started from
  `start` (the final fit's parameters).

  Returns:
    (logits float32 [n, N], folds, iterations of the joint fit), or None
    when some class that has rows has fewer than two groups (nothing to
    hold out).
  """
  folds = folds_lib.usable_folds(y, groups, num_classes, options.folds)
  if folds < 2:
    return None
  fold = folds_lib.group_folds(y, groups, folds, options.seed)
  problem = _Folds(vectors, y, num_classes, fold, folds, chosen,
                   lbfgs_lib.class_sample_weight(class_weights, y))
  theta0 = np.tile(np.zeros((problem.dim + 1) * num_classes) if start is None
                   else start, folds)
  theta, iterations = lbfgs_lib.lbfgs(problem, theta0, options.max_iterations,
                                      options.tolerance)
  return problem.out_of_fold(theta, fold), folds, iterations


def fold_grid(candidates, vectors: lbfgs_lib.Vectors, y: np.ndarray,
              num_classes: int, fold: np.ndarray, options,
              class_weights: Optional[np.ndarray] = None) -> list:
  """k-fold scores of solver Candidates on vectors.x float32 [n, D], y int
  [n] in [0, num_classes), fold int [n] in [0, options.folds)
  (class_weights as in cross_fit): for each candidate, in order, every
  fold's fit on the other folds as one problem (see _Folds), warm-started
  from the previous candidate's (the grid's L2 path; from zeros when the
  label smoothing changes).

  Returns:
    [(out-of-fold logits float32 [n, N], the mean of the folds' parameters
    float64 [(D + 1) * N], L-BFGS iterations)] in the candidates' order.
  """
  weights = lbfgs_lib.class_sample_weight(class_weights, y)
  out, problem, theta = [], None, None
  for c in candidates:
    if problem is None or problem.smoothing != c.label_smoothing:
      problem = _Folds(vectors, y, num_classes, fold, options.folds, c,
                       weights)
      theta = np.zeros(options.folds * (problem.dim + 1) * num_classes)
    problem.l2 = c.l2
    theta, iterations = lbfgs_lib.lbfgs(problem, theta, options.max_iterations,
                                        options.tolerance)
    out.append((problem.out_of_fold(theta, fold),
                theta.reshape(options.folds, -1).mean(0), iterations))
  return out


class _Folds:
  """The `folds` fits of cross_fit as one L-BFGS problem: the sum of each
  fold's objective (lbfgs.Problem's, on the rows outside the fold, with
  their own standardisation), over the folds' parameters side by side,
  theta float64 [folds * (D + 1) * N]. The products with the vectors
  (lbfgs.Vectors) x float32 [n, D] are one [n, D] x [D, folds * N]
  product each way for every fold at once, where separate fits read the
  vectors once a fold: those products are a fit's cost, and the joint fit
  takes about as many iterations as its slowest fold."""

  def __init__(self, vectors, y, num_classes: int, fold, folds: int, chosen,
               weights=None):
    self.x, self.classes = vectors.tensor(), num_classes
    self.folds, self.l2, self.dim = folds, chosen.l2, vectors.x.shape[1]
    self.smoothing = chosen.label_smoothing
    inside = (fold[:, None] != np.arange(folds)).astype(np.float64)
    if weights is not None:
      inside *= np.asarray(weights, np.float64)[:, None]
    self.share = (inside / np.maximum(inside.sum(0), 1e-300))[..., None]
    self.targets = head_math.smoothed_targets(
        y, num_classes, chosen.label_smoothing)[:, None]  # [n, 1, N]
    standards = [vectors.standardisation(fold != k) for k in range(folds)]
    # Each fold's mean and scale side by side, [D, folds].
    self.to_input = lbfgs_lib.Standard(np.stack([m for m, _ in standards], 1),
                                       np.stack([s for _, s in standards], 1))

  def _split(self, theta):
    """(W float64 [D, folds, N] standardised, b [folds, N])."""
    blocks = theta.reshape(self.folds, self.dim + 1, self.classes)
    return blocks[:, :-1].transpose(1, 0, 2), blocks[:, -1]

  def logits(self, theta) -> np.ndarray:
    """float64 [n, folds, N]: each fold's head's logits of every row."""
    w, b = self._split(theta)
    w_in = self.to_input.weights(w)
    z = tf.matmul(self.x, tf.constant(w_in.reshape(self.dim, -1), tf.float32))
    return z.numpy().astype(np.float64).reshape(
        len(self.share), self.folds, -1) + self.to_input.biases(b, w_in)

  def out_of_fold(self, theta, fold) -> np.ndarray:
    """float32 [n, N]: each row's logits by the head of its fold."""
    return self.logits(theta)[np.arange(len(fold)), fold].astype(np.float32)

  def __call__(self, theta):
    w, _ = self._split(theta)
    log_p = head_math.log_softmax(self.logits(theta))
    g = (np.exp(log_p) - self.targets) * self.share  # [n, folds, N]
    gx = tf.matmul(self.x, tf.constant(g.reshape(len(g), -1), tf.float32),
                   transpose_a=True).numpy().astype(np.float64)
    gx = gx.reshape(self.dim, self.folds, self.classes)
    gb = g.sum(0)  # [folds, N]
    gw = self.to_input.gradient(gx, gb) + self.l2 * w
    loss = (-np.sum(self.share * self.targets * log_p) +
            0.5 * self.l2 * float(np.sum(w * w)))
    grad = np.concatenate([gw.transpose(1, 0, 2), gb[:, None]], 1)
    return loss, grad.ravel()
