"""Training the softmax head on cached bottleneck vectors.

The head (retrain/head/model.py) is one fully connected layer trained with
plain SGD on random batches, as retrain.py did. All vectors are held in
memory as one tensor; the SGD steps run as one XLA computation, and
everything between two points where Python needs the weights (many
evaluations, with their metrics and TensorBoard summaries) inside one
tf.function call, so 4000 steps take about a second.

Sampling follows retrain.py: each example of a batch picks a class
uniformly at random, then an image of that class uniformly at random (with
replacement). Classes are therefore seen equally often whatever their size.

The pieces, each usable alone: `Settings` (what to train), `Hooks` (what to
call on the way), `TrainingSet` (the vectors and the batch sampler),
`CompiledSteps` (the tf.functions), `plan` (where control returns to
Python) and `train_head` (the loop).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Set, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.errors import RetrainError
from retrain.head import math as head_math
from retrain.head import options as options_lib
from retrain.head.model import Head, HeadVariables

# A compiled call trains through several evaluations and returns control to
# Python at the first evaluation after this many steps (or sooner, where a
# callback needs the weights), so the log lines of a long run still flow.
_MAX_CALL_STEPS = 500

# Evaluation lines logged at most per run, whatever the step count (the
# last one and the best one always; see EvalLog).
MAX_EVAL_LOG_LINES = 20


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to train; the defaults live in retrain.config (same names).

  Attributes:
    steps: SGD steps (how_many_training_steps).
    learning_rate: step size of the optimizer.
    batch_size: examples per step, sampled with replacement
      (train_batch_size).
    eval_step_interval: evaluate every this many steps (and at the last).
    validation_batch_size: validation images per evaluation, sampled at
      random with replacement; -1 for the whole validation set.
    seed: makes the initialisation and the batches repeatable (random_seed).
      The batches do not depend on the hooks.
    options: optimizer, regularisation, class balance and early stopping
      (retrain/head/options.py); None trains exactly as retrain.py.
  """
  steps: int
  learning_rate: float
  batch_size: int
  eval_step_interval: int
  validation_batch_size: int
  seed: int
  options: Optional[object] = None


@dataclasses.dataclass
class Hooks:
  """What training calls on the way; all optional.

  Attributes:
    writers: TensorBoard writers (retrain.report.summaries.Writers: its
      write_train and write_validation are called inside the compiled steps).
    on_eval: called with each evaluation point, in order, once the compiled
      call that ran it returns (a call ends at the first evaluation after
      _MAX_CALL_STEPS steps, so log lines keep flowing).
    head_every, on_head: if both are set, on_head(steps_done, head) is
      called after every `head_every` steps (for intermediate exports).
    on_eval_head: called with (step, a copy of the head) after each
      evaluation or, if it has a `steps` attribute (a set of steps), after
      the evaluations at those steps only. Training returns to Python for
      each call, so the fewer the faster.
  """
  writers: Optional[object] = None
  on_eval: Optional[Callable[['EvalPoint'], None]] = None
  head_every: int = 0
  on_head: Optional[Callable[[int, Head], None]] = None
  on_eval_head: Optional[Callable[[int, Head], None]] = None


@dataclasses.dataclass
class EvalPoint:
  """One evaluation.

  Attributes:
    step: 0-based step after which it was taken.
    train_accuracy, cross_entropy: on the step's training batch, in [0, 1]
      and >= 0.
    validation_accuracy: in [0, 1], None without validation images.
    validation_count: images in the validation set (0 without).
    validation_draws: validation images drawn for the accuracy (with
      replacement), or equal to validation_count when the whole set is
      evaluated.
  """
  step: int
  train_accuracy: float
  cross_entropy: float
  validation_accuracy: Optional[float]
  validation_count: int
  validation_draws: int = 0


@dataclasses.dataclass
class TrainResult:
  """best_step: the evaluation step whose weights `head` holds when early
  stopping restored them, else None (the weights after the last step).
  held_out: the converging solver's retrain.head.held_out.HeldOut when the
  head trained on validation (None: `head`'s own validation predictions
  are held out, as SGD's are); train_only_head: the same setting fitted on
  the training images alone (None: `head` is)."""
  head: Head
  history: List[EvalPoint]
  best_step: Optional[int] = None
  held_out: Optional[object] = None
  train_only_head: Optional[Head] = None


