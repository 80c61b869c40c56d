"""The numbers of the health report, from labels, sets, digests and vectors.

Numpy only (no TensorFlow) but for the out-of-fold head, which the head's
L-BFGS solver fits; every function is testable on small arrays.
Conventions: n examples; `labels` int [n] class ids; `subsets` int [n] with
0 train, 1 validation, 2 test; `digests` the content key of each example
(None when unreadable); `vectors` float32 [n, D] bottleneck vectors.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# Pairs kept by the near-duplicate search at most: a threshold far too low
# for the data would otherwise list (and hold) a large part of n^2.
MAX_NEAR_PAIRS = 100_000
# Dimensions the out-of-fold head sees (see out_of_fold_probabilities).
PROJECTION_DIMS = 256


def class_counts(labels: np.ndarray, subsets: np.ndarray,
                 num_classes: int) -> np.ndarray:
  """int64 [num_classes, 3]: examples of each class in train, val, test."""
  counts = np.zeros((num_classes, 3), np.int64)
  np.add.at(counts, (np.asarray(labels, np.int64),
                     np.asarray(subsets, np.int64)), 1)
  return counts


def imbalance_ratio(counts: np.ndarray) -> float:
  """Largest over smallest class total (inf if a class has no example)."""
  totals = counts.sum(axis=1)
  return float('inf') if totals.min() == 0 else float(totals.max() /
                                                      totals.min())


def _kinds(members: Sequence[int], labels, subsets) -> List[str]:
  kinds = ['across_classes' if len({int(labels[i]) for i in members}) > 1
           else 'within_class']
  if len({int(subsets[i]) for i in members}) > 1:
    kinds.append('across_sets')
  return kinds


def exact_duplicates(digests: Sequence[Optional[str]], labels, subsets
                     ) -> Dict[str, List[List[int]]]:
  """Groups of examples with identical content.

  Returns:
    {'within_class': groups, 'across_classes': groups, 'across_sets':
    groups}: each group a sorted list of example indices; a group is
    within_class or across_classes (labels differ), and also across_sets
    when its examples are in more than one set.
  """
  by_digest = collections.defaultdict(list)
  for i, digest in enumerate(digests):
    if digest is not None:
      by_digest[digest].append(i)
  found = {'within_class': [], 'across_classes': [], 'across_sets': []}
  for members in sorted(by_digest.values()):
    if len(members) > 1:
      for kind in _kinds(members, labels, subsets):
        found[kind].append(list(members))
  return found


def normalise(vectors: np.ndarray) -> np.ndarray:
  """float32 [n, D] rows scaled to unit length (zero rows stay zero)."""
  vectors = np.asarray(vectors, np.float32)
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  return vectors / np.maximum(norms, 1e-12)


def near_duplicate_pairs(vectors: np.ndarray, threshold: float,
                         block: int = 256) -> List[Tuple[int, int, float]]:
  """(i, j, cosine) for i < j with cosine similarity above threshold.

  The similarity matrix is computed `block` rows at a time against all n
  rows: memory is block x n x 4 bytes, never n x n; time is n^2 x D
  multiply-adds (100k images of 1280 floats: about 1.3e13, an hour or two on
  2 cores; see docs/inspect.md). Sorted by cosine, highest first; at most
  MAX_NEAR_PAIRS are kept (the most similar).
  """
  unit = normalise(vectors)
  n = len(unit)
  pairs = []
  for start in range(0, n, block):
    sims = unit[start:start + block] @ unit.T  # [b, n]
    rows, cols = np.nonzero(sims > threshold)
    keep = cols > rows + start
    rows, cols = rows[keep], cols[keep]
    pairs.extend(zip((rows + start).tolist(), cols.tolist(),
                     sims[rows, cols].tolist(), strict=True))
    if len(pairs) > 2 * MAX_NEAR_PAIRS:
      pairs = sorted(pairs, key=lambda p: -p[2])[:MAX_NEAR_PAIRS]
  pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
  return pairs[:MAX_NEAR_PAIRS]


def group_pairs(pairs, digests, labels, subsets
                ) -> Dict[str, List[Tuple[int, int, float]]]:
  """Near-duplicate pairs into the three groups of exact_duplicates,
  leaving out pairs with identical content (listed as exact)."""
  found = {'within_class': [], 'across_classes': [], 'across_sets': []}
  for i, j, cosine in pairs:
    if digests[i] is not None and digests[i] == digests[j]:
      continue
    for kind in _kinds((i, j), labels, subsets):
      found[kind].append((i, j, cosine))
  return found


def fit_softmax(x: np.ndarray, y: np.ndarray, num_classes: int,
                l2: float = 0.1):
  """A linear softmax head (the model retrain trains) fitted to convergence
  on standardised features by the head's L-BFGS solver
  (retrain.head.lbfgs, which imports TensorFlow); returns predict(x) ->
  probabilities float32 [m, C]."""
  from retrain.config import DEFAULTS
  from retrain.head import lbfgs as lbfgs_lib
  fitter = lbfgs_lib.SoftmaxLbfgs(l2, 0.0, DEFAULTS.head.solver_max_iterations,
                              DEFAULTS.head.solver_tolerance, standardise=True)
  return fitter.fit(np.ascontiguousarray(x, np.float32),
                    np.asarray(y, np.int64), num_classes).predict_proba


def random_projection(vectors: np.ndarray, dims: int,
                      seed: int = 0) -> np.ndarray:
  """float32 [n, dims]: the centred vectors times a fixed Gaussian matrix
  (distances kept up to a few percent; D <= dims is returned centred)."""
  x = np.asarray(vectors, np.float32)
  x = x - x.mean(axis=0)
  if x.shape[1] <= dims:
    return x
  matrix = np.random.default_rng(seed).standard_normal(
      (x.shape[1], dims)) / np.sqrt(dims)
  return x @ matrix.astype(np.float32)


def out_of_fold_probabilities(vectors: np.ndarray, labels: np.ndarray,
                              num_classes: int, folds: int,
                              seed: int = 0) -> np.ndarray:
  """float32 [n, C]: each example's class probabilities from a head that
  did not see it (k-fold, folds drawn with a fixed seed).

  The head sees a 256-d random projection of the vectors, with L2 0.1. On
  flowers_sample (500 photos, EfficientNet-Lite0): 86.6% out-of-fold
  accuracy and 16 suspects, against 86.8% and 22 on all 1280 values, which
  took 5-10 times longer; a PCA was as good but LAPACK's SVD took 25-50 s
  on 2 busy cores; weaker L2 made the head over-confident (28-66
  suspects, most of them ambiguous photos).
  """
  x = random_projection(vectors, PROJECTION_DIMS)
  y = np.asarray(labels, np.int64)
  fold = np.random.default_rng(seed).permutation(len(y)) % folds
  probs = np.zeros((len(y), num_classes), np.float32)
  for k in range(folds):
    held = fold == k
    if held.all() or not held.any():
      continue
    probs[held] = fit_softmax(x[~held], y[~held], num_classes)(x[held])
  return probs


@dataclasses.dataclass(frozen=True)
class Suspect:
  """An example whose label the out-of-fold head doubts.

  index: the example; given_probability: of its label; predicted: the class
  id the head prefers; predicted_probability: of that class.
  """
  index: int
  given_probability: float
  predicted: int
  predicted_probability: float


def label_errors(probs: np.ndarray, labels: np.ndarray, given_below: float,
                 other_above: float) -> List[Suspect]:
  """Examples whose label gets < given_below while another class gets >
  other_above; most confident first."""
  labels = np.asarray(labels, np.int64)
  rows = np.arange(len(labels))
  given = probs[rows, labels]
  others = probs.copy()
  others[rows, labels] = -1
  predicted = others.argmax(axis=1)
  best = others[rows, predicted]
  hits = np.flatnonzero((given < given_below) & (best > other_above))
  hits = hits[np.argsort(-best[hits] + given[hits], kind='stable')]
  return [Suspect(int(i), float(given[i]), int(predicted[i]), float(best[i]))
          for i in hits]


def outliers(vectors: np.ndarray, labels: np.ndarray, num_classes: int,
             mad_limit: float) -> List[Tuple[int, float, float]]:
  """Examples far from every class centre.

  Distance: 1 - cosine to the nearest class centre (mean of the class's unit
  vectors). An outlier's distance is more than mad_limit robust standard
  deviations (1.4826 x median absolute deviation) above the median.

  Returns:
    (index, distance, robust z) of each outlier, farthest first.
  """
  unit = normalise(vectors)
  labels = np.asarray(labels, np.int64)
  centres = np.stack([unit[labels == c].mean(axis=0) if np.any(labels == c)
                      else np.zeros(unit.shape[1], np.float32)
                      for c in range(num_classes)])
  distance = 1.0 - (unit @ normalise(centres).T).max(axis=1)
  median = float(np.median(distance))
  mad = 1.4826 * float(np.median(np.abs(distance - median))) + 1e-9
  z = (distance - median) / mad
  hits = np.flatnonzero(z > mad_limit)
  hits = hits[np.argsort(-z[hits], kind='stable')]
  return [(int(i), float(distance[i]), float(z[i])) for i in hits]
