"""The converging solver in a run: fit, log, TensorBoard and report.

`maybe_solve` is the pipeline's one call: it returns None when the run
trains with SGD (retrain/head/train.py), else the L-BFGS head as the same
`TrainResult` SGD returns, so evaluation and export do not care which
solver made it.

What it shows, so a user sees what was chosen and why:
- the log: each candidate's validation (or k-fold) accuracy and cross
  entropy, the chosen setting and the reason;
- TensorBoard: text `head_solver` (that table) in the train run; the final
  fit's `cross_entropy` and `accuracy` per L-BFGS iteration in `train/`
  (and `validation/` when validation was not refitted on), with the final
  weight histograms, under the same tags as SGD's;
- `<report_dir>/head_solver.json`: the same as data.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.common import atomic
from retrain.head import auto as head_auto
from retrain.head import imbalance as imbalance_lib
from retrain.head import math as head_math
from retrain.head import options as options_lib
from retrain.head import solver as solver_lib
from retrain.head import train as train_lib
from retrain.report import summaries as summaries_lib

REPORT_FILE = head_auto.REPORT_FILE
# A training set is strongly imbalanced when its largest class has at least
# this many times the images of its smallest: the run warns and says how
# the classes weigh (docs/accuracy.md, "Imbalanced classes").
IMBALANCE_RATIO = 3.0


def solver_markdown(result: solver_lib.SolverResult) -> str:
  """A markdown table of the candidates and the choice."""
  scored = 'validation' if result.selection == 'validation' else 'k-fold'
  lines = [f'**Head solver: L-BFGS.** Chosen: {result.reason}.', '',
           f'| L2 | label smoothing | {scored} accuracy | {scored} cross '
           'entropy | iterations | |', '|---|---|---|---|---|---|']
  for c in result.candidates:
    mark = 'chosen' if c is result.chosen else ''
    lines.append(f'| {c.l2:g} | {c.label_smoothing:g} | '
                 f'{100 * c.accuracy:.1f}% | {c.cross_entropy:.4f} | '
                 f'{c.iterations} | {mark} |')
  return '\n'.join(lines)


def write_report(report_dir: str, result: solver_lib.SolverResult,
                 class_weights: Optional[np.ndarray] = None,
                 adjustment: Optional[imbalance_lib.Adjustment] = None
                 ) -> str:
  """Writes <report_dir>/head_solver.json atomically; returns its path.
  `held_out` has the run's validation accuracy, cross entropy and count
  (HeldOut.summary: when cross-fitted, of the out-of-fold predictions of
  every training and validation photo) and how they were obtained.
  class_weights: what the objective weighed each class id's images by
  (None: 1).
  adjustment: the class-bias adjustment for the imbalance chosen on
  held-out predictions (None: none considered), written as
  `imbalance_adjustment` (`applied` false when its tau is 0; the
  before/after balanced accuracies in [0, 1])."""
  os.makedirs(report_dir, exist_ok=True)
  path = os.path.join(report_dir, REPORT_FILE)
  data = dict(result.summary(), class_weights=None if class_weights is None
              else [float(w) for w in class_weights],
              imbalance_adjustment=None if adjustment is None else dict(
                  adjustment.summary(), applied=adjustment.tau != 0),
              curve=[
      {'iteration': p.step, 'train_accuracy': p.train_accuracy,
       'cross_entropy': p.cross_entropy,
       'validation_accuracy': p.validation_accuracy}
      for p in result.history])
  return atomic.write_json(path, data)


def _write_summaries(writers: summaries_lib.Writers,
                     result: solver_lib.SolverResult, probabilities) -> None:
  with writers.train.as_default(step=0):
    tf.summary.text('head_solver', solver_markdown(result))
  for p in result.history:
    with writers.train.as_default(step=p.step):
      tf.summary.scalar('accuracy', p.train_accuracy)
      tf.summary.scalar('cross_entropy', p.cross_entropy)
    if p.validation_accuracy is not None:
      with writers.validation.as_default(step=p.step):
        tf.summary.scalar('accuracy', p.validation_accuracy)
  last = result.history[-1].step if result.history else 0
  held = result.held_out.summary() if result.held_out else {}
  if result.refit and 'validation_accuracy' in held:
    # The refitted head's own validation figures would flatter it: the
    # out-of-fold ones of every training and validation photo, at the
    # last iteration.
    with writers.validation.as_default(step=last):
      tf.summary.scalar('accuracy', held['validation_accuracy'])
      tf.summary.scalar('cross_entropy', held['validation_cross_entropy'])
  with writers.train.as_default(step=last):
    summaries_lib.histogram('final_layer/weights', result.head.weights)
    summaries_lib.histogram('final_layer/biases', result.head.biases)
    summaries_lib.histogram('final_layer/activations', probabilities)


def _log_held_out(result: solver_lib.SolverResult) -> None:
  """One line when cross-fitted: the validation accuracy the run reports
  (out of fold, every training and validation photo: ~9x the validation
  photos, so the steadier estimate of the test accuracy), and that of the
  validation photos alone beside it."""
  held = result.held_out.summary() if result.held_out else {}
  if 'held_out_accuracy' in held:
    alone = held.get('validation_split_only')
    logging.info('Validation accuracy %.1f%%: %s.%s',
                 100 * held['validation_accuracy'], held['method'],
                 '' if not alone else
                 ' (The %d validation photos alone: %.1f%%, a noisier '
                 'estimate.)' % (alone['count'], 100 * alone['accuracy']))


def lbfgs_class_weights(counts, class_weighting: str, sampling: str
                        ) -> Optional[np.ndarray]:
  """float64 [N] weight of each class id's images in the L-BFGS objective,
  or None when every image weighs the same.

  The full-batch objective is what SGD's batches estimate (see
  retrain/head/options.py): --sampling classes (the default, retrain.py's
  draws) weighs every class the same, n / (K * n_c) per image of a class of
  n_c training images (K classes with images, n images); --sampling images
  weighs every image 1, unless --class_weighting balanced.

  Args:
    counts: training images per class id, int [N].
  """
  counts = np.asarray(counts, np.float64)
  if sampling == 'classes':
    class_weighting = 'balanced'
  weights = options_lib.class_weights(counts, class_weighting, 'images')
  present = counts > 0
  if not present.any() or np.ptp(weights[present]) == 0:
    return None
  return weights.astype(np.float64)


def imbalance(counts, labels: Sequence[str]) -> Optional[str]:
  """A sentence naming the largest and smallest training class when the
  largest has at least IMBALANCE_RATIO times the images of the smallest
  (classes without training images aside), else None."""
  counts = np.asarray(counts, np.int64)
  present = np.flatnonzero(counts > 0)
  if len(present) < 2:
    return None
  big = present[np.argmax(counts[present])]
  small = present[np.argmin(counts[present])]
  ratio = counts[big] / counts[small]
  if ratio < IMBALANCE_RATIO:
    return None
  return (f'The training set is strongly imbalanced: {labels[big]!r} has '
          f'{counts[big]} images, {labels[small]!r} {counts[small]} '
          f'({ratio:.1f}x; strongly means {IMBALANCE_RATIO:g}x or more)')


def _say_weighting(config, counts, labels, weights) -> None:
  """Logs how the classes weigh, and a warning on a strong imbalance."""
  strong = imbalance(counts, labels)
  if weights is None:
    how = 'every image weighs the same'
    if config.head.sampling == 'classes':
      how += ' (the classes are equally large)'
  else:
    how = ('every class weighs the same in the head\'s objective and in '
           'choosing its L2 (class weights n / (K * n_c), from '
           + ('--sampling classes, the default' if config.head.sampling ==
              'classes' else '--class_weighting balanced') + ')')
  hint = ('; pass --sampling images to weigh the classes by their size '
          '(when the test photos have the training proportions)'
          if weights is not None and config.head.sampling == 'classes' else
          '; pass --class_weighting balanced (or --sampling classes) to '
          'weigh every class the same' if weights is None else '')
  if strong:
    logging.warning('%s: %s%s.', strong, how, hint)
  else:
    logging.info('Head solver (L-BFGS): %s.', how)


def maybe_solve(config, train_x: np.ndarray, train_y: np.ndarray,
                labels: Sequence[str], val_x: np.ndarray, val_y: np.ndarray,
                writers: Optional[summaries_lib.Writers] = None,
                groups=None) -> Optional[train_lib.TrainResult]:
  """The L-BFGS head when the run uses it, else None (train with SGD).

  Args:
    config: the run's Config (head_solver, already 'lbfgs' or 'sgd', and
      the solver_* fields).
    train_x, train_y: float32 [n, D] training vectors (distorted copies
      included) and int class ids [n]; val_x, val_y likewise [m, D], [m].
      The test set is not an argument: the solver never sees it.
    labels: the N class names in id order (ids are in [0, N); the names
      are for the imbalance warning).
    writers: TensorBoard writers, or None.
    groups: the retrain.head.held_out.Groups of the training and
      validation rows (photos, their distorted copies and near-duplicates),
      for the held-out predictions; None: every row its own photo.
  """
  if config.head.head_solver != 'lbfgs':  # resolved by pipeline.run
    return None
  if config.outputs.intermediate_store_frequency:
    logging.warning('--intermediate_store_frequency is ignored with '
                    '--head_solver lbfgs (it has no training steps).')
  num_classes = len(labels)
  counts = np.bincount(np.asarray(train_y, np.int64), minlength=num_classes)
  weights = lbfgs_class_weights(counts, config.head.class_weighting,
                                config.head.sampling)
  _say_weighting(config, counts, labels, weights)
  result = solver_lib.fit_head(
      train_x, train_y, num_classes, val_x, val_y,
      solver_lib.SolverOptions.from_config(config),
      groups=groups, class_weights=weights)
  strong = weights is not None and imbalance(counts, labels or [
      str(i) for i in range(num_classes)]) is not None
  result, adjustment = imbalance_lib.maybe_adjust(
      config.head.imbalance_adjustment, result, np.concatenate([train_y, val_y]),
      num_classes, strong)
  # Every iteration is in TensorBoard and the report; the log gets a few.
  for k in head_math.evenly_spread(len(result.history), 10):
    point = result.history[k]
    logging.info('L-BFGS iteration %d: train accuracy = %.1f%%, cross '
                 'entropy = %.4f', point.step, 100 * point.train_accuracy,
                 point.cross_entropy)
  if writers is not None:
    _write_summaries(writers, result,
                     result.head.probabilities(train_x[:1000]))
  path = write_report(config.outputs.report_dir, result, weights,
                      adjustment)
  _log_held_out(result)
  logging.info('The head solver\'s candidates and curves are in %s.', path)
  return train_lib.TrainResult(
      result.head, result.history, None,
      result.held_out if result.refit or len(val_y) == 0 else None,
      result.train_only_head if result.refit else None)