def eval_steps(total_steps: int, interval: int) -> List[int]:
  """Steps (0-based) after which retrain.py evaluated: every `interval`th
  step and the last one."""
  interval = max(1, interval)
  steps = list(range(0, total_steps, interval))
  if total_steps and steps[-1] != total_steps - 1:
    steps.append(total_steps - 1)
  return steps


def spread(items: Sequence, count: int) -> list:
  """At most `count` of `items`, evenly spread, first and last included."""
  items = list(items)
  return [items[k] for k in head_math.evenly_spread(len(items), count)]


def plan(points: Sequence[int], steps: int, control: Set[int],
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
  calls, evals, start = [], [], 0
  for stop in sorted({p + 1 for p in points} | head_stops):
    if stop - 1 in point_set:
      evals.append(stop - 1)
    if (stop == steps or stop in head_stops or stop - 1 in control
        or stop - start >= max_steps):
      calls.append((evals, stop))
      evals, start = [], stop
  return calls


class EvalLog:
  """`on_eval` hook that logs at most about MAX_EVAL_LOG_LINES evaluation
  lines, evenly spread over the run and always the last; `finish` adds the
  best validation accuracy when no logged line showed it."""

  def __init__(self, points: Sequence[int],
               max_lines: int = MAX_EVAL_LOG_LINES):
    self.steps = set(spread(points, max_lines))
    self.best: Optional[EvalPoint] = None
    self.logged: Set[int] = set()

  def __call__(self, p: EvalPoint) -> None:
    if p.validation_accuracy is not None and (
        self.best is None
        or p.validation_accuracy > self.best.validation_accuracy):
      self.best = p
    if p.step in self.steps:
      logging.info('Step %d: %s', p.step, format_point(p))
      self.logged.add(p.step)

  def finish(self) -> None:
    if self.best is not None and self.best.step not in self.logged:
      logging.info('Best validation accuracy at step %d: %s', self.best.step,
                   format_point(self.best))


def format_point(p: EvalPoint) -> str:
  """'train accuracy = 93.0%, cross entropy = 0.2512, validation accuracy =
  90.3% (N=31)', with the draws when the validation set was sampled."""
  text = (f'train accuracy = {100 * p.train_accuracy:.1f}%, '
          f'cross entropy = {p.cross_entropy:.4f}')
  if p.validation_accuracy is not None:
    sample = ('' if p.validation_draws == p.validation_count else
              f'{p.validation_draws} draws from ')
    text += (f', validation accuracy = {100 * p.validation_accuracy:.1f}% '
             f'({sample}N={p.validation_count})')
  return text


class TrainingSet:
  """The training vectors, sorted by class id, and the batch sampler.

  Attributes:
    x: float32 [n, D] tensor; y: int64 [n] class ids, ascending.
    counts: int64 [N] numpy, training images per class id.
  """

  def __init__(self, train_x: np.ndarray, train_y: np.ndarray,
               num_classes: int, by_images: bool):
    """by_images: each training image equally likely, else retrain.py's
    class-uniform sampling."""
    train_x = np.asarray(train_x, np.float32)
    train_y = np.asarray(train_y, np.int64)
    order = np.argsort(train_y, kind='stable')
    self.counts = np.bincount(train_y, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
    sampled = np.flatnonzero(self.counts > 0)
    if len(sampled) < num_classes:
      logging.warning(
          'Classes with no training image (they cannot be learned): %s',
          ', '.join(str(c) for c in np.flatnonzero(self.counts == 0)))
    self.dim = train_x.shape[1]
    self.x = tf.constant(train_x[order])
    self.y = tf.constant(train_y[order])
    self._size = len(train_y)
    self._by_images = by_images
    self._num_sampled = len(sampled)
    self._class_ids = tf.constant(sampled, tf.int64)
    self._class_start = tf.constant(starts, tf.int64)
    self._class_count = tf.constant(self.counts, tf.int64)

  def sample(self, gen: tf.random.Generator, batch_size: int) -> tf.Tensor:
    """int64 [batch_size] rows of x."""
    if self._by_images:  # every training image equally likely
      return gen.uniform([batch_size], 0, self._size, dtype=tf.int64)
    pick = gen.uniform([batch_size], 0, self._num_sampled, dtype=tf.int64)
    cls = tf.gather(self._class_ids, pick)
    count = tf.gather(self._class_count, cls)
    within = tf.cast(gen.uniform([batch_size]) * tf.cast(count, tf.float32),
                     tf.int64)
    within = tf.minimum(within, count - 1)
    return tf.gather(self._class_start, cls) + within


class CompiledSteps:
  """The training and evaluation computations, as tf.functions.

  `train_only(n)` runs n >= 1 SGD steps; `run(done, evals)` trains from
  step count `done` through each step of `evals`, evaluating after each;
  `full_validation()` is (cross entropy, accuracy) on the whole validation
  set.
  """

  def __init__(self, data: TrainingSet, val_x: np.ndarray, val_y: np.ndarray,
               state: HeadVariables, settings: Settings,
               writers: Optional[object],
               gen: tf.random.Generator):
    opts = settings.options
    self.data, self.state, self.gen = data, state, gen
    self.writers = writers
    self.batch_size = settings.batch_size
    self.validation_batch_size = settings.validation_batch_size
    self.optimizer = options_lib.Optimizer(
        opts.optimizer if opts else 'sgd', settings.learning_rate,
        state.variables)
    self.opts = opts
    self.loss_weights = None
    if opts and opts.class_weighting != 'none':
      self.loss_weights = tf.constant(options_lib.class_weights(
          data.counts, opts.class_weighting, opts.sampling))
    val_x = np.asarray(val_x, np.float32).reshape(-1, data.dim)
    self.vx = tf.constant(val_x)
    self.vy = tf.constant(np.asarray(val_y, np.int64))
    self.val_size = len(val_x)
    self.has_val = self.val_size > 0
    # The steps run as one XLA computation: it compiles in ~0.3 s, then runs
    # a step ~3x faster than TensorFlow's executor, which spends more on
    # dispatching a step's ~20 small ops than on their arithmetic. Not with
    # dropout: XLA's random numbers for a [batch, D] mask made 4000 steps
    # take 8.3-8.7 s instead of 5.0-5.1 s (bench/training_options.py).
    steps_spec = [tf.TensorSpec([], tf.int64)]
    self.train = tf.function(
        self._train, jit_compile=not (opts and opts.dropout_rate),
        input_signature=steps_spec)
    # Called from a graph, as in `run`, so that XLA compiles `train` once.
    self.train_only = tf.function(lambda n: self.train(n),
                                  input_signature=steps_spec)
    self.run = tf.function(self._run, input_signature=[
        tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.int64)])
    self.full_validation = tf.function(lambda: self._validate(-1))

  def _loss_and_logits(self, xb, yb):
    logits = self.state.logits(xb)
    loss = tf.reduce_mean(head_math.tf_cross_entropy(logits, yb))
    return loss, logits

  def _validate(self, sample_size):
    """(cross entropy, accuracy) on validation images; -1: all."""
    if sample_size < 0:
      xb, yb = self.vx, self.vy
    else:
      idx = self.gen.uniform([sample_size], 0, self.val_size, dtype=tf.int64)
      xb, yb = tf.gather(self.vx, idx), tf.gather(self.vy, idx)
    loss, logits = self._loss_and_logits(xb, yb)
    return loss, head_math.tf_accuracy(logits, yb)

  def _sgd_step(self):
    """One update on a fresh batch; returns the batch's rows."""
    rows = self.data.sample(self.gen, self.batch_size)
    xb, yb = tf.gather(self.data.x, rows), tf.gather(self.data.y, rows)
    opts = self.opts
    with tf.GradientTape() as tape:
      if opts is None:
        loss, _ = self._loss_and_logits(xb, yb)
      else:
        xd = options_lib.dropout(xb, opts.dropout_rate, self.gen)
        loss = options_lib.objective(
            self.state.logits(xd), yb, self.state.weights, self.loss_weights,
            opts.label_smoothing, opts.l2_regularizer)
    self.optimizer.apply(tape.gradient(loss, self.state.variables))
    return rows

  def _train(self, n):
    """n >= 1 SGD steps; returns the rows of x of the last batch."""
    # A while loop, not tf.range(n), which XLA would compile once per n.
    _, rows = tf.while_loop(lambda i, _: i < n,
                            lambda i, _: (i + 1, self._sgd_step()),
                            (tf.constant(0, tf.int64),
                             tf.zeros([self.batch_size], tf.int64)))
    return rows

  def _run(self, done, evals):
    """Returns float32 [len(evals), 4]: training cross entropy and accuracy,
    validation cross entropy and accuracy (0 without validation images).

    Many evaluations per compiled call: the steps up to each, the metrics
    and the TensorBoard summaries all run inside the graph. Per-call
    overhead and eager summary writes used to cost more than the steps.
    """
    metrics = tf.TensorArray(tf.float32, size=tf.size(evals),
                             element_shape=[4])
    for i in tf.range(tf.size(evals)):
      step = evals[i]
      rows = self.train(step + 1 - done)
      done = step + 1
      # Metrics on the last training batch, after its update (as retrain.py).
      yb = tf.gather(self.data.y, rows)
      loss, logits = self._loss_and_logits(tf.gather(self.data.x, rows), yb)
      acc, probs = head_math.tf_accuracy(logits, yb), head_math.tf_softmax(logits)
      v_loss, v_acc = (self._validate(self.validation_batch_size)
                       if self.has_val else (0.0, 0.0))
      if self.writers is not None:
        self.writers.write_train(step, acc, loss, self.state.weights,
                                 self.state.biases, probs)
        if self.has_val:
          self.writers.write_validation(step, v_acc, v_loss)
      metrics = metrics.write(i, tf.stack([loss, acc, v_loss, v_acc]))
    return metrics.stack()


def _head_steps(points: Sequence[int], on_eval_head) -> Set[int]:
  """The evaluation steps after which on_eval_head wants the head."""
  if on_eval_head is None:
    return set()
  wanted = getattr(on_eval_head, 'steps', None)
  return set(points) if wanted is None else set(points) & set(wanted)


def train_head(train_x: np.ndarray, train_y: np.ndarray, num_classes: int,
               val_x: np.ndarray, val_y: np.ndarray, settings: Settings,
               hooks: Optional[Hooks] = None) -> TrainResult:
  """Trains the head.

  Args:
    train_x: float32 [n, D] training vectors; train_y: int [n] class ids.
    num_classes: N; class ids are in [0, N).
    val_x, val_y: validation vectors and ids (may be empty).
    settings: what to train; hooks: what to call on the way.
  """
  hooks = hooks or Hooks()
  opts = settings.options
  refuse_non_finite(train_x, 'training')
  refuse_non_finite(val_x, 'validation')
  data = TrainingSet(train_x, train_y, num_classes,
                     by_images=bool(opts and opts.sampling == 'images'))
  tf.random.set_seed(settings.seed)
  gen = tf.random.Generator.from_seed(settings.seed)
  state = HeadVariables(data.dim, num_classes, settings.seed)
  compiled = CompiledSteps(data, val_x, val_y, state, settings, hooks.writers,
                           gen)
  stopper = None
  if opts and opts.early_stopping_patience and compiled.has_val:
    stopper = options_lib.EarlyStopping(opts.early_stopping_patience)
  history = _loop(compiled, settings, hooks, stopper)
  if stopper is not None and stopper.best is not None:
    logging.info('Restoring the weights of step %d (best validation cross '
                 'entropy %.4f).', stopper.best_step, stopper.best_loss)
    result = TrainResult(stopper.best, history, stopper.best_step)
  else:
    result = TrainResult(state.snapshot(), history)
  _refuse_diverged(result)
  return result


def refuse_non_finite(x: np.ndarray, subset: str) -> None:
  """Raises RetrainError when vectors float32 [n, D] hold NaN or inf: a
  model trained on them outputs NaN for every image."""
  bad = np.flatnonzero(~np.isfinite(np.asarray(x)).all(axis=-1)) if (
      np.size(x)) else []
  if len(bad):
    raise RetrainError(
        f'{len(bad)} of the {len(x)} {subset} vectors hold NaN or infinity '
        f'(rows {", ".join(str(i) for i in bad[:5])}): the feature module '
        'gives non-finite outputs for these images. Use another '
        'tfhub_module, or remove the images.', fields=('tfhub_module',))


def _refuse_diverged(result: TrainResult) -> None:
  """Raises RetrainError when training ended with non-finite weights or
  loss (diverged), instead of exporting a model that outputs NaN."""
  losses = [p.cross_entropy for p in result.history]
  if (np.isfinite(result.head.weights).all() and
      np.isfinite(result.head.biases).all() and
      all(np.isfinite(v) for v in losses[-1:])):
    return
  raise RetrainError(
      'Training diverged: the loss or the weights became NaN or infinity, so '
      'the model would output NaN for every image. Lower learning_rate (or '
      'use the default optimizer) and run again.',
      fields=('learning_rate',))


def _loop(compiled: CompiledSteps, settings: Settings, hooks: Hooks,
          stopper: Optional[options_lib.EarlyStopping]) -> List[EvalPoint]:
  """Runs the compiled calls of `plan`, calling the hooks between them."""
  points = eval_steps(settings.steps, settings.eval_step_interval)
  head_steps = _head_steps(points, hooks.on_eval_head)
  control = set(points) if stopper is not None else head_steps
  head_every = hooks.head_every if hooks.on_head is not None else 0
  snapshot = compiled.state.snapshot
  history, done = [], 0
  for evals, stop in plan(points, settings.steps, control, head_every,
                          _MAX_CALL_STEPS):
    if evals:
      metrics = compiled.run(tf.constant(done, tf.int64),
                             tf.constant(evals, tf.int64)).numpy()
      done = evals[-1] + 1
      history += _points(evals, metrics, compiled, settings, hooks.on_eval)
    if stop > done:
      compiled.train_only(tf.constant(stop - done, tf.int64))
      done = stop
    if head_every and done % head_every == 0:
      hooks.on_head(done, snapshot())
    if not evals or evals[-1] + 1 != done:  # no evaluation ended the call
      continue
    step = evals[-1]
    if step in head_steps:
      hooks.on_eval_head(step, snapshot())
    if stopper is not None and _should_stop(stopper, step, metrics, compiled,
                                            settings):
      break
  return history


def _points(evals: Sequence[int], metrics: np.ndarray,
            compiled: CompiledSteps, settings: Settings,
            on_eval: Optional[Callable[[EvalPoint], None]]) -> List[EvalPoint]:
  """EvalPoints of one compiled call's metrics, passed to on_eval."""
  has_val = compiled.has_val
  count = compiled.val_size if has_val else 0
  draws = count if settings.validation_batch_size < 0 or not has_val else (
      settings.validation_batch_size)
  points = []
  for step, (loss, acc, _, v_acc) in zip(evals, metrics.tolist()):
    point = EvalPoint(step, acc, loss, v_acc if has_val else None, count,
                      draws)
    points.append(point)
    if on_eval is not None:
      on_eval(point)
  return points


def _should_stop(stopper: options_lib.EarlyStopping, step: int,
                 metrics: np.ndarray, compiled: CompiledSteps,
                 settings: Settings) -> bool:
  """Feeds early stopping the whole validation set's cross entropy."""
  full_loss = (metrics[-1, 2] if settings.validation_batch_size < 0 else
               compiled.full_validation()[0])
  if not stopper.update(step, float(full_loss), compiled.state.snapshot):
    return False
  logging.info('Early stopping at step %d: the validation cross entropy has '
               'not improved for %d evaluations since step %d.', step,
               stopper.patience, stopper.best_step)
  return True
