"""A head trained to convergence, its regularisation chosen on validation.

The head is the same layer `retrain.head.train` trains with SGD,
probabilities = softmax(x @ W + b) with W float32 [D, N] and b float32 [N],
but fitted with full-batch L-BFGS on

  sum over images of w_i * cross_entropy(softmax(z_i @ W' + b), t_i) / sum w_i
    + l2/2 * |W'|^2

where z are the vectors as the module gives them (optionally standardised
per dimension with the training set's mean and standard deviation, folded
back into W and b afterwards, so the export sees a plain `Head` either way)
t the one-hot targets, optionally label-smoothed, and w the images' weights
(all 1 unless the classes are weighted: `class_weights` of `fit_head`; the
weighted mean keeps one L2 strength meaning the same). The objective is
smooth and strongly convex, so it has one minimum and L-BFGS reaches it in a
few dozen to a few hundred iterations whatever the learning-rate-like
constants would have been: there are none.

Why raw vectors by default: standardising makes one L2 strength mean the
same for every dimension and converges in fewer iterations, but it also
lifts the dimensions where the module's features barely vary to the weight
of the informative ones; on the raw vectors the fit was 0.4-1.2 points more
accurate in 9 of 12 configurations measured (docs/accuracy.md).

How the L2 strength (and label smoothing) is chosen, never looking at the
test set (this module is never given it):
- `validation`: when every class has at least `min_validation_per_class`
  validation images, each candidate is fitted on the training vectors and
  scored on the validation vectors; the best validation accuracy wins (with
  class weights, the accuracy and cross entropy are weighted the same way,
  which with balanced weights is the balanced accuracy; ties:
  lower validation cross entropy, then the stronger L2). Then the chosen
  setting is refitted on training + validation (`refit`; more data measured
  better, docs/accuracy.md).
- `k-fold`: otherwise (a validation set too small to choose on), `folds`-fold
  cross-validation on training + validation together, folds stratified by
  class; the chosen setting is then fitted on all of training + validation.
- `single`: one candidate only (or no validation images and too few images
  for folds): it is fitted on what there is.

Candidates are fitted from the strongest L2 to the weakest, each starting
from the previous one's solution, which cuts the iterations of the grid
several-fold.

Held-out predictions (`HeldOut`): when the final head trained on
validation (the refit, k-fold and single cases), its own predictions on
those images would flatter it, so the chosen setting is cross-fitted: the
rows of training + validation are dealt into `folds` folds (stratified by
class, rows of one group, e.g. an image and its distorted copies, always
together) and each fold is predicted by a head fitted on the others, warm
started from the final fit (a few dozen iterations each). These
out-of-fold logits are what every "validation" figure, the temperature,
the rejection threshold and the novelty threshold are computed on. When
the final head did not train on validation, its own validation logits are
held out already.

L-BFGS itself is a few lines of numpy (float64 state); the products with
the vectors run in TensorFlow (float32). No scipy.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.errors import DatasetError
from retrain.head.train import EvalPoint, Head

# L-BFGS: 10 pairs of history is the usual choice (scipy's and Nocedal &
# Wright's); the Armijo constant 1e-4 likewise.
_MEMORY = 10
_ARMIJO = 1e-4
_MAX_HALVINGS = 30


def _dot(a: np.ndarray, b: np.ndarray) -> float:
  """a . b of two float64 vectors without BLAS: numpy's `@` calls a
  threaded BLAS whose threads, on 2 cores busy with other work, made a
  19,205-long dot product take milliseconds instead of microseconds (the
  solver spent 45 of 60 s in them)."""
  return float(np.sum(a * b))


@dataclasses.dataclass(frozen=True)
class SolverOptions:
  """How the converging solver fits and chooses (defaults: config.py).

  Attributes:
    l2_grid: L2 strengths tried (on standardised vectors, mean loss).
    label_smoothing_grid: label smoothing values tried, each in [0, 1).
    max_iterations: L-BFGS iterations per fit at most.
    tolerance: a fit stops when an iteration lowers the objective by less
      than this fraction of it.
    folds: k of the k-fold selection.
    min_validation_per_class: fewer validation images than this in some
      class means k-fold instead of the validation set.
    refit: after choosing on validation, refit on training + validation.
    seed: fold assignment.
    standardise: fit on standardised vectors (see the module docstring);
      False fits the raw vectors (for comparison in bench/accuracy.py).
  """
  l2_grid: Tuple[float, ...]
  label_smoothing_grid: Tuple[float, ...]
  max_iterations: int
  tolerance: float
  folds: int
  min_validation_per_class: int
  refit: bool
  seed: int = 0
  standardise: bool = False

  @classmethod
  def from_config(cls, config) -> 'SolverOptions':
    return cls(l2_grid=_floats('solver_l2_grid', config.solver_l2_grid),
               label_smoothing_grid=_floats(
                   'solver_label_smoothing_grid',
                   config.solver_label_smoothing_grid),
               max_iterations=config.solver_max_iterations,
               tolerance=config.solver_tolerance,
               folds=config.solver_folds,
               min_validation_per_class=config.solver_min_validation_per_class,
               refit=config.solver_refit, seed=config.random_seed,
               standardise=config.solver_standardise)


def _floats(name: str, values) -> Tuple[float, ...]:
  """Numbers (or their strings, from a list flag) as a tuple of floats."""
  try:
    return tuple(float(v) for v in values)
  except (TypeError, ValueError) as e:
    raise DatasetError(f'--{name}={",".join(map(str, values))} must be '
                       'numbers separated by commas, e.g. 0.1,0.01.') from e


def check(options: SolverOptions) -> None:
  """Raises DatasetError naming the bad value and the accepted range."""
  if not options.l2_grid or any(v < 0 for v in options.l2_grid):
    raise DatasetError(f'solver_l2_grid={",".join(map(str, options.l2_grid))}'
                       ' must list one or more L2 strengths >= 0, e.g. '
                       '0.001,0.01,0.1.', fields=('solver_l',))
  if not options.label_smoothing_grid or any(
      not 0 <= v < 1 for v in options.label_smoothing_grid):
    raise DatasetError(
        'solver_label_smoothing_grid='
        f'{",".join(map(str, options.label_smoothing_grid))} must list one '
        'or more values in [0, 1), e.g. 0 or 0,0.1.', fields=('solver_label_smoothing_grid',))
  if options.max_iterations < 1:
    raise DatasetError(f'solver_max_iterations={options.max_iterations} '
                       'must be at least 1.', fields=('solver_max_iterations',))
  if options.folds < 2:
    raise DatasetError(f'solver folds={options.folds} must be at least 2.')


@dataclasses.dataclass
class Candidate:
  """One setting tried, and how it scored on the data it was chosen on.

  accuracy in [0, 1] and mean cross_entropy on validation (or pooled over
  the held-out folds), each image weighted by its class's weight when the
  classes are weighted; iterations summed over the fits that scored it.
  """
  l2: float
  label_smoothing: float
  accuracy: float = float('nan')
  cross_entropy: float = float('nan')
  iterations: int = 0


@dataclasses.dataclass
class SolverResult:
  """What `fit_head` produced.

  Attributes:
    head: the final head (float32 W [D, N], b [N]), in the input space.
    history: one EvalPoint per L-BFGS iteration of the final fit (train
      accuracy and cross entropy on the final training set; validation
      accuracy only when validation was not part of it).
    candidates: every setting tried, in the order tried.
    chosen: the winning candidate.
    selection: 'validation', 'k-fold' or 'single'.
    refit: True when the final fit used training + validation.
    reason: one sentence saying how and why the setting was chosen.
    seconds: wall time of choosing and fitting.
    held_out: predictions of heads that did not train on the image, or
      None when there are none (see HeldOut).
    train_only_head: the chosen setting fitted on the training rows alone
      (what fine-tuning starts from, so that its validation stays held
      out); the final head itself when that did not train on validation.
  """
  head: Head
  history: List[EvalPoint]
  candidates: List[Candidate]
  chosen: Candidate
  selection: str
  refit: bool
  reason: str
  seconds: float
  held_out: Optional['HeldOut'] = None
  train_only_head: Optional[Head] = None

  def summary(self) -> dict:
    """JSON-ready description (for the reports)."""
    return {
        'solver': 'lbfgs',
        'selection': self.selection,
        'reason': self.reason,
        'refit_on_train_and_validation': self.refit,
        'chosen': dataclasses.asdict(self.chosen),
        'candidates': [dataclasses.asdict(c) for c in self.candidates],
        'final_fit_iterations': len(self.history),
        'seconds': self.seconds,
        'held_out': (self.held_out.summary() if self.held_out else
                     {'method': 'none: too few images for held-out '
                                'predictions'}),
    }


# --- One fit ------------------------------------------------------------------


class _Problem:
  """Softmax cross-entropy + L2 over fixed vectors, standardised implicitly.

  Parameters theta float64 [(D + 1) * N]: W' [D, N] (standardised space)
  then b [N]. Each evaluation costs two float32 products of the [n, D]
  vectors with [D, N] weights; TensorFlow runs them (on 2 busy cores its
  kernels were 2-5x faster than numpy's BLAS for these skinny shapes), the
  rest is float64 numpy on [n, N] and [D, N] arrays.
  """

  def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int,
               mean: np.ndarray, scale: np.ndarray, l2: float,
               label_smoothing: float, weights: Optional[np.ndarray] = None):
    """weights: float [n] >= 0 of each image in the data term (None: 1)."""
    self.x = tf.constant(x)
    self.y = y
    self.n, self.dim = x.shape
    # Each image's share of the data term: 1 / n, or w_i / sum(w).
    self.share = (np.full((self.n, 1), 1.0 / max(self.n, 1)) if weights is None
                  else _shares(weights))
    self.classes = num_classes
    self.mean, self.scale = mean, scale
    self.l2 = l2
    targets = np.full((self.n, num_classes), label_smoothing / num_classes)
    targets[np.arange(self.n), y] += 1.0 - label_smoothing
    self.targets = targets
    # Kept from the last evaluation, for the iteration callback.
    self.last_logits = None

  def split(self, theta):
    w = theta[:-self.classes].reshape(self.dim, self.classes)
    return w, theta[-self.classes:]

  def logits(self, w, b) -> np.ndarray:
    """float64 [n, N] for standardised weights w [D, N] and biases b [N]."""
    w_in = w / self.scale[:, None]
    z = tf.matmul(tf.constant(w_in.T, tf.float32), self.x, transpose_b=True)
    return z.numpy().T.astype(np.float64) + (b - _project(self.mean, w_in))

  def __call__(self, theta) -> Tuple[float, np.ndarray]:
    w, b = self.split(theta)
    z = self.logits(w, b)
    self.last_logits = z
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    data_loss = -np.sum(self.share * self.targets * log_p)
    g = (np.exp(log_p) - self.targets) * self.share  # [n, N]
    gx = tf.matmul(tf.constant(g, tf.float32), self.x, transpose_a=True)
    gx = gx.numpy().T.astype(np.float64)  # [D, N]
    gw = (gx - np.outer(self.mean, g.sum(axis=0))) / self.scale[:, None]
    gw += self.l2 * w
    loss = data_loss + 0.5 * self.l2 * float(np.sum(w * w))
    return loss, np.concatenate([gw.ravel(), g.sum(axis=0)])

  def cross_entropy(self, logits: np.ndarray) -> float:
    """Mean cross entropy against the true (unsmoothed) class ids."""
    z = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(self.n), self.y]))


def _shares(weights: np.ndarray) -> np.ndarray:
  """float64 [n, 1]: weights / their sum (a zero sum: all zeros)."""
  w = np.asarray(weights, np.float64).reshape(-1, 1)
  total = float(w.sum())
  return w / total if total > 0 else np.zeros_like(w)


def lbfgs(fun: Callable[[np.ndarray], Tuple[float, np.ndarray]],
          theta: np.ndarray, max_iterations: int, tolerance: float,
          callback: Optional[Callable[[int, float, np.ndarray], None]] = None
          ) -> Tuple[np.ndarray, int]:
  """Minimises a smooth function with L-BFGS and a backtracking line search.

  Args:
    fun: theta float64 [P] -> (value, gradient float64 [P]).
    theta: the starting point.
    max_iterations: iterations at most.
    tolerance: stop when an iteration lowers the value by less than this
      fraction of it (or the gradient vanishes).
    callback: called (iteration, value, theta) after each accepted step.

  Returns:
    (theta at the end, iterations done).
  """
  value, grad = fun(theta)
  pairs: List[Tuple[np.ndarray, np.ndarray, float]] = []
  done = 0
  for done in range(1, max_iterations + 1):
    if np.max(np.abs(grad)) < 1e-10:
      done -= 1
      break
    # Two-loop recursion: direction = -H grad.
    q = grad.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
      a = rho * _dot(s, q)
      q -= a * y
      alphas.append(a)
    if pairs:
      s, y, _ = pairs[-1]
      q *= _dot(s, y) / _dot(y, y)
    else:  # A first step of length ~1 in theta.
      q /= max(1.0, float(np.linalg.norm(grad)))
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
      q += s * (a - rho * _dot(y, q))
    direction = -q
    slope = _dot(grad, direction)
    if slope >= 0:  # Not a descent direction (round-off): restart.
      pairs.clear()
      direction, slope = -grad, -_dot(grad, grad)
    step = 1.0
    for _ in range(_MAX_HALVINGS):
      new_theta = theta + step * direction
      new_value, new_grad = fun(new_theta)
      if new_value <= value + _ARMIJO * step * slope:
        break
      step *= 0.5
    else:
      done -= 1
      break  # No step lowers the value: converged to round-off.
    s, y = new_theta - theta, new_grad - grad
    sy = _dot(s, y)
    if sy > 1e-12:
      pairs.append((s, y, 1.0 / sy))
      if len(pairs) > _MEMORY:
        pairs.pop(0)
    decrease = (value - new_value) / max(abs(value), abs(new_value), 1e-12)
    theta, value, grad = new_theta, new_value, new_grad
    if callback is not None:
      callback(done, value, theta)
    if decrease < tolerance:
      break
  return theta, done


def _project(v: np.ndarray, m: np.ndarray) -> np.ndarray:
  """v [D] @ m [D, N] without BLAS (see _dot)."""
  return np.sum(v[:, None] * m, axis=0)


def standardisation(x: np.ndarray, enabled: bool = True
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """(mean float64 [D], scale float64 [D]) of vectors x [n, D]; a constant
  dimension gets scale 1 (it is all zeros once centred).

  Not enabled: mean 0 and one scale for every dimension, the root mean
  square of all values (the raw vectors up to one factor, which makes the
  L2 grid mean the same for a module whose features are 10x larger).
  """
  if not enabled:
    rms = float(tf.sqrt(tf.reduce_mean(tf.square(tf.constant(x, tf.float32))
                                       )).numpy())
    return np.zeros(x.shape[1]), np.full(x.shape[1], rms if rms > 0 else 1.0)
  # TensorFlow's threaded reductions: numpy's took seconds on busy cores.
  mean, variance = tf.nn.moments(tf.constant(x, tf.float32), axes=[0])
  mean = mean.numpy().astype(np.float64)
  scale = np.sqrt(np.maximum(variance.numpy().astype(np.float64), 0.0))
  return mean, np.where(scale > 1e-8, scale, 1.0)


@dataclasses.dataclass
class _Fit:
  theta: np.ndarray
  problem: _Problem
  iterations: int

  def head(self) -> Head:
    w, b = self.problem.split(self.theta)
    w_in = w / self.problem.scale[:, None]
    return Head(w_in.astype(np.float32),
                (b - _project(self.problem.mean, w_in)).astype(np.float32))


def _fit_one(x, y, num_classes, l2, label_smoothing, options: SolverOptions,
             start: Optional[np.ndarray] = None, standard=None,
             callback=None, weights: Optional[np.ndarray] = None) -> _Fit:
  if standard is None:
    standard = standardisation(x, options.standardise)
  mean, scale = standard
  problem = _Problem(x, y, num_classes, mean, scale, l2, label_smoothing,
                     weights)
  theta0 = (np.zeros((x.shape[1] + 1) * num_classes) if start is None
            else start)
  theta, iterations = lbfgs(problem, theta0, options.max_iterations,
                            options.tolerance,
                            None if callback is None else
                            lambda i, v, t: callback(i, t, problem))
  return _Fit(theta, problem, iterations)


def _as_arrays(x, y) -> Tuple[np.ndarray, np.ndarray]:
  return np.ascontiguousarray(x, np.float32), np.asarray(y, np.int64)


def _score(head: Head, x: np.ndarray, y: np.ndarray) -> Tuple[int, float]:
  """(correct predictions, summed cross entropy) of head on x, y."""
  z = head.logits(x).astype(np.float64)
  z -= z.max(axis=1, keepdims=True)
  log_norm = np.log(np.exp(z).sum(axis=1))
  correct = int(np.sum(z.argmax(axis=1) == y))
  return correct, float(np.sum(log_norm - z[np.arange(len(y)), y]))


def _weighted_score(head: Head, x: np.ndarray, y: np.ndarray,
                    weights: np.ndarray) -> Tuple[float, float]:
  """(weighted correct predictions, weighted summed cross entropy) of head
  on x, y; weights float [len(y)]."""
  z = head.logits(x).astype(np.float64)
  z -= z.max(axis=1, keepdims=True)
  log_norm = np.log(np.exp(z).sum(axis=1))
  w = np.asarray(weights, np.float64)
  return (float(np.sum(w * (z.argmax(axis=1) == y))),
          float(np.sum(w * (log_norm - z[np.arange(len(y)), y]))))


def _grid(options: SolverOptions) -> List[Candidate]:
  """Candidates, strongest L2 first (the warm-start order)."""
  return [Candidate(l2, s) for s in options.label_smoothing_grid
          for l2 in sorted(options.l2_grid, reverse=True)]


def _score_grid(candidates: Sequence[Candidate], x, y, num_classes,
                held_x, held_y, options: SolverOptions,
                solutions: Optional[list] = None, class_weights=None
                ) -> List[Tuple[int, float, int]]:
  """(correct, summed cross entropy, iterations) of each candidate fitted
  on x, y and scored on held_x, held_y; warm-started along the grid. Each
  candidate's parameters are appended to `solutions` if given. With
  class_weights (float [N]) the fit and both scores weigh each image by
  its class's weight."""
  standard = standardisation(x, options.standardise)
  scores, start, smoothing = [], None, None
  for c in candidates:
    if c.label_smoothing != smoothing:
      start, smoothing = None, c.label_smoothing
    fit = _fit_one(x, y, num_classes, c.l2, c.label_smoothing, options,
                   start, standard, weights=_per_image(class_weights, y))
    start = fit.theta
    if solutions is not None:
      solutions.append(fit.theta)
    scored = (_score(fit.head(), held_x, held_y) if class_weights is None else
              _weighted_score(fit.head(), held_x, held_y,
                              class_weights[held_y]))
    scores.append((*scored, fit.iterations))
  return scores


def _per_image(class_weights: Optional[np.ndarray], y: np.ndarray
               ) -> Optional[np.ndarray]:
  """float64 [n] weight of each image (its class's), or None."""
  if class_weights is None:
    return None
  return np.asarray(class_weights, np.float64)[y]


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

  def summary(self, val_y: Optional[np.ndarray] = None) -> dict:
    """JSON-ready: the method, and with val_y the held-out validation
    accuracy in [0, 1] and mean cross entropy (nats)."""
    data = {'method': self.method, 'folds': self.folds,
            'cross_fit_iterations': self.iterations}
    if val_y is not None and len(val_y):
      z = self.validation_logits.astype(np.float64)
      z -= z.max(axis=1, keepdims=True)
      log_norm = np.log(np.exp(z).sum(axis=1))
      data.update(validation_count=int(len(val_y)),
                  validation_accuracy=float(np.mean(z.argmax(1) == val_y)),
                  validation_cross_entropy=float(np.mean(
                      log_norm - z[np.arange(len(val_y)), val_y])))
    return data


def cross_fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
              num_classes: int, chosen: Candidate, options: SolverOptions,
              start: Optional[np.ndarray] = None,
              class_weights: Optional[np.ndarray] = None
              ) -> Optional[Tuple[np.ndarray, int, int]]:
  """Out-of-fold logits of the chosen setting on x float32 [n, D], y [n]
  (each fit weighted by class_weights float [N] as in `fit_head`).

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
  fold = group_folds(y, groups, folds, options.seed)
  logits = np.full((len(y), num_classes), np.nan, np.float32)
  iterations = 0
  for k in range(folds):
    inside = fold != k
    fit = _fit_one(x[inside], y[inside], num_classes, chosen.l2,
                   chosen.label_smoothing, options, start=start,
                   weights=_per_image(class_weights, y[inside]))
    logits[~inside] = fit.head().logits(x[~inside])
    iterations += fit.iterations
  return logits, folds, iterations


def _held_out(final: '_Fit', refit: bool, train_x, train_y, val_x, val_y,
              groups, num_classes: int, chosen: Candidate,
              options: SolverOptions,
              class_weights: Optional[np.ndarray] = None
              ) -> Optional[HeldOut]:
  """The HeldOut of fit_head's final fit (see the module docstring)."""
  n_train = len(train_y)
  if not refit:
    logits = np.full((n_train + len(val_y), num_classes), np.nan,
                     np.float32)
    logits[n_train:] = final.head().logits(val_x)
    return HeldOut(logits, n_train, 0, 'the head trained on the training '
                   'images only, so its validation predictions are held out')
  all_groups = np.concatenate([groups, np.max(groups, initial=-1) + 1 +
                               np.arange(len(val_y))])
  crossed = cross_fit(np.concatenate([train_x, val_x]),
                      np.concatenate([train_y, val_y]), all_groups,
                      num_classes, chosen, options, start=final.theta,
                      class_weights=class_weights)
  if crossed is None:
    return None
  logits, folds, iterations = crossed
  return HeldOut(logits, n_train, folds, (
      f'out-of-fold predictions, {folds}-fold cross-fitting on training + '
      'validation: each image '
      'predicted by a head of the chosen setting fitted on the other folds '
      '(its distorted copies held out with it); the exported head trained '
      'on all of them'), iterations)


