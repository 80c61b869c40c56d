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
  validation images, each candidate is fitted on the training vectors (to
  `choice_tolerance`: a ranking needs no more) and scored on the
  validation vectors; the best validation accuracy wins (with
  class weights, the accuracy and cross entropy are weighted the same way,
  which with balanced weights is the balanced accuracy; ties:
  lower validation cross entropy, then the stronger L2). Then the chosen
  setting is refitted on training + validation (`refit`; more data measured
  better, docs/accuracy.md).
- `k-fold`: otherwise (a validation set too small to choose on), `folds`-fold
  cross-validation on training + validation together, folds stratified by
  class, a photo with its copies and near-duplicates (each candidate's folds fitted as one problem, see
  held_out.fold_grid); the chosen setting is then fitted on all of training
  + validation, starting from the mean of its folds' fits.
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
together) and each fold is predicted by a head fitted on the others; the
folds' heads are fitted as one problem (one product of the vectors with
every fold's weights an evaluation), warm started from the final fit (a
few dozen iterations in all). The out-of-fold
logits of every training and validation photo (distorted copies aside) are
what every "validation" figure (accuracy, per-class metrics, confusion,
TensorBoard, head_solver.json), the temperature and the rejection
threshold are computed on: ~9x the validation photos alone, so the
reported accuracy is a far steadier estimate of the test accuracy. When
the final head did not train on validation, its own validation logits are
held out already, and the figures are those of the validation photos.

L-BFGS itself is a few lines of numpy (float64 state); the products with
the vectors run in TensorFlow (float32). No scipy.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from retrain.errors import DatasetError
from retrain.head import folds as folds_lib
from retrain.head import held_out as held_out_lib
from retrain.head import lbfgs as lbfgs_lib
from retrain.head import math as head_math
from retrain.head.train import EvalPoint, Head


@dataclasses.dataclass(frozen=True)
class SolverOptions:
  """How the converging solver fits and chooses (defaults: config.py).

  Attributes:
    l2_grid: L2 strengths tried (on standardised vectors, mean loss).
    label_smoothing_grid: label smoothing values tried, each in [0, 1).
    max_iterations: L-BFGS iterations per fit at most.
    tolerance: a fit stops when an iteration lowers the objective by less
      than this fraction of it.
    choice_tolerance: the same for the fits that only rank the settings on
      the validation set (looser: see `_choose`); the chosen setting's
      fits stop at `tolerance`.
    folds: k of the k-fold selection.
    min_validation_per_class: fewer validation images than this in some
      class means k-fold instead of the validation set.
    refit: after choosing on validation, refit on training + validation.
    seed: fold assignment.
    standardise: fit on standardised vectors (see the module docstring);
      False fits the raw vectors (for comparison in bench/accuracy.py).
    train_only_head: when the final head trains on validation, fit the
      chosen setting on the training rows alone even if held-out
      predictions exist (fine-tuning starts from it; without them it is
      always fitted: it judges validation).
  """
  l2_grid: Tuple[float, ...]
  label_smoothing_grid: Tuple[float, ...]
  max_iterations: int
  tolerance: float
  choice_tolerance: float
  folds: int
  min_validation_per_class: int
  refit: bool
  seed: int = 0
  standardise: bool = False
  train_only_head: bool = True

  @classmethod
  def from_config(cls, config) -> 'SolverOptions':
    return cls(l2_grid=_floats('solver_l2_grid', config.head.solver_l2_grid),
               label_smoothing_grid=_floats(
                   'solver_label_smoothing_grid',
                   config.head.solver_label_smoothing_grid),
               max_iterations=config.head.solver_max_iterations,
               tolerance=config.head.solver_tolerance,
               choice_tolerance=config.head.solver_choice_tolerance,
               folds=config.head.solver_folds,
               min_validation_per_class=config.head.solver_min_validation_per_class,
               refit=config.head.solver_refit, seed=config.head.random_seed,
               standardise=config.head.solver_standardise,
               train_only_head=config.finetune.fine_tune)


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
                       '0.001,0.01,0.1.', fields=('solver_l2_grid',))
  if not options.label_smoothing_grid or any(
      not 0 <= v < 1 for v in options.label_smoothing_grid):
    raise DatasetError(
        'solver_label_smoothing_grid='
        f'{",".join(map(str, options.label_smoothing_grid))} must list one '
        'or more values in [0, 1), e.g. 0 or 0,0.1.', fields=('solver_label_smoothing_grid',))
  for name, value in (('solver_tolerance', options.tolerance),
                      ('solver_choice_tolerance', options.choice_tolerance)):
    if not 0 <= value < 1:
      raise DatasetError(f'{name}={value:g} must be in [0, 1), e.g. 1e-06: '
                         'the fraction of the objective an iteration must '
                         'lower it by for the fit to go on.', fields=(name,))
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
      out, and what judges validation when there are no held-out
      predictions); the final head itself when that did not train on
      validation; None when held-out predictions exist and the options
      did not ask for it (SolverOptions.train_only_head).
  """
  head: Head
  history: List[EvalPoint]
  candidates: List[Candidate]
  chosen: Candidate
  selection: str
  refit: bool
  reason: str
  seconds: float
  held_out: Optional[held_out_lib.HeldOut] = None
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


def _as_arrays(x, y) -> Tuple[np.ndarray, np.ndarray]:
  return np.ascontiguousarray(x, np.float32), np.asarray(y, np.int64)


@dataclasses.dataclass(frozen=True)
class _Task:
  """What every fit of one fit_head call shares: N classes, the options and
  the class weights float [N] (None: every image weighs 1)."""
  num_classes: int
  options: SolverOptions
  class_weights: Optional[np.ndarray] = None

  def fit(self, c: Candidate, x, y: np.ndarray, start=None,
          standard=None, callback=None) -> lbfgs_lib.Fit:
    """Candidate c fitted on x [n, D] (numpy or tf.Tensor), y [n] (see
    SoftmaxLbfgs.fit)."""
    return lbfgs_lib.SoftmaxLbfgs.of(c.l2, c.label_smoothing, self.options
                                     ).fit(x, y, self.num_classes,
                                           lbfgs_lib.class_sample_weight(self.class_weights, y),
                                           start, standard, callback)

  def ranking(self) -> '_Task':
    """This task with the fits stopping at options.choice_tolerance."""
    return dataclasses.replace(self, options=dataclasses.replace(
        self.options, tolerance=self.options.choice_tolerance))

  def score(self, head: Head, x: np.ndarray, y: np.ndarray):
    """(correct, summed cross entropy) of head on x, y, each image weighed
    by its class's weight when the classes are weighted."""
    if self.class_weights is None:
      return _score(head, x, y)
    return _score(head, x, y, self.class_weights[y])


