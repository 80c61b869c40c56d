"""Multi-label heads: one independent sigmoid per label, fitted with L-BFGS.

probabilities = sigmoid(x @ W + b), W float32 [D, L], b float32 [L]; column
j is label j, each in [0, 1] on its own (they need not sum to 1). The fit
minimises

  mean over photos of sum over labels j of
      binary_cross_entropy(sigmoid(z @ W'_j + b_j), t_j)  +  sum_j l2_j/2 |W'_j|^2

(z as in retrain/head/solver.py: the raw vectors up to one scale, unless
standardised), with the same `lbfgs` and the same grid of L2 strengths. The
labels do not interact, so fitting them in one problem is fitting each
alone, and each label gets its own L2 strength at the cost of one grid:

1. k-fold on all the photos it is given (folds stratified by each photo's
   rarest label; a photo's distorted copies stay in its fold): every
   candidate L2 is fitted on k-1 folds and predicts the held-out fold, so
   every photo gets an out-of-fold probability of every label under every
   candidate.
2. For each label, the L2 with the lowest out-of-fold cross entropy of that
   label wins (ties: the stronger).
3. For each label, the threshold is chosen on the winner's out-of-fold
   probabilities of the original photos: the one with the highest F1
   (predicted when probability >= threshold), midway between that
   probability and the next lower one.
4. Refit on all the photos with each label's L2.

Nothing here sees the test set.
"""

from __future__ import annotations

import dataclasses
import time
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.head import folds as folds_lib
from retrain.head import lbfgs as lbfgs_lib
from retrain.head import solver as solver_lib
from retrain.head.model import Head

# A label with no positive (or no negative) out-of-fold photo gets this.
DEFAULT_THRESHOLD = 0.5


class _SigmoidProblem(lbfgs_lib.Problem):
  """The objective above over fixed vectors (theta as in lbfgs.Problem)."""

  def __init__(self, x: np.ndarray, targets: np.ndarray, mean: np.ndarray,
               scale: np.ndarray, l2: np.ndarray):
    self.x = tf.constant(x)
    self.n, self.dim = x.shape
    self.classes = targets.shape[1]
    self.mean, self.scale = mean, scale
    self.l2 = np.broadcast_to(np.asarray(l2, np.float64), (self.classes,))
    self.targets = targets.astype(np.float64)
    self.share = 1.0 / max(self.n, 1)
    self.last_logits = None

  def __call__(self, theta) -> Tuple[float, np.ndarray]:
    w, b = self.split(theta)
    z = self.logits(w, b)
    self.last_logits = z
    # log(1 + e^z) - t z, computed without overflow.
    data_loss = float(np.sum(np.logaddexp(0.0, z) - self.targets * z)
                      ) * self.share
    g = (_sigmoid(z) - self.targets) * self.share  # [n, L]
    gx = tf.matmul(tf.constant(g, tf.float32), self.x, transpose_a=True)
    gx = gx.numpy().T.astype(np.float64)  # [D, L]
    gw = (gx - np.outer(self.mean, g.sum(axis=0))) / self.scale[:, None]
    gw += self.l2[None, :] * w
    loss = data_loss + 0.5 * float(np.sum(self.l2 * np.sum(w * w, axis=0)))
    return loss, np.concatenate([gw.ravel(), g.sum(axis=0)])


def _sigmoid(z: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * z))


def probabilities(head: Head, x: np.ndarray) -> np.ndarray:
  """float32 [n, L] per-label probabilities of vectors x float32 [n, D]."""
  return _sigmoid(head.logits(x).astype(np.float64)).astype(np.float32)


@dataclasses.dataclass
class MultiLabelResult:
  """What `fit_multilabel` produced.

  Attributes:
    head: weights float32 [D, L], biases [L] (multi_label set).
    thresholds: float32 [L] in (0, 1]: label j is predicted when its
      probability is at least thresholds[j].
    l2: float [L], each label's chosen L2 strength.
    out_of_fold: float32 [n, L] each original photo's out-of-fold
      probabilities under its labels' chosen L2 (None: no folds).
    candidates: [{'l2': value, 'cross_entropy': [L] out-of-fold}] in the
      order tried.
    selection: 'k-fold' or 'single' (too few photos to hold any out).
    seconds: wall time.
  """
  head: Head
  thresholds: np.ndarray
  l2: np.ndarray
  out_of_fold: Optional[np.ndarray]
  candidates: List[dict]
  selection: str
  seconds: float

  def summary(self, labels) -> dict:
    """JSON-ready: each label's L2 and threshold, and the candidates."""
    return {'solver': 'lbfgs', 'objective': 'sigmoid per label',
            'selection': self.selection,
            'labels': [{'label': name, 'l2': float(self.l2[j]),
                        'threshold': float(self.thresholds[j])}
                       for j, name in enumerate(labels)],
            'candidates': self.candidates, 'seconds': self.seconds}


