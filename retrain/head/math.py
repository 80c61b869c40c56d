"""The head's formulas, each written once: softmax, log-softmax, sigmoid,
cross entropy (label-smoothed, weighted), accuracy and picking k of n rows
evenly.

Logits are float [n, N] with column j scoring class id j; labels int [n]
class ids in [0, N). The numpy functions come first; the TensorFlow ones
(`tf_` names, for training steps inside tf.functions) import TensorFlow
when called, so numpy users (retrain.inspect, the reports) never load it.

Conventions: softmax and log-softmax subtract each row's maximum first (no
overflow); cross entropy is in nats; a label-smoothed target puts
1 - s + s / N on the true class and s / N on every other.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np


def _floats(logits) -> np.ndarray:
  """logits as an array of their own float dtype (float32 stays float32;
  anything else becomes float64)."""
  z = np.asarray(logits)
  return z if z.dtype in (np.float32, np.float64) else z.astype(np.float64)


def log_softmax(logits) -> np.ndarray:
  """[n, N] log probabilities of logits [n, N] (dtype kept, see _floats)."""
  z = _floats(logits)
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits) -> np.ndarray:
  """[n, N] probabilities (rows sum to 1) of logits [n, N]; float32 logits
  give float32 probabilities, other numbers float64."""
  z = _floats(logits)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z) -> np.ndarray:
  """1 / (1 + e^-z) elementwise, as 0.5 (1 + tanh(z / 2)): no overflow for
  any z; float32 z gives float32, float64 z float64. (The multi-label
  head's probabilities; the export's graph uses tf.nn.sigmoid.)"""
  return 0.5 * (1.0 + np.tanh(0.5 * z))


def smoothed_targets(labels, num_classes: int,
                     label_smoothing: float = 0.0) -> np.ndarray:
  """float64 [n, N] targets: one-hot rows of labels int [n], smoothed by
  label_smoothing s in [0, 1) (s / N everywhere, 1 - s more on the label)."""
  labels = np.asarray(labels, np.int64)
  targets = np.full((len(labels), num_classes), label_smoothing / num_classes)
  targets[np.arange(len(labels)), labels] += 1.0 - label_smoothing
  return targets


def cross_entropies(logits, labels) -> np.ndarray:
  """float64 [n]: each row's cross entropy (nats) against its label, i.e.
  minus the log probability of the true class, computed in float64."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  log_norm = np.log(np.exp(z).sum(axis=1))
  return log_norm - z[np.arange(len(z)), np.asarray(labels, np.int64)]


def cross_entropy(logits, labels, weights: Optional[np.ndarray] = None,
                  total: bool = False) -> float:
  """Mean cross entropy (nats) of logits [n, N] against labels int [n];
  with weights float [n], each row counts its weight; total: the (weighted)
  sum instead of the mean (the mean of no row is nan)."""
  each = cross_entropies(logits, labels)
  if weights is not None:
    each = np.asarray(weights, np.float64) * each
  if total:
    return float(np.sum(each))
  return float(np.mean(each)) if len(each) else float('nan')


def hits(scores, labels) -> np.ndarray:
  """bool [n]: whether each row's highest score (logit or probability,
  [n, N]) is at its label int [n]."""
  return np.asarray(scores).argmax(axis=1) == np.asarray(labels)


def correct(scores, labels, weights: Optional[np.ndarray] = None
            ) -> Union[int, float]:
  """Rows whose top class is their label (an int), or with weights float
  [n] the summed weight of those rows (a float)."""
  right = hits(scores, labels)
  if weights is None:
    return int(np.sum(right))
  return float(np.sum(np.asarray(weights, np.float64) * right))


def accuracy(scores, labels) -> float:
  """Fraction in [0, 1] of rows of scores [n, N] whose top class is their
  label int [n]; nan when there is no row."""
  if not len(labels):
    return float('nan')
  return float(np.mean(hits(scores, labels)))


def evenly_spread(count: int, k: int) -> np.ndarray:
  """int64 [min(count, k)] indices of range(count): all of them when
  count <= k, else k spread evenly, the first and (k >= 2) the last
  included (repeatable: no random generator). k <= 0: none."""
  if k <= 0 or count <= 0:
    return np.zeros(0, np.int64)
  if count <= k:
    return np.arange(count, dtype=np.int64)
  return np.linspace(0, count - 1, k).round().astype(np.int64)


# --- TensorFlow ---------------------------------------------------------------


def tf_softmax(logits):
  """float32 [B, N] probabilities of logits float32 [B, N]."""
  import tensorflow as tf
  return tf.nn.softmax(logits)


def tf_cross_entropy(logits, labels, label_smoothing: float = 0.0,
                     class_weights=None):
  """float32 [B]: each row's cross entropy of logits float32 [B, N] against
  labels int64 [B], the targets smoothed by label_smoothing (a Python
  float in [0, 1)), times the weight of its label when class_weights
  (float32 [N]) is given."""
  import tensorflow as tf
  if label_smoothing:
    num_classes = tf.shape(logits)[1]
    target = tf.one_hot(labels, num_classes, dtype=logits.dtype)
    target = (target * (1.0 - label_smoothing)
              + label_smoothing / tf.cast(num_classes, logits.dtype))
    each = tf.nn.softmax_cross_entropy_with_logits(labels=target,
                                                   logits=logits)
  else:
    each = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                          logits=logits)
  if class_weights is not None:
    each = each * tf.gather(class_weights, labels)
  return each


def tf_hits(logits, labels):
  """bool [B]: whether each row's top class is its label int64 [B]."""
  import tensorflow as tf
  return tf.equal(tf.argmax(logits, 1), labels)


def tf_accuracy(logits, labels):
  """float32 scalar in [0, 1]: the fraction of rows whose top class is
  their label."""
  import tensorflow as tf
  return tf.reduce_mean(tf.cast(tf_hits(logits, labels), tf.float32))
