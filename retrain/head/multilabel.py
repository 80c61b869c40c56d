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
from typing import Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.head import folds as folds_lib
from retrain.head import lbfgs as lbfgs_lib
from retrain.head import math as head_math
from retrain.head import solver as solver_lib
from retrain.head.model import Head

# A label with no positive (or no negative) out-of-fold photo gets this.
DEFAULT_THRESHOLD = 0.5


class Rows:
  """The vectors float32 [n, D] a fit reads, held in memory: one chunk.

  A fit only iterates `chunks()` and takes `subset`s, so StreamedRows
  (vectors read from the bottleneck cache a chunk at a time) fits the same
  head without holding the vectors.
  """

  def __init__(self, x: np.ndarray):
    self.x = np.ascontiguousarray(x, np.float32)
    self.n, self.dim = self.x.shape
    self._tensor = None

  def subset(self, rows: np.ndarray) -> 'Rows':
    """The rows `rows` (int64 positions into these), in that order."""
    return Rows(self.x[rows])

  def chunks(self) -> Iterator[Tuple[object, object]]:
    """(positions into these rows, float32 [m, D] their vectors)."""
    if self._tensor is None:
      self._tensor = tf.constant(self.x)
    yield slice(None), self._tensor

  def standardisation(self, enabled: bool):
    """lbfgs.standardisation of these vectors."""
    return lbfgs_lib.standardisation(self.x, enabled)


class StreamedRows(Rows):
  """Vectors read with `reader` (a bottleneck_cache.chunks.ChunkReader:
  `read(items)`, `shard`, `row`, `dim`) at most `capacity` at a time, in
  the order they lie on disk: memory is one chunk, not the data set."""

  def __init__(self, reader, items: np.ndarray, capacity: int):
    self.reader, self.capacity = reader, max(1, int(capacity))
    self.items = np.asarray(items, np.int64)
    self.n, self.dim = len(self.items), reader.dim
    self.order = np.lexsort((reader.row[self.items],
                             reader.shard[self.items]))

  def subset(self, rows: np.ndarray) -> 'StreamedRows':
    return StreamedRows(self.reader, self.items[rows], self.capacity)

  def chunks(self) -> Iterator[Tuple[object, object]]:
    for start in range(0, self.n, self.capacity):
      part = self.order[start:start + self.capacity]
      yield part, self.reader.read(self.items[part])

  def standardisation(self, enabled: bool):
    """lbfgs.standardisation's figures, accumulated over the chunks
    (float64 sums of each chunk's centred moments)."""
    count, mean = 0, np.zeros(self.dim)
    m2, squares = np.zeros(self.dim), 0.0
    for _, x in self.chunks():
      x = x.astype(np.float64)
      k, chunk_mean = len(x), x.mean(axis=0)
      delta = chunk_mean - mean
      total = count + k
      m2 += ((x - chunk_mean) ** 2).sum(axis=0) + delta ** 2 * count * k / total
      mean += delta * k / total
      squares += float(np.sum(x * x))
      count = total
    if not enabled:
      rms = float(np.sqrt(squares / max(count * self.dim, 1)))
      return np.zeros(self.dim), np.full(self.dim, rms if rms > 0 else 1.0)
    scale = np.sqrt(np.maximum(m2 / max(count, 1), 0.0))
    return mean, np.where(scale > 1e-8, scale, 1.0)


class _SigmoidProblem(lbfgs_lib.Problem):
  """The objective above over fixed vectors (theta as in lbfgs.Problem),
  its loss and gradient summed over the chunks of `rows`."""

  def __init__(self, rows: Rows, targets: np.ndarray, mean: np.ndarray,
               scale: np.ndarray, l2: np.ndarray):
    self.rows = rows
    self.n, self.dim = rows.n, rows.dim
    self.classes = targets.shape[1]
    self.to_input = lbfgs_lib.Standard(mean, scale)
    self.l2 = np.broadcast_to(np.asarray(l2, np.float64), (self.classes,))
    self.targets = targets.astype(np.float64)
    self.share = 1.0 / max(self.n, 1)

  def __call__(self, theta) -> Tuple[float, np.ndarray]:
    w, b = self.split(theta)
    w_in = self.to_input.weights(w)
    shift = self.to_input.biases(b, w_in)
    w_t = tf.constant(w_in.T, tf.float32)
    data_loss, g_sum = 0.0, np.zeros(self.classes)
    gx = np.zeros((self.dim, self.classes))
    for part, x in self.rows.chunks():
      z = tf.matmul(w_t, x, transpose_b=True).numpy().T.astype(
          np.float64) + shift
      t = self.targets[part]
      # log(1 + e^z) - t z, computed without overflow.
      data_loss += float(np.sum(np.logaddexp(0.0, z) - t * z)) * self.share
      g = (head_math.sigmoid(z) - t) * self.share  # [m, L]
      gx += tf.matmul(tf.constant(g, tf.float32), x,
                      transpose_a=True).numpy().T.astype(np.float64)
      g_sum += g.sum(axis=0)
    gw = self.to_input.gradient(gx, g_sum)
    gw += self.l2[None, :] * w
    loss = data_loss + 0.5 * float(np.sum(self.l2 * np.sum(w * w, axis=0)))
    return loss, np.concatenate([gw.ravel(), g_sum])


