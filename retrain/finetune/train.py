"""The fine-tuning loop: AdamW, warm-up and cosine decay, early stopping on
validation, a checkpoint after every epoch and resume from it.

Shared by both kinds of fine-tuning (the top of a bundled EfficientNet-Lite
on cached activations, and a whole TF-Hub module on decoded images): the
model is a `logits(x, training, seed)` function over a list of variables, the
data two functions that yield batches (x, y int64 [b]).

Schedule: the learning rate rises linearly from 0 to its peak over the
warm-up (so the first steps, whose Adam moments are still noise, cannot
wreck the pretrained weights), then falls to 0 along a half cosine by the
last step of the last epoch.

Checkpoint choice: the weights of the last epoch, the end of the cosine
schedule, are kept unless validation says they are clearly worse than the
best epoch's (starting with the weights fine-tuning started from): more
than two binomial standard errors, and at least one image, below it. Then
(and when training stopped early) the best epoch's are kept: the one with
the best validation accuracy, ties going to the lower validation cross
entropy. Training stops after `patience` epochs without a better one.
Why not simply the best on validation: test accuracy moves by a point from
epoch to epoch (a prototype), and on a validation set that
the head alone already gets (nearly) all right, "best" kept the head alone
or an epoch of the early dip, while the last epoch was better on held-out
images (5-fold sign_language_digits, docs/fine_tuning.md).

Resume: after each epoch the variables, the optimizer's moments, the best
weights so far and the counters are written to `checkpoint_dir` (by
tf.train.CheckpointManager, which writes the files before it points
`checkpoint` at them, so a kill leaves the previous checkpoint whole). A
run with the same identity (settings, data, starting head) restores it and
goes on at the next epoch; batches are shuffled by (seed, epoch), so a
resumed run sees what an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.common import atomic
from retrain.common import earlier_outputs as keep
from retrain.errors import OutputError, RetrainError
from retrain.head import math as head_math

IDENTITY_FILE = 'fine_tune_identity.json'


class FineTuneError(RetrainError, ValueError):
  """Fine-tuning cannot go on with these settings (the text says the fix)."""


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Warm-up then cosine decay, by step (0-based)."""
  peak: float
  warmup_steps: int
  total_steps: int

  def __call__(self, step: int) -> float:
    if step < self.warmup_steps:
      return self.peak * (step + 1) / self.warmup_steps
    decay = max(1, self.total_steps - self.warmup_steps)
    done = min(1.0, (step - self.warmup_steps) / decay)
    return self.peak * 0.5 * (1.0 + math.cos(math.pi * done))


class AdamW(tf.Module):
  """Adam with decoupled weight decay on kernels (rank >= 2) only.

  Biases are not decayed: shrinking them towards 0 has no regularising
  effect and only shifts the classes' priors.
  """

  def __init__(self, variables: Sequence[tf.Variable], weight_decay: float,
               beta1: float = 0.9, beta2: float = 0.999,
               epsilon: float = 1e-7):
    super().__init__(name='adamw')
    self.weight_decay = float(weight_decay)
    self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
    self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
    self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
    self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)

  def apply(self, grads, variables, learning_rate):
    self.iterations.assign_add(1)
    t = tf.cast(self.iterations, tf.float32)
    correction1 = 1.0 - tf.pow(self.beta1, t)
    correction2 = 1.0 - tf.pow(self.beta2, t)
    for g, var, m, v in zip(grads, variables, self.m, self.v, strict=True):
      if g is None:
        continue
      m.assign(self.beta1 * m + (1.0 - self.beta1) * g)
      v.assign(self.beta2 * v + (1.0 - self.beta2) * tf.square(g))
      update = (m / correction1) / (tf.sqrt(v / correction2) + self.epsilon)
      if self.weight_decay and var.shape.rank >= 2:
        update += self.weight_decay * var
      var.assign_sub(learning_rate * update)


@dataclasses.dataclass
class EpochPoint:
  """One epoch: train figures are means over its batches (dropout on)."""
  epoch: int  # 1-based; 0 is the starting point (validation only)
  train_cross_entropy: Optional[float]
  train_accuracy: Optional[float]
  validation_cross_entropy: float
  validation_accuracy: float
  learning_rate: float
  seconds: float


@dataclasses.dataclass
class FitResult:
  """history: the epochs run by this call (resumed ones are not repeated);
  best_epoch: the epoch whose weights the variables hold (0: the start);
  resumed_from: the epoch restored from a checkpoint, 0 when none."""
  history: List[EpochPoint]
  best_epoch: int
  best_validation_accuracy: float
  resumed_from: int = 0
  stopped_early: bool = False


