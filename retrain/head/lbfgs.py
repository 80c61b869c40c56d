"""One L-BFGS fit of the softmax head: the objective and the optimiser.

The objective (see retrain/head/solver.py, which chooses its setting):

  sum over images of w_i * cross_entropy(softmax(z_i @ W' + b), t_i) / sum w_i
    + l2/2 * |W'|^2

over vectors z standardised per dimension (or scaled by one factor, see
`standardisation`), t the one-hot targets, optionally label-smoothed, w the
images' weights. L-BFGS itself is a few lines of numpy (float64 state); the
products with the vectors run in TensorFlow (float32). No scipy.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from retrain.head import math as head_math
from retrain.head.model import Head
from retrain.head.train import EvalPoint

# L-BFGS: 10 pairs of history is the usual choice (scipy's and Nocedal &
# Wright's); the Armijo constant 1e-4 likewise.
_MEMORY = 10
_ARMIJO = 1e-4
_MAX_HALVINGS = 30


def dot(a: np.ndarray, b: np.ndarray) -> float:
  """a . b of two float64 vectors without BLAS: numpy's `@` calls a
  threaded BLAS whose threads, on 2 cores busy with other work, made a
  19,205-long dot product take milliseconds instead of microseconds (the
  solver spent 45 of 60 s in them)."""
  return float(np.sum(a * b))



class Problem:
  """Softmax cross-entropy + L2 over fixed vectors, standardised implicitly.

  Parameters theta float64 [(D + 1) * N]: W' [D, N] (standardised space)
  then b [N]. Each evaluation costs two float32 products of the [n, D]
  vectors with [D, N] weights; TensorFlow runs them (on 2 busy cores its
  kernels were 2-5x faster than numpy's BLAS for these skinny shapes), the
  rest is float64 numpy on [n, N] and [D, N] arrays.
  """

  def __init__(self, x, y: np.ndarray, num_classes: int,
               mean: np.ndarray, scale: np.ndarray, l2: float,
               label_smoothing: float, weights: Optional[np.ndarray] = None):
    """x: the vectors, float32 [n, D] (a numpy array, or a tf.Tensor that
    several problems share: it is not copied); weights: float [n] >= 0 of
    each image in the data term (None: 1)."""
    self.x = x if isinstance(x, tf.Tensor) else tf.constant(x)
    self.y = y
    self.n, self.dim = (int(d) for d in x.shape)
    # Each image's share of the data term: 1 / n, or w_i / sum(w).
    self.share = (np.full((self.n, 1), 1.0 / max(self.n, 1)) if weights is None
                  else shares(weights))
    self.classes = num_classes
    self.to_input = Standard(mean, scale)
    self.l2 = l2
    self.targets = head_math.smoothed_targets(y, num_classes, label_smoothing)
    # Kept from the last evaluation, for the iteration callback.
    self.last_logits = None

  def split(self, theta):
    w = theta[:-self.classes].reshape(self.dim, self.classes)
    return w, theta[-self.classes:]

  def logits(self, w, b) -> np.ndarray:
    """float64 [n, N] for standardised weights w [D, N] and biases b [N]."""
    w_in = self.to_input.weights(w)
    z = tf.matmul(tf.constant(w_in.T, tf.float32), self.x, transpose_b=True)
    return z.numpy().T.astype(np.float64) + self.to_input.biases(b, w_in)

  def __call__(self, theta) -> Tuple[float, np.ndarray]:
    w, b = self.split(theta)
    z = self.logits(w, b)
    self.last_logits = z
    log_p = head_math.log_softmax(z)
    data_loss = -np.sum(self.share * self.targets * log_p)
    g = (np.exp(log_p) - self.targets) * self.share  # [n, N]
    gx = tf.matmul(tf.constant(g, tf.float32), self.x, transpose_a=True)
    gx = gx.numpy().T.astype(np.float64)  # [D, N]
    gb = g.sum(axis=0)
    gw = self.to_input.gradient(gx, gb)
    gw += self.l2 * w
    loss = data_loss + 0.5 * self.l2 * float(np.sum(w * w))
    return loss, np.concatenate([gw.ravel(), gb])

  def cross_entropy(self, logits: np.ndarray) -> float:
    """Mean cross entropy against the true (unsmoothed) class ids."""
    return head_math.cross_entropy(logits, self.y)


class Standard:
  """Weights of standardised vectors to and from the input space, for
  `standardisation`'s mean and scale float64 [D, ...]: the weights' shape
  [D, ..., N] without N (mean and scale [D] for weights [D, N]; [D, folds]
  for the folds' weights [D, folds, N] side by side).

  Unstandardised (the default) the mean is all zeros and the scale one
  factor: then the mean's terms are skipped and the factor divides as a
  scalar, with the same bits as the full arithmetic (x - 0 is x, and
  x / s is x / s either way) and two [D, N] products fewer each
  evaluation.
  """

  def __init__(self, mean: np.ndarray, scale: np.ndarray):
    self.mean = mean if np.any(mean) else None
    # One factor per column of the trailing axes when the scale is
    # constant along D: [1, ...] broadcasts as the full [D, ...] would.
    self.scale = scale[:1] if np.all(scale == scale[:1]) else scale

  def weights(self, w: np.ndarray) -> np.ndarray:
    """Input-space weights [D, ..., N] of standardised weights w."""
    return w / self.scale[..., None]

  def biases(self, b: np.ndarray, w_in: np.ndarray) -> np.ndarray:
    """Input-space biases [..., N] of biases b given w_in = weights(w)."""
    if self.mean is None:
      return b
    return b - np.sum(self.mean[..., None] * w_in, axis=0)

  def gradient(self, gx: np.ndarray, gb: np.ndarray) -> np.ndarray:
    """Gradient of the data term in standardised weights [D, ..., N] from
    its gradient gx [D, ..., N] in input-space weights and gb [..., N] in
    the biases."""
    if self.mean is not None:
      gx = gx - self.mean[..., None] * gb
    return gx / self.scale[..., None]


def shares(weights: np.ndarray) -> np.ndarray:
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
      a = rho * dot(s, q)
      q -= a * y
      alphas.append(a)
    if pairs:
      s, y, _ = pairs[-1]
      q *= dot(s, y) / dot(y, y)
    else:  # A first step of length ~1 in theta.
      q /= max(1.0, float(np.linalg.norm(grad)))
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
      q += s * (a - rho * dot(y, q))
    direction = -q
    slope = dot(grad, direction)
    if slope >= 0:  # Not a descent direction (round-off): restart.
      pairs.clear()
      direction, slope = -grad, -dot(grad, grad)
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
    sy = dot(s, y)
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


class Vectors:
  """Vectors x float32 [n, D] that several fits of one solver call read in
  overlapping sets of rows (the grid, the folds, the final fit), with the
  `standardisation` of any such set. Not `standardise` (one scale), each
  set's scale comes from every row's sum of squares, summed once here: one
  pass over x where each set's own standardisation read its rows again
  (and copied them)."""

  def __init__(self, x: np.ndarray, standardise: bool):
    self.x, self.standardise = x, bool(standardise)
    self._tensors = {}
    self.squares = None if self.standardise else tf.reduce_sum(
        tf.square(self.tensor()), 1).numpy().astype(np.float64)

  def tensor(self, rows: Optional[slice] = None) -> tf.Tensor:
    """x[rows] (None: every row) as one float32 tf.Tensor, made once for
    every fit that reads those rows (each copy is [rows, D] float32)."""
    key = None if rows is None else (rows.start, rows.stop, rows.step)
    if key not in self._tensors:
      self._tensors[key] = tf.constant(self.x if rows is None else
                                       self.x[rows])
    return self._tensors[key]

  def standardisation(self, rows=None) -> Tuple[np.ndarray, np.ndarray]:
    """`standardisation` of x[rows] (rows: a slice, bool mask or indices;
    None: every row)."""
    if self.standardise:
      return standardisation(self.x if rows is None else self.x[rows])
    squares = self.squares if rows is None else self.squares[rows]
    rms = float(np.sqrt(np.sum(squares) / max(squares.size * self.x.shape[1],
                                              1)))
    return (np.zeros(self.x.shape[1]),
            np.full(self.x.shape[1], rms if rms > 0 else 1.0))


@dataclasses.dataclass
class Fit:
  """A fitted head: its parameters theta float64 [(D + 1) * N] (see
  Problem), the problem they solve and the L-BFGS iterations taken."""
  theta: np.ndarray
  problem: Problem
  iterations: int

  def head(self) -> Head:
    """The fitted layer in the input space (standardisation folded in)."""
    w, b = self.problem.split(self.theta)
    w_in = self.problem.to_input.weights(w)
    return Head(w_in.astype(np.float32),
                self.problem.to_input.biases(b, w_in).astype(np.float32))

  def predict_proba(self, x: np.ndarray) -> np.ndarray:
    """float32 [m, N] class probabilities of vectors x float32 [m, D]."""
    return self.head().predict_proba(x)


class Curve:
  """An L-BFGS callback recording a fit's curve: one
  retrain.head.train.EvalPoint per iteration (accuracy and cross entropy
  on the fitted images' class ids fit_y [n]; accuracy on val_x [m, D],
  val_y [m] when watch_val, i.e. when validation is not fitted on)."""

  def __init__(self, fit_y, val_x, val_y, watch_val: bool):
    self.fit_y, self.val_x, self.val_y = fit_y, val_x, val_y
    self.watch_val = bool(watch_val)
    self.points: List[EvalPoint] = []

  def __call__(self, iteration, theta, problem) -> None:
    z = problem.last_logits  # of theta: the line search's last evaluation
    val_acc = None
    if self.watch_val:
      val_acc = head_math.accuracy(Fit(theta, problem, 0).head().logits(
          self.val_x), self.val_y)
    self.points.append(EvalPoint(
        iteration, head_math.accuracy(z, self.fit_y),
        problem.cross_entropy(z), val_acc,
        len(self.val_y) if self.watch_val else 0))


def class_sample_weight(class_weights: Optional[np.ndarray], y: np.ndarray
                        ) -> Optional[np.ndarray]:
  """float64 [n] weight of each image (its class's, from class_weights
  float [N]), or None when class_weights is None."""
  if class_weights is None:
    return None
  return np.asarray(class_weights, np.float64)[y]


@dataclasses.dataclass(frozen=True)
class SoftmaxLbfgs:
  """One softmax head of one setting, fitted to convergence: the fit shape
  every trainer of the head follows (scikit-learn's): the settings here,
  `fit(vectors, labels, num_classes)` returns the fitted head.

    SoftmaxLbfgs(l2=0.1, label_smoothing=0.0, max_iterations=...,
                 tolerance=..., standardise=True).fit(x, y, 5).predict_proba(z)

  Attributes:
    l2: L2 strength on the (standardised) weights, >= 0; the data term is
      the (weighted) mean cross entropy.
    label_smoothing: in [0, 1).
    max_iterations, tolerance: L-BFGS limits (see `lbfgs`); the defaults
      are config.py's solver_max_iterations and solver_tolerance.
    standardise: fit on standardised vectors (see `standardisation`).
  """
  l2: float
  label_smoothing: float
  max_iterations: int
  tolerance: float
  standardise: bool

  @classmethod
  def of(cls, l2: float, label_smoothing: float, options) -> 'SoftmaxLbfgs':
    """The fitter of one setting under a retrain.head.solver.SolverOptions
    (its max_iterations, tolerance and standardise)."""
    return cls(l2, label_smoothing, options.max_iterations, options.tolerance,
               options.standardise)

  def fit(self, x, y: np.ndarray, num_classes: int,
          sample_weight: Optional[np.ndarray] = None,
          start: Optional[np.ndarray] = None, standard=None,
          callback=None) -> Fit:
    """Fits x float32 [n, D] (numpy, or a tf.Tensor several fits share) to
    class ids y int [n] in [0, num_classes).

    Args:
      sample_weight: float [n] >= 0 weight of each image (None: 1).
      start: theta to start from (a warm start), None for zeros.
      standard: (mean, scale) of `standardisation`, None to compute it.
      callback: called (iteration, theta, problem) after each iteration.
    """
    if standard is None:
      standard = standardisation(x, self.standardise)
    mean, scale = standard
    problem = Problem(x, y, num_classes, mean, scale, self.l2,
                      self.label_smoothing, sample_weight)
    theta0 = (np.zeros((x.shape[1] + 1) * num_classes) if start is None
              else start)
    theta, iterations = lbfgs(problem, theta0, self.max_iterations,
                              self.tolerance,
                              None if callback is None else
                              lambda i, v, t: callback(i, t, problem))
    return Fit(theta, problem, iterations)