@dataclasses.dataclass(frozen=True)
class _Sets:
  """fit_head's training vectors float32 [n, D] and ids int64 [n], and its
  validation ones [m, D], [m] (m may be 0). all_x and all_y, training
  then validation, are concatenated once, when first read (cached_property
  writes the instance's __dict__, which frozen does not guard); `vectors`
  is all_x with the standardisation of any set of its rows
  (lbfgs.Vectors; `train` selects the training rows)."""
  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  standardise: bool

  @property
  def train(self) -> slice:
    return slice(0, len(self.train_y))

  @functools.cached_property
  def vectors(self) -> lbfgs_lib.Vectors:
    return lbfgs_lib.Vectors(self.all_x, self.standardise)

  @functools.cached_property
  def all_x(self) -> np.ndarray:
    return np.concatenate([self.train_x, self.val_x])

  @functools.cached_property
  def all_y(self) -> np.ndarray:
    return np.concatenate([self.train_y, self.val_y])


def _score(head: Head, x: np.ndarray, y: np.ndarray,
           weights: Optional[np.ndarray] = None) -> Tuple[float, float]:
  """(correct predictions, summed cross entropy) of head on x, y; with
  weights float [len(y)] each image counts its weight in both."""
  z = head.logits(x)
  return (head_math.correct(z, y, weights),
          head_math.cross_entropy(z, y, weights, total=True))


def _grid(options: SolverOptions) -> List[Candidate]:
  """Candidates, strongest L2 first (the warm-start order)."""
  return [Candidate(l2, s) for s in options.label_smoothing_grid
          for l2 in sorted(options.l2_grid, reverse=True)]


