"""The classifier head: one fully connected layer and its softmax.

logits = x @ W + b, with W float32 [D, N] and b float32 [N]; column j of W
scores class id j. `Head` is the trained layer as numpy arrays (what
evaluation and export read); `HeadVariables` is the same layer as the
tf.Variables that training updates.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from retrain.head import math as head_math

# retrain.py initialised the weights from a truncated normal of this stddev.
INIT_STDDEV = 0.001

# The variable names retrain.py's checkpoints and graphs used.
WEIGHTS_NAME = 'final_weights'
BIASES_NAME = 'final_biases'


@dataclasses.dataclass
class Head:
  """The trained layer: probabilities = softmax(x @ weights + biases).

  Attributes:
    weights: float32 [D, N]; column j scores class id j.
    biases: float32 [N].
    novelty: the retrain.head.novelty.Novelty score the exports compute
      beside the probabilities, or None.
    multi_label: one independent sigmoid per column instead of the softmax
      (--multi_label: retrain/head/multilabel.py); each probability is then
      in [0, 1] on its own.
  """
  weights: np.ndarray
  biases: np.ndarray
  novelty: Optional[object] = None
  multi_label: bool = False

  def logits(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32) @ self.weights + self.biases

  def probabilities(self, x: np.ndarray) -> np.ndarray:
    """float32 [n, N] class probabilities for vectors x float32 [n, D]."""
    z = self.logits(x)
    if self.multi_label:
      return head_math.sigmoid(z).astype(np.float32)
    return head_math.softmax(z)

  def predict_proba(self, x: np.ndarray) -> np.ndarray:
    """`probabilities`, under scikit-learn's name."""
    return self.probabilities(x)


class HeadVariables:
  """The layer being trained, as tf.Variables.

  The weights are stored transposed, float32 [N, D]: both products of a
  training step (the logits and the weight gradient) are faster in this
  layout when N is much less than D.
  """

  def __init__(self, dim: int, num_classes: int, seed: int):
    """Initialises W from a truncated normal (stddev INIT_STDDEV, stateless
    in `seed`, so repeatable) and b with zeros."""
    self.weights = tf.Variable(
        tf.transpose(tf.random.stateless_truncated_normal(
            [dim, num_classes], [seed, 1], stddev=INIT_STDDEV)),
        name=WEIGHTS_NAME)
    self.biases = tf.Variable(tf.zeros([num_classes]), name=BIASES_NAME)

  @property
  def variables(self):
    return [self.weights, self.biases]

  def logits(self, x: tf.Tensor) -> tf.Tensor:
    """float32 [B, N] logits of vectors x float32 [B, D]."""
    return tf.matmul(x, self.weights, transpose_b=True) + self.biases

  def snapshot(self) -> Head:
    """A numpy copy of the current weights, in Head's [D, N] layout."""
    return Head(np.ascontiguousarray(self.weights.numpy().T),
                self.biases.numpy())
