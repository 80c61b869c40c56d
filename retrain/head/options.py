"""Training options beyond retrain.py: optimizer, regularisation, class
balance, early stopping.

Every option is off in the defaults (config.py), and off means the exact
computation retrain.py did: plain SGD on the mean softmax cross-entropy of
batches drawn class-uniformly.

How classes are balanced. retrain.py drew each example of a batch by
picking a class uniformly at random and then an image of that class, so
every class weighs the same in training whatever its size (`--sampling
classes`, the default). `--sampling images` draws training images uniformly
instead, so classes weigh as much as they have images. `--class_weighting
balanced` multiplies each example's loss by a weight that makes every class
weigh the same in expectation *under the chosen sampling*: with `--sampling
images` that is n / (K * n_c) for a class of n_c images (K classes with
images, n images), which optimises retrain.py's objective while every image
is drawn equally often; with `--sampling classes` the classes already weigh
the same, so the weights are all 1 and `balanced` changes nothing.

Summary:
  --sampling classes (default)            as retrain.py; classes equal
  --sampling images                       classes weigh by their size (best
                                          when the test set has the
                                          training set's class proportions)
  --sampling images --class_weighting balanced
                                          classes equal, via loss weights
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from retrain.common.names import OPTIMIZERS
from retrain.errors import DatasetError
from retrain.head import math as head_math

# The usual constants: heavy-ball momentum 0.9; Adam with Keras' defaults.
MOMENTUM = 0.9
ADAM_BETA1, ADAM_BETA2, ADAM_EPSILON = 0.9, 0.999, 1e-7


def check(options) -> None:
  """Raises DatasetError naming the setting and the accepted values (the
  declared choices of optimizer, class_weighting and sampling are checked
  by Config.check)."""
  for name in ('dropout_rate', 'label_smoothing'):
    value = getattr(options, name)
    if not 0.0 <= value < 1.0:
      raise DatasetError(f'{name}={value} must be in [0, 1), e.g. 0.2.',
                         fields=(name,))
  if options.l2_regularizer < 0:
    raise DatasetError(f'l2_regularizer={options.l2_regularizer} must be '
                       '0 (off) or positive, e.g. 0.0001.',
                       fields=('l2_regularizer',))
  if options.early_stopping_patience < 0:
    raise DatasetError(
        f'early_stopping_patience={options.early_stopping_patience} must '
        'be 0 (off) or a number of evaluations, e.g. 20.',
        fields=('early_stopping_patience',))


def class_weights(counts: Sequence[int], class_weighting: str,
                  sampling: str) -> np.ndarray:
  """float32 [N] loss weight of each class id (see the module docstring).

  Args:
    counts: training images per class id.
  """
  counts = np.asarray(counts, np.float64)
  weights = np.ones(len(counts), np.float32)
  if class_weighting == 'balanced' and sampling == 'images':
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
  return weights


def dropout(x: tf.Tensor, rate: float, gen: tf.random.Generator) -> tf.Tensor:
  """Inverted dropout: zeroes each value with probability `rate` and scales
  the rest by 1 / (1 - rate), so the expected input is unchanged and
  inference needs no rescaling."""
  if not rate:
    return x
  keep = tf.cast(gen.uniform(tf.shape(x)) >= rate, x.dtype)
  return x * keep / (1.0 - rate)


def objective(logits: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor,
              example_weights: Optional[tf.Tensor], label_smoothing: float,
              l2_regularizer: float) -> tf.Tensor:
  """The scalar minimised in training.

  mean over the batch of w[y] * cross-entropy(smoothed one-hot(y),
  softmax(logits)) + l2_regularizer * sum(weights ** 2).

  Args:
    logits: float32 [B, N]; labels: int64 [B] class ids.
    weights: the layer's kernel, float32 [N, D] in train_head (any layout
      works: only its squares are summed; biases are not regularised, as
      usual).
    example_weights: float32 [N] per-class loss weights, or None for 1.
    label_smoothing: eps in [0, 1): the target is (1 - eps) on the true
      class plus eps / N on every class.
  """
  per_example = head_math.tf_cross_entropy(logits, labels, label_smoothing,
                                         example_weights)
  loss = tf.reduce_mean(per_example)
  if l2_regularizer:
    loss += l2_regularizer * tf.reduce_sum(tf.square(weights))
  return loss


class Optimizer:
  """SGD, heavy-ball momentum or Adam over fixed variables, usable inside a
  tf.function (its state lives in tf.Variables made here, eagerly).

  sgd:      v -= lr * g
  momentum: m = 0.9 m + g;  v -= lr * m
  adam:     m = b1 m + (1-b1) g;  s = b2 s + (1-b2) g^2;
            v -= lr * (m / (1-b1^t)) / (sqrt(s / (1-b2^t)) + eps)
  """

  def __init__(self, name: str, learning_rate: float,
               variables: List[tf.Variable]):
    if name not in OPTIMIZERS:
      raise DatasetError(f'optimizer={name!r} is not one of '
                         f'{", ".join(OPTIMIZERS)}.',
                         fields=('optimizer',))
    self.name = name
    self.lr = tf.constant(learning_rate, tf.float32)
    self.variables = variables
    zeros = lambda v: tf.Variable(tf.zeros_like(v), trainable=False)
    self.m = [zeros(v) for v in variables] if name != 'sgd' else []
    self.s = [zeros(v) for v in variables] if name == 'adam' else []
    self.t = tf.Variable(0.0, trainable=False)

  def apply(self, grads: Sequence[tf.Tensor]) -> None:
    if self.name == 'sgd':
      for v, g in zip(self.variables, grads):
        v.assign_sub(self.lr * g)
    elif self.name == 'momentum':
      for v, m, g in zip(self.variables, self.m, grads):
        m.assign(MOMENTUM * m + g)
        v.assign_sub(self.lr * m)
    else:
      self.t.assign_add(1.0)
      c1 = 1.0 - tf.pow(ADAM_BETA1, self.t)
      c2 = 1.0 - tf.pow(ADAM_BETA2, self.t)
      for v, m, s, g in zip(self.variables, self.m, self.s, grads):
        m.assign(ADAM_BETA1 * m + (1.0 - ADAM_BETA1) * g)
        s.assign(ADAM_BETA2 * s + (1.0 - ADAM_BETA2) * tf.square(g))
        v.assign_sub(self.lr * (m / c1) / (tf.sqrt(s / c2) + ADAM_EPSILON))


class EarlyStopping:
  """Tracks the validation cross-entropy over the whole validation set at
  each evaluation and keeps the best weights.

  The loss, not the accuracy, is watched: on a validation set of a few dozen
  images accuracy moves in coarse steps and often reaches its maximum long
  before the model stops improving.
  """

  def __init__(self, patience: int):
    self.patience = patience
    self.best_loss = float('inf')
    self.best_step = -1
    self.best = None
    self.since_best = 0

  def update(self, step: int, loss: float, snapshot) -> bool:
    """Records one evaluation; returns True when training should stop."""
    if loss < self.best_loss:
      self.best_loss, self.best_step, self.best = loss, step, snapshot()
      self.since_best = 0
    else:
      self.since_best += 1
    return self.since_best >= self.patience
