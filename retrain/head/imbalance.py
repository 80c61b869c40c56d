"""A strongly imbalanced training set: the head's class biases tuned for
balanced accuracy on held-out predictions.

A head fitted on few images of a class under-predicts that class on new
photos, even with class-balanced weights in its objective: the few images
are fitted closely, so their out-of-fold logits for their own class are
lower than the fitted ones. Post-hoc logit adjustment (Menon et al.,
"Long-tail learning via logit adjustment", ICLR 2021) adds
-tau * log(prior_c) to each class c's logit; here tau is chosen on the
out-of-fold logits the solver makes anyway (never on the test set), for
the highest balanced accuracy (mean per-class recall; ties: the lower
class-balanced cross entropy, then the tau nearest 0).

The adjustment is a change of the head's biases only (float32 [N]), so
every export and the reports see a plain head. It is made only when the
training set is strongly imbalanced; otherwise the head is left as fitted,
bit for bit. docs/accuracy.md ("Imbalanced classes") has the measurements.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from absl import logging

from retrain.head import math as head_math

# The strengths tried: 0 (no change) to twice the log prior.
TAUS = tuple(np.round(np.arange(-0.5, 2.51, 0.25), 2))


@dataclasses.dataclass
class Adjustment:
  """The bias change chosen on held-out logits.

  Attributes:
    tau: the strength chosen (0: none).
    biases: float32 [N] to add to the head's biases (zeros when tau is 0).
    before, after: held-out balanced accuracy in [0, 1] without and with it.
    count: held-out images it was chosen on.
  """
  tau: float
  biases: np.ndarray
  before: float
  after: float
  count: int

  def summary(self) -> dict:
    """JSON-ready figures."""
    return {'tau': float(self.tau), 'biases': [float(b) for b in self.biases],
            'held_out_balanced_accuracy_before': self.before,
            'held_out_balanced_accuracy_after': self.after,
            'held_out_count': self.count}


def balanced_accuracy(logits: np.ndarray, y: np.ndarray) -> float:
  """Mean recall over the class ids present in y (int [n]) of the argmax
  of logits float [n, N]; 0 when y is empty."""
  y = np.asarray(y, np.int64)
  if not len(y):
    return 0.0
  hit = head_math.hits(logits, y)
  present = np.unique(y)
  return float(np.mean([hit[y == c].mean() for c in present]))


def balanced_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
  """Mean over the classes present in y of their images' mean cross
  entropy (nats) under softmax(logits)."""
  loss = head_math.cross_entropies(logits, y)
  return float(np.mean([loss[y == c].mean() for c in np.unique(y)]))


def log_prior_biases(counts: Sequence[int], tau: float) -> np.ndarray:
  """float32 [N]: -tau * log(n_c / n) for the classes with images, 0 for
  the others (they are never predicted from training images anyway)."""
  counts = np.asarray(counts, np.float64)
  out = np.zeros(len(counts), np.float64)
  present = counts > 0
  out[present] = -tau * np.log(counts[present] / counts.sum())
  out[present] -= out[present].mean()
  return out.astype(np.float32)


def choose(held_logits: np.ndarray, held_y: np.ndarray,
           counts: Sequence[int], taus: Sequence[float] = TAUS
           ) -> Optional[Adjustment]:
  """The logit adjustment with the best held-out balanced accuracy.

  Args:
    held_logits: float [m, N] held-out logits (rows with NaN are skipped).
    held_y: int [m] their class ids.
    counts: int [N] training images per class id (the head's fit), whose
      frequencies are the prior.
    taus: the strengths tried.

  Returns:
    The Adjustment, or None when no row is held out.
  """
  held_logits = np.asarray(held_logits, np.float64)
  keep = np.all(np.isfinite(held_logits), axis=1)
  z, y = held_logits[keep], np.asarray(held_y, np.int64)[keep]
  if not len(y):
    return None
  scored = []
  for tau in taus:
    shifted = z + log_prior_biases(counts, tau)
    scored.append((-balanced_accuracy(shifted, y),
                   balanced_cross_entropy(shifted, y), abs(tau), tau))
  best = min(scored)
  tau = float(best[3])
  return Adjustment(tau, log_prior_biases(counts, tau),
                    balanced_accuracy(z, y), -best[0], int(len(y)))


def apply(result, adjustment: Adjustment):
  """The retrain.head.solver.SolverResult with adjustment.biases added to
  its head's biases, its train-only head's and its held-out logits (so the
  temperature and thresholds computed on them describe the exported
  head)."""
  delta = np.asarray(adjustment.biases, np.float32)

  def shifted(head):
    if head is None:
      return None
    return dataclasses.replace(head, biases=(head.biases + delta).astype(
        np.float32))

  held = result.held_out
  if held is not None:
    held = dataclasses.replace(held, logits=(held.logits + delta).astype(
        np.float32))
  return dataclasses.replace(result, head=shifted(result.head),
                             train_only_head=shifted(result.train_only_head),
                             held_out=held)


def maybe_adjust(mode: str, result, fit_y: np.ndarray, num_classes: int,
                 strong: bool):
  """(The SolverResult as the run should use it, the Adjustment chosen or
  None when none was considered), with a log line saying what was done.
  An Adjustment with tau 0 was considered and not applied.

  Args:
    mode: 'auto' (adjust when `strong`) or 'none' (never).
    result: fit_head's SolverResult; its held_out logits are rows of
      [train; validation], fit_y int [n + m] their class ids.
    num_classes: N.
    strong: the training set is strongly imbalanced and its classes are
      weighted the same (a class-balanced objective: the user asked for
      every class to count the same).
  """
  if mode == 'none' or not strong:
    return result, None
  if result.held_out is None:
    logging.info('No class-bias adjustment: there are no held-out '
                 'predictions to choose it on.')
    return result, None
  counts = np.bincount(np.asarray(fit_y, np.int64), minlength=num_classes)
  adjustment = choose(result.held_out.logits, fit_y, counts)
  if adjustment is None or adjustment.tau == 0:
    logging.info('Class-bias adjustment: none (tau 0 is best on %d held-out '
                 'predictions).', 0 if adjustment is None else
                 adjustment.count)
    return result, adjustment
  logging.warning(
      'Class-bias adjustment for the imbalance: the head\'s bias of each '
      'class c is shifted by -%g * log(share of c in training), chosen on '
      '%d held-out predictions for balanced accuracy (%.1f%% -> %.1f%% '
      'there); --imbalance_adjustment none keeps the head as fitted.',
      adjustment.tau, adjustment.count, 100 * adjustment.before,
      100 * adjustment.after)
  return apply(result, adjustment), adjustment