def probabilities(head: Head, x) -> np.ndarray:
  """float32 [n, L] per-label probabilities of vectors x: float32 [n, D],
  or Rows (read chunk by chunk)."""
  if not isinstance(x, Rows):
    return head_math.sigmoid(head.logits(x).astype(np.float64)).astype(
        np.float32)
  out = np.zeros((x.n, head.biases.shape[0]), np.float32)
  for part, chunk in x.chunks():
    out[part] = probabilities(head, np.asarray(chunk))
  return out


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
    """JSON-ready: each label's L2 and threshold, and the candidates.
    `imbalance_adjustment` is always None: no class bias is shifted (each
    label's threshold, chosen on held-out predictions, does that work)."""
    return {'solver': 'lbfgs', 'objective': 'sigmoid per label',
            'selection': self.selection, 'imbalance_adjustment': None,
            'labels': [{'label': name, 'l2': float(self.l2[j]),
                        'threshold': float(self.thresholds[j])}
                       for j, name in enumerate(labels)],
            'candidates': self.candidates, 'seconds': self.seconds}


def _fit(rows: Rows, targets, l2, options, standard, start=None) -> Head:
  """One fit of every label; returns the head and its parameters."""
  mean, scale = standard
  problem = _SigmoidProblem(rows, targets, mean, scale, l2)
  theta0 = (np.zeros((rows.dim + 1) * targets.shape[1]) if start is None
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


def _out_of_fold(rows: Rows, targets, strata, groups, options, grid):
  """float32 [C, n, L] out-of-fold probabilities of each candidate."""
  # Folds over groups (a photo and its copies), stratified by stratum.
  fold = folds_lib.group_folds(strata, groups, options.folds, options.seed)
  out = np.zeros((len(grid), *targets.shape), np.float32)
  for k in range(options.folds):
    inside = fold != k
    if not inside.any() or inside.all():
      continue
    fit_rows = rows.subset(np.flatnonzero(inside))
    held_rows = rows.subset(np.flatnonzero(~inside))
    standard = fit_rows.standardisation(options.standardise)
    start = None
    for c, l2 in enumerate(grid):
      head, start = _fit(fit_rows, targets[inside], l2, options, standard,
                         start)
      out[c][~inside] = probabilities(head, held_rows)
  return out


def fit_multilabel(x, targets: np.ndarray, strata: np.ndarray,
                   options: solver_lib.SolverOptions,
                   groups: Optional[np.ndarray] = None,
                   original: Optional[np.ndarray] = None
                   ) -> MultiLabelResult:
  """Chooses each label's L2 and threshold and fits (module docstring).

  Args:
    x: float32 [n, D] vectors of the photos to fit on (training and
      validation, distorted copies included), or Rows of them (e.g.
      StreamedRows: read from the cache a chunk at a time; the fit is the
      same, the memory one chunk plus float32 [candidates, n, L]).
    targets: bool [n, L], the labels of each row.
    strata: int [n], each row's rarest label (the folds' stratum).
    options: the grid (l2_grid), folds, seed and L-BFGS limits.
    groups: int [n], rows with one group id stay in one fold (a photo and
      its copies); None: each row its own.
    original: bool [n], the rows thresholds are chosen on (not copies);
      None: every row.
  """
  started = time.monotonic()
  rows = x if isinstance(x, Rows) else Rows(x)
  targets = np.asarray(targets, bool)
  n, labels = targets.shape
  groups = np.arange(n) if groups is None else np.asarray(groups)
  original = np.ones(n, bool) if original is None else np.asarray(original)
  grid = sorted(options.l2_grid, reverse=True)
  if len(np.unique(groups)) < 2 * options.folds or len(grid) == 1:
    l2 = np.full(labels, grid[len(grid) // 2])
    head, _ = _fit(rows, targets, l2, options,
                   rows.standardisation(options.standardise))
    return MultiLabelResult(head, np.full(labels, DEFAULT_THRESHOLD,
                                          np.float32), l2, None, [],
                            'single', time.monotonic() - started)
  oof = _out_of_fold(rows, targets, strata, groups, options, grid)
  clipped = np.clip(oof[:, original].astype(np.float64), 1e-7, 1 - 1e-7)
  t = targets[original]
  ce = -np.mean(t * np.log(clipped) + (~t) * np.log1p(-clipped), axis=1)
  chosen = np.argmin(ce, axis=0)  # [L]; ties: the first, the stronger L2
  l2 = np.array([grid[c] for c in chosen])
  best = np.stack([oof[chosen[j], :, j] for j in range(labels)], axis=1)
  thresholds = np.array([choose_threshold(best[original, j], t[:, j])
                         for j in range(labels)], np.float32)
  head, _ = _fit(rows, targets, l2, options,
                 rows.standardisation(options.standardise))
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
