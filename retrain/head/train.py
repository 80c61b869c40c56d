"""Training the softmax head on cached bottleneck vectors.

The head is one fully connected layer, logits = x @ W + b with W float32
[D, N] and b float32 [N], trained with plain SGD on random batches, as
retrain.py did. All vectors are held in memory as one tensor; the SGD steps
run as one XLA computation, and everything between two points where Python
needs the weights (many evaluations, with their metrics and TensorBoard
summaries) inside one tf.function call, so 4000 steps take about a second.

Sampling follows retrain.py: each example of a batch picks a class
uniformly at random, then an image of that class uniformly at random (with
replacement). Classes are therefore seen equally often whatever their size.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Set, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.head import options as options_lib
from retrain.head import summaries as summaries_lib

# retrain.py initialised the weights from a truncated normal of this stddev.
_INIT_STDDEV = 0.001

# A compiled call trains through several evaluations and returns control to
# Python at the first evaluation after this many steps (or sooner, where a
# callback needs the weights), so the log lines of a long run still flow.
_MAX_CALL_STEPS = 500


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


def _plan(points: Sequence[int], steps: int, control: Set[int],
          head_every: int, max_steps: int) -> List[Tuple[List[int], int]]:
  """Splits training into compiled calls.

  Args:
    points: the evaluation steps (eval_steps); steps: the total.
    control: evaluation steps after which a callback needs the weights.
    head_every: on_head's interval in steps, 0 for none.
    max_steps: a call ends at the first evaluation after this many steps.

  Returns:
    [(evaluation steps, stop)]: each call trains up to step count `stop`,
    evaluating after each of its evaluation steps (ascending, all < stop).
    A call ends after an evaluation step in `control`, at each multiple of
    `head_every` and at the end.
  """
  point_set = set(points)
  head_stops = set(range(head_every, steps + 1, head_every)
                   if head_every > 0 else [])
  plan, evals, start = [], [], 0
  for stop in sorted({p + 1 for p in points} | head_stops):
    if stop - 1 in point_set:
      evals.append(stop - 1)
    if (stop == steps or stop in head_stops or stop - 1 in control
        or stop - start >= max_steps):
      plan.append((evals, stop))
      evals, start = [], stop
  return plan


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
    seed: makes the initialisation and the batches repeatable. The batches
      do not depend on the callbacks.
    writers: TensorBoard writers, or None.
    on_eval: called with each evaluation point, in order, once the compiled
      call that ran it returns (a call ends at the first evaluation after
      _MAX_CALL_STEPS steps, so log lines keep flowing).
    head_every, on_head: if both are set, on_head(steps_done, head) is
      called after every `head_every` steps (for intermediate exports).
    options: optimizer, regularisation, class balance and early stopping
      (retrain/train_options.py); None trains exactly as retrain.py.
    on_eval_head: called with (step, a copy of the head) after each
      evaluation or, if it has a `steps` attribute (a set of steps), after
      the evaluations at those steps only. Training returns to Python for
      each call, so the fewer the faster.
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
  # Stored transposed, [N, D]: both products of a step (the logits and the
  # weight gradient) are faster in this layout when N is much less than D.
  weights = tf.Variable(
      tf.transpose(tf.random.stateless_truncated_normal(
          [dim, num_classes], [seed, 1], stddev=_INIT_STDDEV)),
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

  def head() -> Head:
    return Head(np.ascontiguousarray(weights.numpy().T), biases.numpy())

  def sample_batch():
    """int64 [batch_size] rows of x."""
    if image_sampling:  # every training image equally likely
      return gen.uniform([batch_size], 0, len(train_y), dtype=tf.int64)
    pick = gen.uniform([batch_size], 0, len(sampled), dtype=tf.int64)
    cls = tf.gather(class_ids, pick)
    within = tf.cast(
        gen.uniform([batch_size]) * tf.cast(tf.gather(class_count, cls),
                                            tf.float32), tf.int64)
    within = tf.minimum(within, tf.gather(class_count, cls) - 1)
    return tf.gather(class_start, cls) + within

  def loss_and_logits(xb, yb):
    logits = tf.matmul(xb, weights, transpose_b=True) + biases
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb,
                                                       logits=logits))
    return loss, logits

  def accuracy(logits, yb):
    return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), yb),
                                  tf.float32))

  val_x = np.asarray(val_x, np.float32).reshape(-1, dim)
  val_y = np.asarray(val_y, np.int64)
  vx, vy = tf.constant(val_x), tf.constant(val_y)
  has_val = len(val_y) > 0
  val_count = len(val_y) if validation_batch_size < 0 else validation_batch_size

  def validate(sample_size):
    """(cross entropy, accuracy) on validation images; -1: all."""
    if sample_size < 0:
      xb, yb = vx, vy
    else:
      idx = gen.uniform([sample_size], 0, len(val_y), dtype=tf.int64)
      xb, yb = tf.gather(vx, idx), tf.gather(vy, idx)
    loss, logits = loss_and_logits(xb, yb)
    return loss, accuracy(logits, yb)

  def sgd_step():
    """One update on a fresh batch; returns the batch's rows."""
    rows = sample_batch()
    xb, yb = tf.gather(x, rows), tf.gather(y, rows)
    with tf.GradientTape() as tape:
      if opts is None:
        loss, _ = loss_and_logits(xb, yb)
      else:
        xd = options_lib.dropout(xb, opts.dropout_rate, gen)
        loss = options_lib.objective(
            tf.matmul(xd, weights, transpose_b=True) + biases, yb, weights,
            loss_weights, opts.label_smoothing, opts.l2_regularizer)
    gw, gb = tape.gradient(loss, [weights, biases])
    optimizer.apply([gw, gb])
    return rows

  # The steps run as one XLA computation: it compiles in ~0.3 s, then runs
  # a step ~3x faster than TensorFlow's executor, which spends more on
  # dispatching a step's ~20 small ops than on their arithmetic. Not with
  # dropout: XLA's random numbers for a [batch, D] mask made 4000 steps
  # take 8.3-8.7 s instead of 5.0-5.1 s (bench/training_options.py).
  @tf.function(jit_compile=not (opts and opts.dropout_rate),
               input_signature=[tf.TensorSpec([], tf.int64)])
  def train(n):
    """n >= 1 SGD steps; returns the rows of x of the last batch."""
    # A while loop, not tf.range(n), which XLA would compile once per n.
    _, rows = tf.while_loop(lambda i, _: i < n,
                            lambda i, _: (i + 1, sgd_step()),
                            (tf.constant(0, tf.int64),
                             tf.zeros([batch_size], tf.int64)))
    return rows

  # Called from a graph, as in `run`, so that XLA compiles `train` once.
  train_only = tf.function(lambda n: train(n),
                           input_signature=[tf.TensorSpec([], tf.int64)])

  # Many evaluations per compiled call: the steps up to each, the metrics
  # and the TensorBoard summaries all run inside the graph. Per-call
  # overhead and eager summary writes used to cost more than the steps.
  @tf.function(input_signature=[tf.TensorSpec([], tf.int64),
                                tf.TensorSpec([None], tf.int64)])
  def run(done, evals):
    """Trains from step count `done` through each step of `evals`,
    evaluating after each. Returns float32 [len(evals), 4]: training cross
    entropy and accuracy, validation cross entropy and accuracy (0 without
    validation images)."""
    metrics = tf.TensorArray(tf.float32, size=tf.size(evals),
                             element_shape=[4])
    for i in tf.range(tf.size(evals)):
      step = evals[i]
      rows = train(step + 1 - done)
      done = step + 1
      # Metrics on the last training batch, after its update (as retrain.py).
      yb = tf.gather(y, rows)
      loss, logits = loss_and_logits(tf.gather(x, rows), yb)
      acc, probs = accuracy(logits, yb), tf.nn.softmax(logits)
      v_loss, v_acc = (validate(validation_batch_size) if has_val else
                       (0.0, 0.0))
      if writers is not None:
        writers.write_train(step, acc, loss, weights, biases, probs)
        if has_val:
          writers.write_validation(step, v_acc, v_loss)
      metrics = metrics.write(i, tf.stack([loss, acc, v_loss, v_acc]))
    return metrics.stack()

  full_validation = tf.function(lambda: validate(-1))

  points = eval_steps(steps, eval_step_interval)
  stopper = None
  if opts and opts.early_stopping_patience and has_val:
    stopper = options_lib.EarlyStopping(opts.early_stopping_patience)
  # Where Python needs the weights back.
  head_steps = set()
  if on_eval_head is not None:
    wanted = getattr(on_eval_head, 'steps', None)
    head_steps = set(points) if wanted is None else set(points) & set(wanted)
  control = set(points) if stopper is not None else head_steps
  head_every = head_every if on_head is not None else 0

  history = []
  done = 0
  for evals, stop in _plan(points, steps, control, head_every,
                           _MAX_CALL_STEPS):
    if evals:
      metrics = run(tf.constant(done, tf.int64),
                    tf.constant(evals, tf.int64)).numpy()
      done = evals[-1] + 1
      for step, (loss, acc, _v_loss, v_acc) in zip(evals, metrics.tolist()):
        point = EvalPoint(step, acc, loss, v_acc if has_val else None,
                          val_count if has_val else 0)
        history.append(point)
        if on_eval is not None:
          on_eval(point)
    if stop > done:
      train_only(tf.constant(stop - done, tf.int64))
      done = stop
    if head_every and done % head_every == 0:
      on_head(done, head())
    if not evals or evals[-1] + 1 != done:  # no evaluation ended the call
      continue
    step = evals[-1]
    if step in head_steps:
      on_eval_head(step, head())
    if stopper is not None:
      full_loss = (metrics[-1, 2] if validation_batch_size < 0 else
                   full_validation()[0])
      if stopper.update(step, float(full_loss), head):
        logging.info('Early stopping at step %d: the validation cross '
                     'entropy has not improved for %d evaluations since '
                     'step %d.', step, stopper.patience, stopper.best_step)
        break
  if stopper is not None and stopper.best is not None:
    logging.info('Restoring the weights of step %d (best validation cross '
                 'entropy %.4f).', stopper.best_step, stopper.best_loss)
    return TrainResult(stopper.best, history, stopper.best_step)
  return TrainResult(head(), history)
