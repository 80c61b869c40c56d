"""Evaluating the trained head on held-out vectors."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from retrain.head import math as head_math
from retrain.head.model import Head


@dataclasses.dataclass
class Evaluation:
  """Results on one set.

  Attributes:
    accuracy: fraction in [0, 1] of correct top-1 predictions (nan if empty).
    count: number of images evaluated.
    labels: int64 [count] true class ids.
    predictions: int64 [count] predicted class ids.
    probabilities: float32 [count, N].
    rows: int64 [count] index into the x given of each evaluated row.
    misclassified: indices (into the evaluated rows) of wrong predictions.
  """
  accuracy: float
  count: int
  labels: np.ndarray
  predictions: np.ndarray
  probabilities: np.ndarray
  rows: np.ndarray

  @property
  def misclassified(self) -> np.ndarray:
    return np.flatnonzero(self.predictions != self.labels)


def evaluate(head: Head, x: np.ndarray, y: np.ndarray,
             batch_size: int = -1, seed: Optional[int] = None) -> Evaluation:
  """Evaluates `head` on vectors x float32 [n, D] with class ids y int [n].

  batch_size -1 (the default, as retrain.py's --test_batch_size) uses every
  image; a positive value evaluates a random sample of that many images
  (with replacement, as retrain.py did), repeatable with `seed`.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int64)
  rows = np.arange(len(y), dtype=np.int64)
  if batch_size is not None and batch_size >= 0 and len(y):
    rows = np.random.default_rng(seed).integers(0, len(y), size=batch_size)
    x, y = x[rows], y[rows]
  probs = head.probabilities(x) if len(y) else np.zeros(
      (0, head.biases.shape[0]), np.float32)
  preds = probs.argmax(axis=1).astype(np.int64)
  accuracy = head_math.accuracy(probs, y)
  return Evaluation(accuracy, len(y), y, preds, probs.astype(np.float32), rows)


def format_misclassified(evaluation: Evaluation, paths: Sequence[str],
                         labels: Sequence[str]) -> list:
  """Lines 'path  predicted=X (p=0.87)  true=Y' for each wrong prediction;
  paths[k] is the file of row k of the x given to evaluate()."""
  lines = []
  for i in evaluation.misclassified:
    pred = evaluation.predictions[i]
    lines.append(f'{paths[evaluation.rows[i]]}  predicted={labels[pred]} '
                 f'(p={evaluation.probabilities[i, pred]:.3f})  '
                 f'true={labels[evaluation.labels[i]]}')
  return lines