@dataclasses.dataclass(frozen=True)
class FitOptions:
  epochs: int
  learning_rate: float
  weight_decay: float
  warmup_epochs: float
  patience: int
  seed: int
  label_smoothing: float = 0.0  # of the training loss only


@dataclasses.dataclass(frozen=True)
class Batches:
  """What `fit` trains and validates on.

  Attributes:
    train: epoch (1-based) -> iterable of (x, y int64 [b]); the order must
      depend only on the epoch and the seed (resume).
    validation: () -> iterable of (x, y).
    steps_per_epoch: batches `train` yields per epoch.
  """
  train: Callable[[int], Iterable]
  validation: Callable[[], Iterable]
  steps_per_epoch: int


def evaluate(logits_fn, batches: Iterable) -> Tuple[float, float, np.ndarray]:
  """(mean cross entropy, accuracy, predictions int64 [n]) over batches."""
  total, correct, loss, predictions = 0, 0, 0.0, []
  for x, y in batches:
    logits = logits_fn(x)
    loss += float(tf.reduce_sum(head_math.tf_cross_entropy(logits, y)))
    predicted = tf.argmax(logits, axis=1).numpy()
    predictions.append(predicted)
    correct += int(np.sum(predicted == np.asarray(y)))
    total += len(predicted)
  if not total:
    return math.nan, math.nan, np.zeros(0, np.int64)
  return loss / total, correct / total, np.concatenate(predictions)