def _score_grid(candidates: Sequence[Candidate], x, y, standard, held_x,
                held_y, task: _Task, solutions: Optional[list] = None
                ) -> List[Tuple[float, float, int]]:
  """(correct, summed cross entropy, iterations) of each candidate fitted
  on x, y (standardised by `standard`: lbfgs.standardisation's (mean,
  scale) of x) and scored on held_x, held_y; warm-started along the grid.
  Each candidate's parameters are appended to `solutions` if given. With
  class weights the fit and both scores weigh each image by its class's
  weight."""
  scores, start, smoothing = [], None, None
  for c in candidates:
    if c.label_smoothing != smoothing:
      start, smoothing = None, c.label_smoothing
    fit = task.fit(c, x, y, start, standard)
    start = fit.theta
    if solutions is not None:
      solutions.append(fit.theta)
    scores.append((*task.score(fit.head(), held_x, held_y), fit.iterations))
  return scores


def _held_out(final: lbfgs_lib.Fit, refit: bool, sets: _Sets,
              groups: held_out_lib.Groups, chosen: Candidate, task: _Task
              ) -> Optional[held_out_lib.HeldOut]:
  """The HeldOut of fit_head's final fit (see the module docstring)."""
  n_train, n_val = len(sets.train_y), len(sets.val_y)
  if not refit:
    logits = np.full((n_train + n_val, task.num_classes), np.nan, np.float32)
    logits[n_train:] = final.head().logits(sets.val_x)
    return held_out_lib.HeldOut(
        logits, n_train, 0, 'the validation photos, which the head did not '
        'train on', y=sets.all_y, photos=n_train + np.arange(n_val))
  crossed = held_out_lib.cross_fit(sets.vectors, sets.all_y,
                                   groups.fold_groups(n_val), task.num_classes,
                      chosen, task.options, start=final.theta,
                      class_weights=task.class_weights)
  if crossed is None:
    return None
  logits, folds, iterations = crossed
  photos = held_out_lib.photo_rows(groups.photo, n_val)
  return held_out_lib.HeldOut(logits, n_train, folds, held_out_lib.describe(
      len(photos), folds), iterations, y=sets.all_y, photos=photos)


def _how(held_out: Optional[held_out_lib.HeldOut]) -> str:
  """held_out's method, with how the cross-fitting went, for the log."""
  if held_out is None:
    return 'none (too few images of some class to hold any out)'
  if not held_out.folds:
    return held_out.method
  return (f'{held_out.method}; each fold predicted by a head of the chosen '
          'setting fitted on the other folds, distorted copies held out with '
          'their photo; the exported head trained on all of them')


def _best(candidates: Sequence[Candidate]) -> Candidate:
  """Highest accuracy; ties: lower cross entropy, then stronger L2."""
  return min(candidates, key=lambda c: (-c.accuracy, c.cross_entropy, -c.l2))


def _describe(c: Candidate) -> str:
  text = f'l2={c.l2:g}'
  if c.label_smoothing:
    text += f', label_smoothing={c.label_smoothing:g}'
  return text


def _choose(sets: _Sets, task: _Task, groups: held_out_lib.Groups):
  """Scores the grid (see the module docstring); a k-fold choice deals
  groups' rows (a photo, its copies, its near-duplicates) into one fold.

  Returns:
    (selection, candidates scored, chosen, reason, solutions): solutions
    holds each candidate's parameters fitted on training when validation
    chose, the mean of its k folds' parameters when k-fold did (else
    empty).
  """
  options, num_classes, val_y = task.options, task.num_classes, sets.val_y
  candidates = _grid(options)
  trained = np.flatnonzero(np.bincount(sets.train_y, minlength=num_classes))
  val_counts = np.bincount(val_y, minlength=num_classes)[trained]
  all_y = sets.all_y
  fold_groups = groups.fold_groups(len(val_y))
  smallest_class = int(folds_lib.groups_per_class(all_y, fold_groups,
                                                  num_classes)[trained].min())
  solutions: List[np.ndarray] = []
  if len(candidates) == 1:
    return 'single', candidates, candidates[0], 'one candidate setting only', []
  if len(val_y) and val_counts.min() >= options.min_validation_per_class:
    selection, held = 'validation', _held(val_y, task.class_weights)
    scores = _score_grid(candidates, sets.vectors.tensor(sets.train),
                         sets.train_y,
                         sets.vectors.standardisation(sets.train), sets.val_x,
                         val_y, task.ranking(), solutions)
    reason = (f'best validation accuracy of {len(candidates)} settings '
              f'(N={len(val_y)})')
  elif smallest_class >= options.folds:
    selection, held = 'k-fold', _held(all_y, task.class_weights)
    fold = folds_lib.group_folds(all_y, fold_groups, options.folds,
                                 options.seed)
    weights = lbfgs_lib.class_sample_weight(task.class_weights, all_y)
    scores = []
    for logits, theta, iterations in held_out_lib.fold_grid(
        candidates, sets.vectors, all_y, num_classes, fold, options,
        task.class_weights):
      scores.append((head_math.correct(logits, all_y, weights),
                     head_math.cross_entropy(logits, all_y, weights,
                                             total=True), iterations))
      solutions.append(theta)
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


