"""Confidence you can act on: temperature scaling and a rejection threshold.

Both are chosen after training on held-out logits only (float32 [n, N],
column j is class id j): the validation images when the head did not train
on them, else the solver's out-of-fold logits (retrain.head.held_out.HeldOut:
each image predicted by a head that did not train on it). A head judged on
its own training images looks right and sure of everything, which drives
the temperature to its floor and the threshold to 0. They cost
milliseconds and need no image.

- Temperature scaling (Guo et al. 2017, "On calibration of modern neural
  networks"): probabilities softmax(logits / T) with the one T > 0 that
  minimises the validation cross entropy. T changes no prediction (the
  arg max is the same), only how sure the model says it is. Because the
  logits are x @ W + b, dividing them by T is the head Head(W / T, b / T):
  every export carries the calibrated probabilities without a new op.
- Expected calibration error (ECE): the gap between confidence (the top
  probability) and accuracy, averaged over 15 equal-width confidence bins
  weighted by their share of the images, in [0, 1].
- Rejection threshold: the smallest top probability t such that, on the
  validation set, the predictions with top probability >= t are right at
  least `target_precision` of the time. Below t a client should say
  "unknown". It flags low confidence; it cannot recognise a class the model
  was never shown (a photo of something else may still get a high
  probability).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from retrain.errors import DatasetError
from retrain.head import math as head_math
from retrain.head.model import Head

ECE_BINS = 15
# Temperatures searched (log-spaced, then refined): 1/20 sharpens a
# timid model a lot, 20 softens an over-confident one a lot; beyond that
# the validation set, not the model, is being fitted.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
VALIDATION_HELD_OUT = ('the validation set, which the head did not train '
                       'on')


def check_options(options) -> None:
  """Raises DatasetError for settings calibrate cannot use."""
  if not 0 < options.target_precision <= 1:
    raise DatasetError(f'target_precision={options.target_precision} must '
                       'be in (0, 1], e.g. 0.95.',
                       fields=('target_precision',))
  if options.calibration_min_images < 1:
    raise DatasetError(f'calibration_min_images='
                       f'{options.calibration_min_images} must be at least '
                       '1.', fields=('calibration_min_images',))


def softmax(logits: np.ndarray) -> np.ndarray:
  """float64 [n, N] probabilities of float [n, N] logits."""
  return head_math.softmax(np.asarray(logits, np.float64))


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
  """Mean negative log probability of the true class (natural log)."""
  return head_math.cross_entropy(logits, y)


def expected_calibration_error(probabilities: np.ndarray, y: np.ndarray,
                               bins: int = ECE_BINS) -> float:
  """ECE in [0, 1] of probabilities [n, N] for true class ids y [n]."""
  probabilities = np.asarray(probabilities)
  if not len(y):
    return float('nan')
  confidence = probabilities.max(axis=1)
  correct = head_math.hits(probabilities, y)
  # Bin k holds confidences in (k / bins, (k + 1) / bins]; 0 goes in bin 0.
  index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
  total = 0.0
  for k in range(bins):
    members = index == k
    if members.any():
      gap = abs(confidence[members].mean() - correct[members].mean())
      total += members.mean() * gap
  return float(total)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
  """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising cross entropy.

  A log-spaced grid, then golden-section search around its best point;
  the cross entropy of logits / T is smooth and unimodal in log T.
  """
  logits = np.asarray(logits, np.float64)
  y = np.asarray(y)

  def loss(log_t):
    return cross_entropy(logits / np.exp(log_t), y)

  low, high = np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)
  grid = np.linspace(low, high, 41)
  best = int(np.argmin([loss(g) for g in grid]))
  a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
  ratio = (np.sqrt(5) - 1) / 2
  for _ in range(40):
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    if loss(c) < loss(d):
      b = d
    else:
      a = c
  return float(np.exp((a + b) / 2))


def rejection_threshold(probabilities: np.ndarray, y: np.ndarray,
                        target_precision: float):
  """(threshold, precision, coverage, met) for a target precision.

  threshold: the smallest top probability t with precision >= target
    among the images whose top probability is >= t (0 when every image
    already meets it). When no t reaches the target, the t with the best
    precision (ties: the lower t) and met=False.
  precision: the fraction right among those accepted, in [0, 1].
  coverage: the fraction of images accepted, in [0, 1].
  """
  confidence = np.asarray(probabilities).max(axis=1)
  correct = head_math.hits(probabilities, y)
  order = np.argsort(-confidence, kind='stable')
  confidence, correct = confidence[order], correct[order]
  # Accepting the k most confident images (k = 1..n).
  precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
  # Only cut where the confidence changes: equal confidences go together.
  last_of_run = np.append(confidence[1:] != confidence[:-1], True)
  candidates = np.flatnonzero(last_of_run)
  good = candidates[precision[candidates] >= target_precision]
  met = bool(len(good))
  if met:
    k = int(good.max())
  else:
    best = precision[candidates].max()
    k = int(candidates[precision[candidates] == best].max())
  threshold = 0.0 if (met and k == len(confidence) - 1) else float(
      confidence[k])
  return threshold, float(precision[k]), (k + 1) / len(confidence), met


@dataclasses.dataclass
class Confidence:
  """What calibration chose, for the exports' metadata and the reports.

  Attributes:
    head: the head to export (the trained one divided by temperature).
    temperature: T (1.0 when not calibrated).
    threshold: top probability below which a prediction is 'unknown', in
      [0, 1]; 0 rejects nothing.
    target_precision: the precision asked for, in (0, 1].
    precision, coverage: on validation at the threshold, in [0, 1].
    target_met: whether the threshold reaches target_precision.
    ece_before, ece_after: validation ECE of the trained and the
      calibrated head, in [0, 1]. Temperature scaling minimises the cross
      entropy, not the ECE, so the ECE usually falls but need not.
    cross_entropy_before, cross_entropy_after: validation cross entropy
      (nats), which T minimises: after <= before.
    validation_count: images the choices were made on.
    skipped_reason: why nothing was calibrated, or None.
    held_out: how the images the choices were made on were held out.
    test_ece_before, test_ece_after: ECE on the test set (never used to
      choose anything) of the trained and the calibrated head, in [0, 1];
      None without test images. test_count: those images.
  """
  head: Head
  temperature: float = 1.0
  threshold: float = 0.0
  target_precision: float = 0.95
  validation_count: int = 0
  precision: Optional[float] = None
  coverage: Optional[float] = None
  target_met: Optional[bool] = None
  held_out: str = VALIDATION_HELD_OUT
  ece_before: Optional[float] = None
  ece_after: Optional[float] = None
  cross_entropy_before: Optional[float] = None
  cross_entropy_after: Optional[float] = None
  test_count: int = 0
  test_ece_before: Optional[float] = None
  test_ece_after: Optional[float] = None
  skipped_reason: Optional[str] = None

  def metadata(self) -> dict:
    """JSON-ready fields (no head), as stored in every export."""
    data = dataclasses.asdict(self)
    del data['head']
    data['method'] = f'temperature scaling on held-out predictions: ' \
                     f'{self.held_out}'
    return data

  def with_test(self, logits: np.ndarray, y: np.ndarray) -> 'Confidence':
    """This with the test ECE before and after, from the trained head's
    test logits float [n, N] and class ids y [n]."""
    if not len(y):
      return self
    return dataclasses.replace(
        self, test_count=int(len(y)),
        test_ece_before=expected_calibration_error(softmax(logits), y),
        test_ece_after=expected_calibration_error(
            softmax(np.asarray(logits, np.float64) / self.temperature), y))


def calibrate(head: Head, x: Optional[np.ndarray], y: np.ndarray,
              target_precision: float, min_images: int,
              temperature_scaling: bool = True,
              logits: Optional[np.ndarray] = None,
              held_out: str = VALIDATION_HELD_OUT) -> Confidence:
  """Calibrates `head` on held-out images: class ids y int [n] and either
  their vectors x float32 [n, D] (the head did not train on them) or
  `logits` float [n, N] of heads that did not train on them (x unused).

  With fewer than `min_images` images nothing is chosen (a temperature
  and a threshold fitted to a handful of images mislead more than they
  help): the head is returned as it is, with threshold 0.
  """
  y = np.asarray(y)
  if len(y) < min_images:
    kind = 'validation' if logits is None else 'held-out'
    return Confidence(
        head=head, target_precision=target_precision,
        validation_count=int(len(y)), held_out=held_out,
        skipped_reason=(f'{len(y)} {kind} images; at least {min_images} '
                        'are needed to choose a temperature and a threshold '
                        '(raise validation_percentage or add images)'))
  given = logits is not None
  logits = np.asarray(logits, np.float32) if given else head.logits(x)
  temperature = fit_temperature(logits, y) if temperature_scaling else 1.0
  calibrated = Head((head.weights / temperature).astype(np.float32),
                    (head.biases / temperature).astype(np.float32))
  before = softmax(logits)
  # As the exports compute them (float32 W / T, b / T), so the threshold
  # splits the validation images exactly as a client will.
  after = (softmax(logits / np.float32(temperature)) if given else
           calibrated.probabilities(x))
  threshold, precision, coverage, met = rejection_threshold(
      after, y, target_precision)
  return Confidence(
      head=calibrated, temperature=temperature, threshold=threshold,
      target_precision=target_precision, precision=precision,
      coverage=coverage, target_met=met,
      ece_before=expected_calibration_error(before, y),
      ece_after=expected_calibration_error(after, y),
      cross_entropy_before=cross_entropy(logits, y),
      cross_entropy_after=cross_entropy(logits / temperature, y),
      validation_count=int(len(y)), held_out=held_out)