def _best(candidates: Sequence[Candidate]) -> Candidate:
  """Highest accuracy; ties: lower cross entropy, then stronger L2."""
  return min(candidates, key=lambda c: (-c.accuracy, c.cross_entropy, -c.l2))


def _describe(c: Candidate) -> str:
  text = f'l2={c.l2:g}'
  if c.label_smoothing:
    text += f', label_smoothing={c.label_smoothing:g}'
  return text


def _choose(train_x, train_y, val_x, val_y, num_classes: int,
            options: SolverOptions, class_weights=None):
  """Scores the grid (see the module docstring); class_weights float [N]
  or None as in `fit_head`.

  Returns:
    (selection, candidates scored, chosen, reason, solutions): solutions
    holds each candidate's parameters fitted on training when validation
    chose (else empty).
  """
  candidates = _grid(options)
  trained = np.flatnonzero(np.bincount(train_y, minlength=num_classes))
  val_counts = np.bincount(val_y, minlength=num_classes)[trained]
  all_x = np.concatenate([train_x, val_x])
  all_y = np.concatenate([train_y, val_y])
  smallest_class = int(np.bincount(all_y, minlength=num_classes)[
      trained].min())
  solutions: List[np.ndarray] = []
  if len(candidates) == 1:
    return 'single', candidates, candidates[0], 'one candidate setting only', []
  if len(val_y) and val_counts.min() >= options.min_validation_per_class:
    selection, held = 'validation', _held(val_y, class_weights)
    scores = _score_grid(candidates, train_x, train_y, num_classes, val_x,
                         val_y, options, solutions, class_weights)
    reason = (f'best validation accuracy of {len(candidates)} settings '
              f'(N={len(val_y)})')
  elif smallest_class >= options.folds:
    selection, held = 'k-fold', _held(all_y, class_weights)
    fold = stratified_folds(all_y, options.folds, options.seed)
    totals = np.zeros((len(candidates), 3))
    for k in range(options.folds):
      inside = fold != k
      totals += np.array(_score_grid(
          candidates, all_x[inside], all_y[inside], num_classes,
          all_x[~inside], all_y[~inside], options,
          class_weights=class_weights), np.float64)
    scores = [tuple(t) for t in totals]
    reason = (f'best {options.folds}-fold cross-validation accuracy on '
              f'training + validation (N={len(all_y)}) of {len(candidates)} '
              f'settings: validation has only {int(val_counts.min())} '
              f'image(s) in its smallest class (fewer than '
              f'{options.min_validation_per_class})')
  else:
    candidates = candidates[len(options.l2_grid) // 2:][:1]
    return 'single', candidates, candidates[0], (
        f'too few images to choose on (smallest class: {smallest_class}); '
        'the middle of the grid'), []
  for c, (correct, ce_sum, iterations) in zip(candidates, scores,
                                              strict=True):
    c.accuracy = float(correct / held)
    c.cross_entropy = float(ce_sum / held)
    c.iterations = int(iterations)
  chosen = _best(candidates)
  for c in candidates:
    logging.info('Head solver candidate %-32s %s accuracy %.1f%%, cross '
                 'entropy %.4f%s', _describe(c), selection, 100 * c.accuracy,
                 c.cross_entropy, '  <- chosen' if c is chosen else '')
  return selection, candidates, chosen, reason, solutions


def _held(y: np.ndarray, class_weights) -> float:
  """What the held-out scores are divided by: images, or their weights."""
  if class_weights is None:
    return len(y)
  return float(np.sum(np.asarray(class_weights, np.float64)[y]))


class _Curve:
  """The final fit's curve: one EvalPoint per L-BFGS iteration (accuracy and
  cross entropy on the fitted images fit_y [n]; validation accuracy on
  val_x, val_y when watch_val, i.e. when validation is not fitted on)."""

  def __init__(self, fit_y, val_x, val_y, watch_val: bool):
    self.fit_y, self.val_x, self.val_y = fit_y, val_x, val_y
    self.watch_val = bool(watch_val)
    self.points: List[EvalPoint] = []

  def __call__(self, iteration, theta, problem) -> None:
    z = problem.last_logits  # of theta: the line search's last evaluation
    val_acc = None
    if self.watch_val:
      val_acc = _score(_Fit(theta, problem, 0).head(), self.val_x,
                       self.val_y)[0] / len(self.val_y)
    self.points.append(EvalPoint(
        iteration, float(np.mean(z.argmax(axis=1) == self.fit_y)),
        problem.cross_entropy(z), val_acc,
        len(self.val_y) if self.watch_val else 0))


def fit_head(train_x: np.ndarray, train_y: np.ndarray, num_classes: int,
             val_x: np.ndarray, val_y: np.ndarray, options: SolverOptions,
             on_iteration: Optional[Callable[[EvalPoint], None]] = None,
             train_groups: Optional[np.ndarray] = None,
             class_weights: Optional[np.ndarray] = None) -> SolverResult:
  """Chooses the setting (see the module docstring) and fits the head.

  Args:
    train_x: float32 [n, D] training vectors; train_y: int [n] class ids in
      [0, num_classes).
    num_classes: N.
    val_x, val_y: validation vectors [m, D] and ids [m] (m may be 0). The
      test set is never passed here: it stays unseen until the final
      evaluation.
    options: the grid and the fitting limits.
    on_iteration: called with each iteration of the final fit.
    train_groups: int [n] group of each training row (an image and its
      distorted copies share one), so cross-fitting holds them out
      together; None: every row its own group.
    class_weights: float [N] >= 0, the weight of each class id's images in
      the objective of every fit (choosing, k-fold and refit) and in the
      candidates' held-out accuracy and cross entropy; None weighs every
      image 1 (retrain/head/solve.py's `lbfgs_class_weights` makes them).

  Returns:
    The SolverResult; its head scores class id j in column j, its
    held_out the out-of-fold predictions.
  """
  started = time.monotonic()
  check(options)
  train_x, train_y = _as_arrays(train_x, train_y)
  val_x, val_y = _as_arrays(np.reshape(val_x, (-1, train_x.shape[1])), val_y)
  selection, candidates, chosen, reason, solutions = _choose(
      train_x, train_y, val_x, val_y, num_classes, options, class_weights)

  refit = selection != 'validation' or options.refit
  fit_x = np.concatenate([train_x, val_x]) if refit else train_x
  fit_y = np.concatenate([train_y, val_y]) if refit else train_y
  record = _Curve(fit_y, val_x, val_y, watch_val=not refit and len(val_y) > 0)
  history = record.points
  # The chosen candidate's fit on training starts the final fit (with
  # validation added it moves a little): ~30% fewer iterations in all.
  start = (solutions[candidates.index(chosen)] if solutions and
           options.standardise is False else None)
  fit = _fit_one(fit_x, fit_y, num_classes, chosen.l2,
                 chosen.label_smoothing, options, start=start,
                 callback=record, weights=_per_image(class_weights, fit_y))
  if on_iteration is not None:
    for point in history:
      on_iteration(point)
  reason = f'{_describe(chosen)}: {reason}'
  if refit and len(val_y):
    reason += '; refitted on training + validation'
  held_out = _held_out(
      fit, refit, train_x, train_y, val_x, val_y,
      np.arange(len(train_y)) if train_groups is None else np.asarray(
          train_groups, np.int64), num_classes, chosen, options,
      class_weights)
  # (In the validation case the chosen candidate's fit on training is that
  # head already: restarting from it stops at once.)
  train_only = fit.head() if not (refit and len(val_y)) else _fit_one(
      train_x, train_y, num_classes, chosen.l2, chosen.label_smoothing,
      options, start=start if start is not None else fit.theta,
      weights=_per_image(class_weights, train_y)).head()
  seconds = time.monotonic() - started
  logging.info('Head solver (L-BFGS): %s; final fit %d iterations on %d '
               'images, %.1f s in all.', reason, fit.iterations, len(fit_y),
               seconds)
  logging.info('Held-out predictions: %s.', held_out.method if held_out else
               'none (too few images of some class to hold any out)')
  return SolverResult(fit.head(), history, list(candidates), chosen,
                      selection, bool(refit and len(val_y)), reason, seconds,
                      held_out, train_only)