def _train_only(final: lbfgs_lib.Fit, saw_validation: bool, wanted: bool,
                start, chosen: Candidate, sets: _Sets, task: _Task):
  """SolverResult.train_only_head: the final head if it did not train on
  validation, else (if `wanted`) the chosen setting fitted on the
  training rows from `start`, else None."""
  if not saw_validation:
    return final.head()
  if not wanted:
    return None
  return task.fit(chosen, sets.vectors.tensor(sets.train), sets.train_y,
                  start, sets.vectors.standardisation(sets.train)).head()


def fit_head(train_x: np.ndarray, train_y: np.ndarray, num_classes: int,
             val_x: np.ndarray, val_y: np.ndarray, options: SolverOptions,
             groups: Optional[held_out_lib.Groups] = None,
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
    groups: which training and validation rows cross-fitting holds out
      together (a photo, its distorted copies and its near-duplicates) and
      which rows are photos (held_out.Groups); None: every row its own
      photo.
    class_weights: float [N] >= 0, the weight of each class id's images in
      the objective of every fit (choosing, k-fold and refit) and in the
      candidates' held-out accuracy and cross entropy; None weighs every
      image 1 (retrain/report/head_solver.py's `lbfgs_class_weights` makes
      them).

  Returns:
    The SolverResult; its head scores class id j in column j, its history
    the final fit's iterations, its held_out the out-of-fold predictions.
  """
  started = time.monotonic()
  check(options)
  train_x, train_y = _as_arrays(train_x, train_y)
  val_x, val_y = _as_arrays(np.reshape(val_x, (-1, train_x.shape[1])), val_y)
  sets = _Sets(train_x, train_y, val_x, val_y, options.standardise)
  task = _Task(num_classes, options, class_weights)
  groups = groups or held_out_lib.Groups(np.arange(len(train_y)))
  selection, candidates, chosen, reason, solutions = _choose(sets, task,
                                                             groups)

  refit = selection != 'validation' or options.refit
  fit_x, fit_y = ((sets.vectors.tensor(), sets.all_y) if refit else
                  (sets.vectors.tensor(sets.train), train_y))
  record = lbfgs_lib.Curve(fit_y, val_x, val_y,
                           watch_val=not refit and len(val_y) > 0)
  # The chosen candidate's fit on training (or the mean of its fits on
  # the k folds) starts the final fit (with validation added it moves a
  # little): ~30% fewer iterations in all.
  start = (solutions[candidates.index(chosen)] if solutions and
           options.standardise is False else None)
  fit = task.fit(chosen, fit_x, fit_y, start,
                 sets.vectors.standardisation(None if refit else sets.train),
                 record)
  if not record.points:  # converged where it started: one point still
    record(0, fit.theta, fit.problem)
  reason = f'{_describe(chosen)}: {reason}'
  if refit and len(val_y):
    reason += '; refitted on training + validation'
  held_out = _held_out(fit, refit, sets, groups, chosen, task)
  # (In the validation case the chosen candidate's fit on training, to
  # choice_tolerance, starts it.)
  train_only = _train_only(
      fit, refit and len(val_y), options.train_only_head or held_out is None,
      start if selection == 'validation' and start is not None else
      fit.theta, chosen, sets, task)
  seconds = time.monotonic() - started
  logging.info('Head solver (L-BFGS): %s; final fit %d iterations on %d '
               'images, %.1f s in all.', reason, fit.iterations, len(fit_y),
               seconds)
  logging.info('Held-out predictions: %s.', _how(held_out))
  return SolverResult(fit.head(), record.points, list(candidates), chosen,
                      selection, bool(refit and len(val_y)), reason, seconds,
                      held_out, train_only)
