""""Not one of my classes": a novelty score on the feature vector.

The score of a vector x float32 [D] (the module's output, what the head
reads) is its squared Mahalanobis distance to the nearest class mean, with
one covariance shared by the classes, divided by D (so in-distribution
images score about 1):

  novelty(x) = min over classes c of (x - m_c)' S^-1 (x - m_c) / D

m_c is the mean of class c's vectors; S the within-class covariance,
shrunk towards a multiple of the identity, S = (1 - a) C + a (tr C / D) I,
with a chosen by the Ledoit-Wolf formula (a D x D covariance from a few
hundred images is singular; shrinkage makes it invertible and was measured
better than a fixed a). S^-1 is kept exactly on the top `components`
eigenvectors of C and as one value on the rest (the mean of the remaining
eigenvalues, shrunk likewise), so an export carries D x components numbers,
not D x D (docs/deploy.md has the measurements behind the default).

The threshold is a quantile of held-out scores: each training or
validation image scored by a model fitted on the other folds (a model
scores its own images lower than new ones of the same classes, measured 2x
lower at 64 components), so that a `keep` fraction of in-distribution
images fall at or below it.

In a graph the score is r |x'|^2 - |x' B|^2 - 2 x' P + c with
x' = x - centre (see `Novelty.graph_arrays`), a handful of matrix products
that every export format runs.

What it can and cannot catch: photos unlike every class in the module's
feature space (another domain, another kind of object); not a photo of an
unseen class that looks like a known one (a new flower among flowers), and
not a known class photographed far from how training saw it, which it may
flag although the class is right.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from retrain.common import names
from retrain.errors import DatasetError
from retrain.head import math as head_math

# Rows each held-out fit's covariance is estimated from at most, about
# (evenly spread over the rows given; every fit of one fit_held_out reads
# one shared sample, of which the fit on all rows takes every row): the
# eigenvectors come from an n x n Gram matrix, which past a thousand or two
# rows costs more than it adds.
MAX_COVARIANCE_ROWS = 1500

# Rows summed in one product by _key_sums (2,048 rows of the default
# ensemble's 3,840-d vectors are 63 MB in float64).
_SUM_ROWS = 2048


def _matmul(a: np.ndarray, b: np.ndarray, transpose_b: bool = False,
            dtype=np.float64) -> np.ndarray:
  """a @ b (or a @ b.T) in TensorFlow in `dtype`, returned as float64:
  numpy's threaded BLAS on 2 busy cores took minutes for what TensorFlow
  does in seconds (as in retrain.head.solver)."""
  return tf.matmul(tf.constant(a, dtype), tf.constant(b, dtype),
                   transpose_b=transpose_b).numpy().astype(np.float64)


def check_keep(keep: float) -> None:
  """Raises DatasetError unless 0 < keep < 1."""
  if not 0 < keep < 1:
    raise DatasetError(f'novelty_keep={keep} must be in (0, 1), e.g. 0.95: '
                       'the fraction of held-out images of the classes that '
                       'are kept (not flagged unknown); 0 switches the '
                       'novelty score off.', fields=('novelty_keep',))


@dataclasses.dataclass
class Novelty:
  """A fitted novelty score (see the module docstring).

  Attributes:
    centre: float32 [D], subtracted first.
    means: float32 [N, D] class means minus centre, row c is class id c.
    basis: float32 [D, k] top eigenvectors of the within-class covariance.
    precision: float32 [k] 1 / shrunk eigenvalue of each basis vector.
    rest: 1 / the shrunk eigenvalue used off the basis.
    shrinkage: a in [0, 1].
    threshold: scores above it are flagged (nan until chosen).
    keep: the held-out fraction kept at the threshold, in (0, 1).
    held_out: how the threshold's scores were held out.
  """
  centre: np.ndarray
  means: np.ndarray
  basis: np.ndarray
  precision: np.ndarray
  rest: float
  shrinkage: float
  threshold: float = float('nan')
  keep: float = 0.95
  held_out: str = ''
  # float64 [n] the out-of-fold scores the threshold was chosen on (for
  # the reports; not exported).
  held_out_scores: Optional[np.ndarray] = None

  def scores(self, x: np.ndarray) -> np.ndarray:
    """float64 [n] novelty of vectors x float [n, D] (>= 0)."""
    d = np.asarray(x, np.float64).reshape(-1, len(self.centre)) - self.centre
    means = self.means.astype(np.float64)
    z = _matmul(d, self.basis)
    zm = _matmul(means, self.basis)
    full = (np.sum(d * d, 1)[:, None] - 2 * _matmul(d, means,
                                                    transpose_b=True) +
            np.sum(means ** 2, 1)[None])
    inside = np.sum((z[:, None] - zm[None]) ** 2 * self.precision, 2)
    along = np.sum((z[:, None] - zm[None]) ** 2, 2)
    dist = inside + self.rest * (full - along)
    return np.maximum(dist.min(1), 0.0) / len(self.centre)

  def graph_arrays(self) -> dict:
    """float32 arrays for a graph: score = (rest |x'|^2 - |x' B|^2 - 2 x' P
    + c).min(classes) * scale with x' = x - centre, B [D, k], P [D, N],
    c [N], scale = 1 / D. (Off the basis the precision `rest` is the
    largest, so B = basis * sqrt(rest - precision) is real.)"""
    w = np.sqrt(np.maximum(self.rest - self.precision.astype(np.float64),
                           0.0))
    means = self.means.astype(np.float64)
    b = self.basis.astype(np.float64) * w
    zm = means @ b  # [N, k]
    p = self.rest * means.T - b @ zm.T
    c = self.rest * np.sum(means ** 2, 1) - np.sum(zm ** 2, 1)
    return {'centre': self.centre.astype(np.float32),
            'basis': b.astype(np.float32), 'cross': p.astype(np.float32),
            'offset': c.astype(np.float32),
            'rest': np.float32(self.rest),
            'scale': np.float32(1.0 / len(self.centre))}

  def graph_scores(self, x: np.ndarray) -> np.ndarray:
    """float32 [n] scores as the exports compute them (graph_arrays)."""
    g = self.graph_arrays()
    d = np.asarray(x, np.float32) - g['centre']
    dist = (g['rest'] * np.sum(d * d, 1)[:, None] -
            np.sum((d @ g['basis']) ** 2, 1)[:, None] - 2 * d @ g['cross'] +
            g['offset'])
    return np.maximum(dist.min(1), 0) * g['scale']

  def metadata(self) -> dict:
    """JSON-ready description, as stored in every export."""
    return {'method': 'class-conditional Mahalanobis distance (shared '
                      'Ledoit-Wolf-shrunk covariance), squared, divided by '
                      'the feature dimension; minimum over the classes',
            names.NOVELTY_THRESHOLD: float(self.threshold), 'keep': self.keep,
            'components': int(self.basis.shape[1]),
            'shrinkage': float(self.shrinkage), 'held_out': self.held_out,
            'output': names.NOVELTY_OUTPUT,
            'flagged_when': 'novelty > threshold'}


def fit(x: np.ndarray, y: np.ndarray, num_classes: int,
        components: int) -> Novelty:
  """Fits the score on vectors x float32 [n, D] of class ids y int [n]
  (every class in [0, num_classes) needs a row; a class without any gets
  the overall mean, which no photo of it is likely to be near)."""
  return _Shared(x, y, num_classes, np.full(len(y), -1)).fit(components)


class _Shared:
  """What every fit of one fit_held_out shares: per (fold, class) sums of
  the vectors and one Gram matrix of a sample of rows, from which the fit
  on all rows and each fit without fold k take their class means and
  their within-class Gram matrix (W W' = G - X M' - M X' + M M', M the
  fit's class means of each sampled row), instead of one Gram matrix of
  D-long rows a fit.

  Args of the constructor: x float [n, D]; y int [n] in [0, num_classes);
  fold int [n] (-1: in every fit); dtype: of the Gram matrix and the
  basis products, float32 by default (the rows are centred first, so
  float32 is exact to about 1e-5 relative; tests compare float64).
  """

  def __init__(self, x, y, num_classes: int, fold: np.ndarray,
               dtype=np.float32):
    x = np.asarray(x, np.float32)
    self.y, self.fold, self.dtype = np.asarray(y), np.asarray(fold), dtype
    self.num_classes, self.dim = num_classes, x.shape[1]
    self.folds = np.unique(self.fold[self.fold >= 0])
    self.shift = x.mean(0, dtype=np.float64)  # every array is x - shift
    slot = np.searchsorted(self.folds, self.fold)
    slot[self.fold < 0] = len(self.folds)
    key = slot * num_classes + self.y
    size = (len(self.folds) + 1) * num_classes
    self.counts = np.bincount(key, minlength=size).reshape(-1, num_classes)
    self.sums = (_key_sums(x, key, size).reshape(-1, num_classes, self.dim) -
                 self.counts[..., None] * self.shift)
    inside = [np.sum(self.fold != k) for k in self.folds] or [len(y)]
    cap = int(np.ceil(MAX_COVARIANCE_ROWS * len(y) / max(min(inside), 1)))
    self.rows = head_math.evenly_spread(len(y), cap)
    self.sample = (x[self.rows] - self.shift).astype(dtype)
    self.gram = _matmul(self.sample, self.sample, True, dtype)

  def fit(self, components: int, without=None) -> Novelty:
    """The score fitted on every row but those of fold `without` (None:
    every row)."""
    keep = np.ones(len(self.counts), bool)
    if without is not None:
      keep[int(np.searchsorted(self.folds, without))] = False
    counts, sums = self.counts[keep].sum(0), self.sums[keep].sum(0)
    centre = sums.sum(0) / counts.sum()
    means = np.where(counts[:, None] > 0,
                     sums / np.maximum(counts, 1)[:, None], centre)
    use = (np.flatnonzero(self.fold[self.rows] != without)
           if without is not None else
           head_math.evenly_spread(len(self.rows), MAX_COVARIANCE_ROWS))
    yr = self.y[self.rows[use]]
    sample = self.sample[use]
    cross = _matmul(sample, means, True, self.dtype)[:, yr]
    # G - X M' - M X' + M M', in place (the same sums in the same order).
    gram = self.gram[np.ix_(use, use)]
    gram -= cross
    gram -= cross.T
    gram += _matmul(means, means, True)[np.ix_(yr, yr)]
    within = sample - means.astype(self.dtype)[yr]
    return _from_gram(within, gram, components, self.dtype,
                      (self.shift + centre, means - centre))


def _key_sums(x: np.ndarray, key: np.ndarray, size: int) -> np.ndarray:
  """float64 [size, D] sums of the rows of x float [n, D] of each key int
  [n] in [0, size) (zeros for a key without rows): float64 products with
  the keys' one-hot matrix, _SUM_ROWS rows at a time (a float64 copy of
  that many rows at most), where sorting the rows to sum each run copied
  all of x and summed it a row at a time (several times slower)."""
  out = np.zeros((size, x.shape[1]))
  for start in range(0, len(key), _SUM_ROWS):
    rows = slice(start, start + _SUM_ROWS)
    one_hot = tf.one_hot(key[rows], size, dtype=tf.float64)  # [m, size]
    out += tf.matmul(one_hot, tf.cast(x[rows], tf.float64),
                     transpose_a=True).numpy()
  return out


def _from_gram(within: np.ndarray, gram: np.ndarray, components: int,
               dtype, centre_means: tuple) -> Novelty:
  """The Novelty of within-class rows within [n, D] (`dtype`), their Gram
  matrix gram float64 [n, n] and (centre float [D], means float [N, D]
  minus centre)."""
  n, dim = within.shape
  values, vectors = _top_eigen(gram, components)
  eig = values / n  # C's largest eigenvalues, largest first
  mean_eig = float(np.trace(gram)) / n / dim
  # Ledoit-Wolf: a = sum_i |x_i x_i' - C|^2 / n^2 over |C - mean_eig I|^2;
  # |C|^2 = |gram|^2 / n^2.
  fro2 = float(np.sum(gram ** 2)) / n ** 2
  beta2 = (float(np.sum(np.diag(gram) ** 2)) / n - fro2) / n
  delta2 = fro2 - dim * mean_eig ** 2
  a = float(np.clip(beta2 / delta2, 0.0, 1.0)) if delta2 > 0 else 1.0
  k = int(min(components, np.sum(values > 1e-12 * max(values[0], 1e-30))))
  basis = _matmul(within.T, vectors[:, :k] / np.sqrt(values[:k]),
                  dtype=dtype)
  rest_eig = ((mean_eig * dim - eig[:k].sum()) / max(dim - k, 1) * (1 - a) +
              a * mean_eig)
  centre, means = centre_means
  return Novelty(centre.astype(np.float32), means.astype(np.float32),
                 basis.astype(np.float32),
                 (1.0 / ((1 - a) * eig[:k] + a * mean_eig)).astype(
                     np.float32),
                 float(1.0 / max(rest_eig, 1e-30)), a)


def _top_eigen(gram: np.ndarray, count: int, oversample: int = 10,
               iterations: int = 4) -> tuple:
  """(values [m] descending, vectors [n, m]) of the m = min(count, n)
  largest eigenpairs of a symmetric positive semi-definite gram [n, n], by
  randomized subspace iteration (Halko, Martinsson & Tropp 2011): a full
  eigh of 1,500 x 1,500 took 20 s on 2 busy cores, this well under one."""
  n = len(gram)
  width = min(n, count + oversample)
  g = tf.constant(gram, tf.float64)
  q = tf.constant(np.random.default_rng(0).normal(size=(n, width)))
  for _ in range(iterations):
    q = tf.linalg.qr(tf.matmul(g, q))[0]
  small = tf.matmul(q, tf.matmul(g, q), transpose_a=True)
  # numpy's eigh and products here took 0.3 s each on 2 busy cores (its
  # BLAS threads), TensorFlow's a few milliseconds.
  values, vectors = tf.linalg.eigh((small + tf.transpose(small)) / 2)
  order = np.argsort(values.numpy())[::-1][:min(count, n)]
  return (np.maximum(values.numpy()[order], 0.0),
          tf.matmul(q, tf.gather(vectors, order, axis=1)).numpy())


def fit_held_out(x: np.ndarray, y: np.ndarray, num_classes: int,
                 components: int, keep: float, fold: np.ndarray,
                 held_out: str) -> Novelty:
  """`fit` on all rows, with the threshold at the `keep` quantile of
  out-of-fold scores: rows of fold k scored by a model fitted on the rest
  (fold int [n], e.g. retrain.head.folds.group_folds of the originals;
  rows of fold -1 are never scored, always in the fit)."""
  shared = _Shared(x, y, num_classes, fold)
  novelty = shared.fit(components)
  scored = fold >= 0
  scores = np.empty(len(y))
  for k in shared.folds:
    scores[fold == k] = shared.fit(components, k).scores(x[fold == k])
  scores = scores[scored]
  novelty.threshold = float(np.quantile(scores, keep))
  novelty.keep, novelty.held_out = keep, held_out
  novelty.held_out_scores = scores
  return novelty


def fit_on_split(x: np.ndarray, y: np.ndarray, num_classes: int,
                 components: int, keep: float, folds: int, seed: int,
                 groups: Optional[np.ndarray] = None) -> Novelty:
  """fit_held_out with `folds` class-stratified folds of the rows."""
  from retrain.head import folds as folds_lib
  groups = np.arange(len(y)) if groups is None else groups
  fold = folds_lib.group_folds(np.asarray(y), groups, folds, seed)
  return fit_held_out(x, y, num_classes, components, keep, fold,
                      f'out-of-fold scores of {len(y)} training and '
                      f'validation images ({folds} folds)')


def fit_on_new_rows(x: np.ndarray, y: np.ndarray, num_classes: int,
                    components: int, keep: float, new: np.ndarray,
                    folds: int, seed: int) -> Novelty:
  """fit_held_out whose threshold comes from the `new` rows (bool [n])
  alone, in `folds` class-stratified folds, the other rows always in the
  fit: for features of a network that trained on those other rows (a
  fine-tuned one), which it may place closer to their class than a new
  photo, so only the scores of rows it never trained on set the
  threshold."""
  from retrain.head import folds as folds_lib
  fold = np.full(len(y), -1)
  rows = np.flatnonzero(new)
  fold[rows] = folds_lib.stratified_folds(np.asarray(y)[rows], folds, seed)
  return fit_held_out(x, y, num_classes, components, keep, fold,
                      f'out-of-fold scores of {len(rows)} validation images '
                      f'({folds} folds; the {len(y) - len(rows)} training '
                      'images always in the fit)')
