"""Training the softmax head on cached bottleneck vectors.

The head is one fully connected layer, logits = x @ W + b with W float32
[D, N] and b float32 [N], trained with plain SGD on random batches, as
retrain.py did. All vectors are held in memory as one tensor and whole
stretches of steps between evaluations run inside one compiled tf.function,
so 4000 steps take seconds, not minutes of per-step file reads.

Sampling follows retrain.py: each example of a batch picks a class
uniformly at random, then an image of that class uniformly at random (with
replacement). Classes are therefore seen equally often whatever their size.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from retrain import summaries as summaries_lib
from retrain import train_options as options_lib

# retrain.py initialised the weights from a truncated normal of this stddev.
_INIT_STDDEV = 0.001


@dataclasses.dataclass
class Head:
  """The trained layer: probabilities = softmax(x @ weights + biases).

  Attributes:
    weights: float32 [D, N]; column j scores class id j.
    biases: float32 [N].
  """
  weights: np.ndarray
  biases: np.ndarray

  def logits(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32) @ self.weights + self.biases

  def probabilities(self, x: np.ndarray) -> np.ndarray:
    """float32 [n, N] class probabilities for vectors x float32 [n, D]."""
    z = self.logits(x)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclasses.dataclass
class EvalPoint:
  step: int
  train_accuracy: float
  cross_entropy: float
  validation_accuracy: Optional[float]
  validation_count: int


@dataclasses.dataclass
class TrainResult:
  """best_step: the evaluation step whose weights `head` holds when early
  stopping restored them, else None (the weights after the last step)."""
  head: Head
  history: List[EvalPoint]
  best_step: Optional[int] = None


def eval_steps(total_steps: int, interval: int) -> List[int]:
  """Steps (0-based) after which retrain.py evaluated: every `interval`th
  step and the last one."""
  interval = max(1, interval)
  steps = list(range(0, total_steps, interval))
  if total_steps and steps[-1] != total_steps - 1:
    steps.append(total_steps - 1)
  return steps


def _head_stops(done: int, target: int, every: int) -> List[int]:
  """Multiples of `every` strictly between `done` and `target`."""
  if every <= 0:
    return []
  return list(range((done // every + 1) * every, target, every))


def train_head(train_x: np.ndarray, train_y: np.ndarray, num_classes: int,
               val_x: np.ndarray, val_y: np.ndarray, *, steps: int,
               learning_rate: float, batch_size: int, eval_step_interval: int,
               validation_batch_size: int, seed: int,
               writers: Optional[summaries_lib.Writers] = None,
               on_eval: Optional[Callable[[EvalPoint], None]] = None,
               head_every: int = 0,
               on_head: Optional[Callable[[int, Head], None]] = None,
               options: Optional[options_lib.TrainOptions] = None,
               on_eval_head: Optional[Callable[[int, Head], None]] = None
               ) -> TrainResult:
  """Trains the head.

  Args:
    train_x: float32 [n, D] training vectors; train_y: int [n] class ids.
    num_classes: N; class ids are in [0, N).
    val_x, val_y: validation vectors and ids (may be empty).
    steps: SGD steps; learning_rate: SGD step size.
    batch_size: examples per step (sampled with replacement).
    eval_step_interval: evaluate every this many steps (and at the last).
    validation_batch_size: validation images per evaluation, sampled at
      random; -1 for the whole validation set.
    seed: makes the initialisation and the batches repeatable.
    writers: TensorBoard writers, or None.
    on_eval: called with each evaluation point.
    head_every, on_head: if both are set, on_head(steps_done, head) is
      called after every `head_every` steps (for intermediate exports). It
      splits training into more compiled stretches, each of which draws
      one extra (unused) batch, so the batches differ from a run without it.
    options: optimizer, regularisation, class balance and early stopping
      (retrain/train_options.py); None trains exactly as retrain.py.
    on_eval_head: called with (step, a copy of the head) at each evaluation.
  """
  train_x = np.asarray(train_x, np.float32)
  train_y = np.asarray(train_y, np.int64)
  dim = train_x.shape[1]
  order = np.argsort(train_y, kind='stable')
  counts = np.bincount(train_y, minlength=num_classes)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  sampled = np.flatnonzero(counts > 0)
  if len(sampled) < num_classes:
    logging.warning('Classes with no training image (they cannot be learned): '
                    '%s', ', '.join(str(c) for c in np.flatnonzero(counts == 0)))

  x = tf.constant(train_x[order])
  y = tf.constant(train_y[order])
  class_ids = tf.constant(sampled, tf.int64)
  class_start = tf.constant(starts, tf.int64)
  class_count = tf.constant(counts, tf.int64)
  tf.random.set_seed(seed)
  gen = tf.random.Generator.from_seed(seed)
  weights = tf.Variable(
      tf.random.stateless_truncated_normal([dim, num_classes], [seed, 1],
                                           stddev=_INIT_STDDEV),
      name='final_weights')
  biases = tf.Variable(tf.zeros([num_classes]), name='final_biases')
  opts = options
  optimizer = options_lib.Optimizer(opts.optimizer if opts else 'sgd',
                                    learning_rate, [weights, biases])
  loss_weights = None
  if opts and opts.class_weighting != 'none':
    loss_weights = tf.constant(options_lib.class_weights(
        counts, opts.class_weighting, opts.sampling))
  image_sampling = bool(opts and opts.sampling == 'images')

  def sample_batch():
    if image_sampling:  # every training image equally likely
      idx = gen.uniform([batch_size], 0, len(train_y), dtype=tf.int64)
      return tf.gather(x, idx), tf.gather(y, idx)
    pick = gen.uniform([batch_size], 0, len(sampled), dtype=tf.int64)
    cls = tf.gather(class_ids, pick)
    within = tf.cast(
        gen.uniform([batch_size]) * tf.cast(tf.gather(class_count, cls),
                                            tf.float32), tf.int64)
    within = tf.minimum(within, tf.gather(class_count, cls) - 1)
    idx = tf.gather(class_start, cls) + within
    return tf.gather(x, idx), tf.gather(y, idx)

  def loss_and_logits(xb, yb):
    logits = tf.matmul(xb, weights) + biases
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb,
                                                       logits=logits))
    return loss, logits

  val_x = np.asarray(val_x, np.float32).reshape(-1, dim)
  val_y = np.asarray(val_y, np.int64)
  vx, vy = tf.constant(val_x), tf.constant(val_y)
  has_val = len(val_y) > 0

  def validate(sample_size):
    """(cross entropy, accuracy, count) on validation images; -1: all."""
    if sample_size < 0:
      xb, yb = vx, vy
    else:
      idx = gen.uniform([sample_size], 0, tf.shape(vy, tf.int64)[0],
                        dtype=tf.int64)
      xb, yb = tf.gather(vx, idx), tf.gather(vy, idx)
    loss, logits = loss_and_logits(xb, yb)
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), yb),
                                 tf.float32))
    return loss, acc, tf.shape(yb)[0]

  # One compiled call per evaluation: the training steps since the last one,
  # the metrics, and the TensorBoard summaries, all inside the graph. Eager
  # summary writes and per-call overhead used to cost more than the steps.
  def sgd_step():
    """One update on a fresh batch; returns the batch."""
    xb, yb = sample_batch()
    with tf.GradientTape() as tape:
      if opts is None:
        loss, _ = loss_and_logits(xb, yb)
      else:
        xd = options_lib.dropout(xb, opts.dropout_rate, gen)
        loss = options_lib.objective(
            tf.matmul(xd, weights) + biases, yb, weights, loss_weights,
            opts.label_smoothing, opts.l2_regularizer)
    gw, gb = tape.gradient(loss, [weights, biases])
    optimizer.apply([gw, gb])
    return xb, yb

  @tf.function
  def run(n, step, val_size):
    xb, yb = sample_batch()  # Defines the loop variables for autograph.
    for _ in tf.range(n):
      xb, yb = sgd_step()
    # Metrics on the last training batch, after its update (as retrain.py).
    loss, logits = loss_and_logits(xb, yb)
    probs = tf.nn.softmax(logits)
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), yb),
                                 tf.float32))
    if has_val:
      v_loss, v_acc, v_n = validate(val_size)
    else:
      v_loss, v_acc, v_n = tf.constant(0.0), tf.constant(0.0), tf.constant(0)
    if writers is not None:
      writers.write_train(step, acc, loss, weights, biases, probs)
      if has_val:
        writers.write_validation(step, v_acc, v_loss)
    return loss, acc, v_loss, v_acc, v_n

  @tf.function
  def train_only(n):
    for _ in tf.range(n):
      sgd_step()

  full_validation = tf.function(lambda: validate(tf.constant(-1, tf.int64)))
  val_size = tf.constant(-1 if validation_batch_size < 0 else
                         validation_batch_size, tf.int64)

  history = []
  done = 0
  stopper = None
  if opts and opts.early_stopping_patience and has_val:
    stopper = options_lib.EarlyStopping(opts.early_stopping_patience)
  for step in eval_steps(steps, eval_step_interval):
    for stop in _head_stops(done, step + 1, head_every if on_head else 0):
      train_only(tf.constant(stop - done, tf.int64))
      done = stop
      on_head(done, Head(weights.numpy(), biases.numpy()))
    loss, acc, v_loss, v_acc, v_n = run(
        tf.constant(step + 1 - done, tf.int64), tf.constant(step, tf.int64),
        val_size)
    done = step + 1
    if on_head is not None and head_every > 0 and done % head_every == 0:
      on_head(done, Head(weights.numpy(), biases.numpy()))
    point = EvalPoint(step, float(acc), float(loss), None, 0)
    if has_val:
      point.validation_accuracy = float(v_acc)
      point.validation_count = int(v_n)
    history.append(point)
    if on_eval is not None:
      on_eval(point)
    if on_eval_head is not None:
      on_eval_head(step, Head(weights.numpy(), biases.numpy()))
    if stopper is not None:
      full_loss = v_loss if validation_batch_size < 0 else full_validation()[0]
      if stopper.update(step, float(full_loss),
                        lambda: (weights.numpy(), biases.numpy())):
        logging.info('Early stopping at step %d: the validation cross '
                     'entropy has not improved for %d evaluations since '
                     'step %d.', step, stopper.patience, stopper.best_step)
        break
  if stopper is not None and stopper.best is not None:
    logging.info('Restoring the weights of step %d (best validation cross '
                 'entropy %.4f).', stopper.best_step, stopper.best_loss)
    return TrainResult(Head(*stopper.best), history, stopper.best_step)
  return TrainResult(Head(weights.numpy(), biases.numpy()), history)