def _fit(x, targets, l2, options, standard, start=None) -> Head:
  """One fit of every label; returns the head and its parameters."""
  mean, scale = standard
  problem = _SigmoidProblem(x, targets, mean, scale, l2)
  theta0 = (np.zeros((x.shape[1] + 1) * targets.shape[1]) if start is None
            else start)
  theta, _ = lbfgs_lib.lbfgs(problem, theta0, options.max_iterations,
                             options.tolerance)
  fit = lbfgs_lib.Fit(theta, problem, 0)
  return dataclasses.replace(fit.head(), multi_label=True), theta


def choose_threshold(p: np.ndarray, t: np.ndarray) -> float:
  """The F1-best threshold of probabilities p [m] for truths t bool [m]."""
  if not t.any() or t.all():
    return DEFAULT_THRESHOLD
  order = np.argsort(-p, kind='stable')
  p, t = p[order], t[order]
  tp = np.cumsum(t)
  f1 = 2 * tp / (np.arange(1, len(p) + 1) + t.sum())
  # Only the last of equal probabilities is a threshold one can set.
  last = np.append(p[1:] != p[:-1], True)
  k = int(np.flatnonzero(last)[np.argmax(f1[last])])
  below = p[k + 1] if k + 1 < len(p) else 0.0
  return float((p[k] + below) / 2)


def _out_of_fold(x, targets, strata, groups, options, grid):
  """float64 [C, n, L] out-of-fold probabilities of each candidate."""
  # Folds over groups (a photo and its copies), stratified by stratum.
  first = np.unique(groups, return_index=True)[1]
  group_fold = folds_lib.stratified_folds(strata[first], options.folds,
                                           options.seed)
  fold = group_fold[np.searchsorted(np.unique(groups), groups)]
  out = np.zeros((len(grid), *targets.shape))
  for k in range(options.folds):
    inside = fold != k
    if not inside.any() or inside.all():
      continue
    standard = lbfgs_lib.standardisation(x[inside], options.standardise)
    start = None
    for c, l2 in enumerate(grid):
      head, start = _fit(x[inside], targets[inside], l2, options, standard,
                         start)
      out[c][~inside] = probabilities(head, x[~inside])
  return out


def fit_multilabel(x: np.ndarray, targets: np.ndarray, strata: np.ndarray,
                   options: solver_lib.SolverOptions,
                   groups: Optional[np.ndarray] = None,
                   original: Optional[np.ndarray] = None
                   ) -> MultiLabelResult:
  """Chooses each label's L2 and threshold and fits (module docstring).

  Args:
    x: float32 [n, D] vectors of the photos to fit on (training and
      validation, distorted copies included).
    targets: bool [n, L], the labels of each row.
    strata: int [n], each row's rarest label (the folds' stratum).
    options: the grid (l2_grid), folds, seed and L-BFGS limits.
    groups: int [n], rows with one group id stay in one fold (a photo and
      its copies); None: each row its own.
    original: bool [n], the rows thresholds are chosen on (not copies);
      None: every row.
  """
  started = time.monotonic()
  x = np.ascontiguousarray(x, np.float32)
  targets = np.asarray(targets, bool)
  n, labels = targets.shape
  groups = np.arange(n) if groups is None else np.asarray(groups)
  original = np.ones(n, bool) if original is None else np.asarray(original)
  grid = sorted(options.l2_grid, reverse=True)
  if len(np.unique(groups)) < 2 * options.folds or len(grid) == 1:
    l2 = np.full(labels, grid[len(grid) // 2])
    head, _ = _fit(x, targets, l2, options, lbfgs_lib.standardisation(
        x, options.standardise))
    return MultiLabelResult(head, np.full(labels, DEFAULT_THRESHOLD,
                                          np.float32), l2, None, [],
                            'single', time.monotonic() - started)
  oof = _out_of_fold(x, targets, strata, groups, options, grid)
  clipped = np.clip(oof[:, original], 1e-7, 1 - 1e-7)
  t = targets[original]
  ce = -np.mean(t * np.log(clipped) + (~t) * np.log1p(-clipped), axis=1)
  chosen = np.argmin(ce, axis=0)  # [L]; ties: the first, the stronger L2
  l2 = np.array([grid[c] for c in chosen])
  best = np.stack([oof[chosen[j], :, j] for j in range(labels)], axis=1)
  thresholds = np.array([choose_threshold(best[original, j], t[:, j])
                         for j in range(labels)], np.float32)
  head, _ = _fit(x, targets, l2, options, lbfgs_lib.standardisation(
      x, options.standardise))
  candidates = [{'l2': float(v), 'cross_entropy': ce[c].tolist()}
                for c, v in enumerate(grid)]
  seconds = time.monotonic() - started
  logging.info('Multi-label head (L-BFGS, one sigmoid per label): L2 %s and '
               'thresholds %s chosen on %d-fold out-of-fold predictions of '
               '%d photos; %.1f s.', l2.tolist(),
               np.round(thresholds.astype(float), 3).tolist(), options.folds,
               int(original.sum()), seconds)
  return MultiLabelResult(head, thresholds, l2,
                          best[original].astype(np.float32), candidates,
                          'k-fold', seconds)