def remove_checkpoint_temporaries(directory: str) -> None:
  """Removes what a checkpoint save that failed (a full disk) or was killed
  left in `directory`: TensorFlow's `<prefix>_temp` shards and
  `checkpoint.tmp*` state files, which made the next run fail."""
  try:
    names = os.listdir(directory)
  except OSError:
    return
  for name in names:
    if '_temp' in name or name.startswith('checkpoint.tmp'):
      path = os.path.join(directory, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(path)


def save_checkpoint(manager, epoch: int) -> None:
  """manager.save, a failure (a full disk) an OutputError that leaves no
  temporary behind; the checkpoint before it stays whole."""
  try:
    manager.save(checkpoint_number=epoch)
  except (tf.errors.OpError, OSError) as e:
    remove_checkpoint_temporaries(manager.directory)
    reason = (getattr(e, 'message', None) or str(e)).strip().splitlines()
    raise OutputError(
        f'Cannot write the fine-tuning checkpoint of epoch {epoch} in '
        f'{manager.directory!r} ({reason[0] if reason else type(e).__name__}'
        '). Free some disk space there, or give a checkpoint_path on a disk '
        'with room, and run again: fine-tuning resumes from the last whole '
        'checkpoint.', fields=('checkpoint_path',)) from e


def _prepare_checkpoint_dir(directory: str, identity: dict) -> None:
  """Makes `directory` hold checkpoints of `identity` only: a folder of
  another run's checkpoints is moved aside (never deleted)."""
  path = os.path.join(directory, IDENTITY_FILE)
  remove_checkpoint_temporaries(directory)
  if os.path.isdir(directory) and os.listdir(directory):
    try:
      with open(path, encoding='utf-8') as f:
        if json.load(f) == json.loads(json.dumps(identity)):
          return
    except (OSError, ValueError):
      pass
    aside = keep.move_aside(directory)
    logging.warning('The fine-tuning checkpoints in %s are of other settings '
                    'or data; moved them to %s and starting afresh.',
                    directory, aside)
  atomic.write_json(path, identity, sort_keys=True)


class _Tracker(tf.Module):
  """The best weights so far and the counters, all checkpointed."""

  def __init__(self, variables: List[tf.Variable]):
    super().__init__(name='fine_tune_tracker')
    self.variables_ = list(variables)
    self.best = [tf.Variable(v, trainable=False) for v in variables]
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.best_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
    self.best_cross_entropy = tf.Variable(math.inf, dtype=tf.float64,
                                          trainable=False)
    self.since_best = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.last_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
    self.validation_count = tf.Variable(0, dtype=tf.int64, trainable=False)

  def consider(self, point: 'EpochPoint') -> None:
    """Keeps the weights if this epoch is the best so far."""
    best = float(self.best_accuracy.numpy())
    if point.validation_accuracy > best or (
        point.validation_accuracy == best and
        point.validation_cross_entropy < self.best_cross_entropy.numpy()):
      for b, v in zip(self.best, self.variables_, strict=True):
        b.assign(v)
      self.best_epoch.assign(point.epoch)
      self.best_accuracy.assign(point.validation_accuracy)
      self.best_cross_entropy.assign(point.validation_cross_entropy)
      self.since_best.assign(0)
    else:
      self.since_best.assign_add(1)

  def restore_best(self) -> None:
    for b, v in zip(self.best, self.variables_, strict=True):
      v.assign(b)

  def last_within_noise(self) -> bool:
    """Whether the last epoch's validation accuracy is at most two binomial
    standard errors (and at least one image) below the best epoch's."""
    n = int(self.validation_count.numpy())
    last, best = float(self.last_accuracy.numpy()), float(
        self.best_accuracy.numpy())
    if n <= 0 or last < 0:
      return False
    margin = max(1.0 / n, 2.0 * math.sqrt(max(best * (1.0 - best), 0.0) / n))
    return last >= best - margin - 1e-9


def _summarise(writers, point: EpochPoint) -> None:
  """The epoch's scalars, under the names the log uses."""
  if writers is None:
    return
  train_writer, validation_writer = writers
  if point.train_cross_entropy is not None:
    with train_writer.as_default(step=point.epoch):
      tf.summary.scalar('cross_entropy', point.train_cross_entropy)
      tf.summary.scalar('accuracy', point.train_accuracy)
      tf.summary.scalar('learning_rate', point.learning_rate)
  with validation_writer.as_default(step=point.epoch):
    tf.summary.scalar('cross_entropy', point.validation_cross_entropy)
    tf.summary.scalar('accuracy', point.validation_accuracy)


def _step_functions(variables, logits_fn, optimizer, label_smoothing=0.0,
                    seed: int = 0):
  """(train_step(x, y, lr) -> (loss, correct), infer(x) -> logits).

  The dropout of step k is drawn from (seed, k), k the optimizer's step
  count (checkpointed): the same command gives the same weights, resumed
  or not."""
  seed = tf.constant(int(seed) & 0x7FFFFFFF, tf.int64)

  @tf.function(reduce_retracing=True)
  def train_step(x, y, learning_rate):
    with tf.GradientTape() as tape:
      logits = logits_fn(x, True, tf.stack([seed, optimizer.iterations]))
      loss = tf.reduce_mean(head_math.tf_cross_entropy(logits, y,
                                                       label_smoothing))
    grads = tape.gradient(loss, variables)
    optimizer.apply(grads, variables, learning_rate)
    correct = tf.reduce_sum(tf.cast(head_math.tf_hits(logits, y), tf.int64))
    return loss, correct

  @tf.function(reduce_retracing=True)
  def infer(x):
    return logits_fn(x, False)

  return train_step, infer


def _train_epoch(epoch: int, batches, train_step, schedule: Schedule,
                 first_step: int, options: FitOptions):
  """Runs one epoch; returns (mean cross entropy, accuracy, last rate)."""
  step, total_loss, total_correct, total = first_step, 0.0, 0, 0
  learning_rate = schedule(step)
  for x, y in batches:
    learning_rate = schedule(step)
    loss, correct = train_step(x, y, tf.constant(learning_rate, tf.float32))
    loss = float(loss)
    if not math.isfinite(loss):
      raise FineTuneError(
          f'Fine-tuning diverged at epoch {epoch} (cross entropy {loss}) '
          f'with fine_tune_learning_rate={options.learning_rate:g}: pass a '
          'smaller one (the default is 1e-4).',
          fields=('fine_tune_learning_rate',))
    total_loss += loss * len(y)
    total_correct += int(correct)
    total += len(y)
    step += 1
  return (total_loss / max(total, 1), total_correct / max(total, 1),
          learning_rate)


def _starting_point(infer, validation_batches) -> EpochPoint:
  """Epoch 0: the validation figures of the weights fine-tuning starts from."""
  started = time.monotonic()
  loss, accuracy, _ = evaluate(infer, validation_batches)
  logging.info('Fine-tuning starts at validation accuracy %.1f%%, cross '
               'entropy %.4f (the head alone).', 100 * accuracy, loss)
  return EpochPoint(0, None, None, loss, accuracy, 0.0,
                    time.monotonic() - started)


def _resume(manager, tracker: _Tracker, options: FitOptions) -> int:
  """Restores the latest checkpoint, if any; returns the epochs done."""
  if manager is None or not manager.latest_checkpoint:
    return 0
  manager.checkpoint.restore(manager.latest_checkpoint).expect_partial()
  done = int(tracker.epoch.numpy())
  logging.info('Resuming fine-tuning from %s: %d of %d epochs done, best '
               'validation accuracy %.1f%% (epoch %d).',
               manager.latest_checkpoint, done, options.epochs,
               100 * float(tracker.best_accuracy.numpy()),
               int(tracker.best_epoch.numpy()))
  return done


def fit(variables: List[tf.Variable], logits_fn: Callable, batches: Batches,
        options: FitOptions, checkpoint_dir: Optional[str] = None,
        identity: Optional[dict] = None, writers=None,
        on_epoch: Optional[Callable[[EpochPoint], None]] = None) -> FitResult:
  """Trains `variables` in place; on return they hold the best epoch's.

  Args:
    variables: what is trained.
    logits_fn: (x, training: bool, seed: int64 [2] of the dropout) ->
      float32 [b, N] logits.
    batches: the training and validation batches.
    options: the schedule and stopping settings.
    checkpoint_dir: where checkpoints go and are resumed from (None: none).
    identity: JSON-serialisable description of the run; checkpoints of
      another identity are never resumed.
    writers: (train, validation) tf.summary writers, or None.
    on_epoch: called after each epoch (and its checkpoint) with its point.

  Raises:
    FineTuneError: the loss stopped being finite (the learning rate is too
      high for this model).
  """
  steps_per_epoch = batches.steps_per_epoch
  schedule = Schedule(options.learning_rate,
                      max(1, round(options.warmup_epochs * steps_per_epoch)),
                      options.epochs * steps_per_epoch)
  optimizer = AdamW(variables, options.weight_decay)
  tracker = _Tracker(variables)
  manager = None
  if checkpoint_dir:
    _prepare_checkpoint_dir(checkpoint_dir, identity or {})
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(variables=list(variables), optimizer=optimizer,
                            tracker=tracker), checkpoint_dir, max_to_keep=1)
  resumed = _resume(manager, tracker, options)
  train_step, infer = _step_functions(variables, logits_fn, optimizer,
                                      options.label_smoothing, options.seed)
  history = []
  if resumed == 0:
    history.append(_starting_point(infer, batches.validation()))
    tracker.consider(history[0])
    _summarise(writers, history[0])
  stopped_early = False
  for epoch in range(resumed + 1, options.epochs + 1):
    if options.patience and tracker.since_best.numpy() >= options.patience:
      stopped_early = True
      break
    started = time.monotonic()
    loss, accuracy, rate = _train_epoch(
        epoch, batches.train(epoch), train_step, schedule,
        (epoch - 1) * steps_per_epoch, options)
    val_loss, val_accuracy, val_predictions = evaluate(infer,
                                                       batches.validation())
    point = EpochPoint(epoch, loss, accuracy, val_loss, val_accuracy, rate,
                       time.monotonic() - started)
    logging.info(
        'Fine-tuning epoch %d/%d: train accuracy %.1f%%, cross entropy '
        '%.4f; validation accuracy %.1f%%, cross entropy %.4f; learning '
        'rate %.2g; %.1f s.', epoch, options.epochs, 100 * accuracy, loss,
        100 * val_accuracy, val_loss, rate, point.seconds)
    tracker.consider(point)
    tracker.epoch.assign(epoch)
    tracker.last_accuracy.assign(val_accuracy)
    tracker.validation_count.assign(len(val_predictions))
    _summarise(writers, point)
    history.append(point)
    if manager is not None:
      save_checkpoint(manager, epoch)
    if on_epoch is not None:
      on_epoch(point)
  kept, accuracy = _keep(tracker, stopped_early)
  return FitResult(history=history, best_epoch=kept,
                   best_validation_accuracy=accuracy,
                   resumed_from=resumed, stopped_early=stopped_early)


def _keep(tracker: _Tracker, stopped_early: bool) -> Tuple[int, float]:
  """Leaves the variables at the weights kept (the module docstring says
  which); returns (their epoch, their validation accuracy)."""
  last, best = int(tracker.epoch.numpy()), int(tracker.best_epoch.numpy())
  best_accuracy = float(tracker.best_accuracy.numpy())
  if last and last != best and not stopped_early and (
      tracker.last_within_noise()):
    accuracy = float(tracker.last_accuracy.numpy())
    logging.info('Fine-tuning keeps the weights of its last epoch, %d '
                 '(validation accuracy %.1f%%, within the noise of %d '
                 'validation images of epoch %d\'s %.1f%%).', last,
                 100 * accuracy, int(tracker.validation_count.numpy()), best,
                 100 * best_accuracy)
    return last, accuracy
  tracker.restore_best()
  logging.info('Fine-tuning keeps the weights of epoch %d (validation '
               'accuracy %.1f%%)%s.', best, 100 * best_accuracy,
               ', stopped early' if stopped_early else
               ', the last epoch being clearly worse' if last != best else '')
  return best, best_accuracy
