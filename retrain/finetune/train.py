"""The fine-tuning loop: AdamW, warm-up and cosine decay, early stopping on
validation, a checkpoint after every epoch and resume from it.

Shared by both kinds of fine-tuning (the top of a bundled EfficientNet-Lite
on cached activations, and a whole TF-Hub module on decoded images): the
model is a `logits(x, training)` function over a list of variables, the
data two functions that yield batches (x, y int64 [b]).

Schedule: the learning rate rises linearly from 0 to its peak over the
warm-up (so the first steps, whose Adam moments are still noise, cannot
wreck the pretrained weights), then falls to 0 along a half cosine by the
last step of the last epoch.

Early stopping: the weights of the epoch with the best validation accuracy
(ties: the lower validation cross entropy) are kept, starting from the
weights fine-tuning started from, so the result is never worse on
validation than the head alone. Training stops after `patience` epochs
without a better one. The prototype in issue 16 showed why: test accuracy
moved by a point from epoch to epoch.

Resume: after each epoch the variables, the optimizer's moments, the best
weights so far and the counters are written to `checkpoint_dir` (by
tf.train.CheckpointManager, which writes the files before it points
`checkpoint` at them, so a kill leaves the previous checkpoint whole). A
run with the same identity (settings, data, starting head) restores it and
goes on at the next epoch; batches are shuffled by (seed, epoch), so a
resumed run sees what an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.common import earlier_outputs as keep
from retrain.errors import RetrainError

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


def evaluate(logits_fn, batches: Iterable) -> Tuple[float, float, np.ndarray]:
  """(mean cross entropy, accuracy, predictions int64 [n]) over batches."""
  total, correct, loss, predictions = 0, 0, 0.0, []
  for x, y in batches:
    logits = logits_fn(x)
    loss += float(tf.reduce_sum(
        tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)))
    predicted = tf.argmax(logits, axis=1).numpy()
    predictions.append(predicted)
    correct += int(np.sum(predicted == np.asarray(y)))
    total += len(predicted)
  if not total:
    return math.nan, math.nan, np.zeros(0, np.int64)
  return loss / total, correct / total, np.concatenate(predictions)


def _write_identity(directory: str, identity: dict) -> None:
  path = os.path.join(directory, IDENTITY_FILE)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(identity, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _prepare_checkpoint_dir(directory: str, identity: dict) -> None:
  """Makes `directory` hold checkpoints of `identity` only: a folder of
  another run's checkpoints is moved aside (never deleted)."""
  path = os.path.join(directory, IDENTITY_FILE)
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
  os.makedirs(directory, exist_ok=True)
  _write_identity(directory, identity)


def fit(variables: List[tf.Variable], logits_fn: Callable,
        train_batches: Callable[[int], Iterable],
        validation_batches: Callable[[], Iterable], steps_per_epoch: int,
        options: FitOptions, checkpoint_dir: Optional[str] = None,
        identity: Optional[dict] = None, writers=None,
        on_epoch: Optional[Callable[[EpochPoint], None]] = None) -> FitResult:
  """Trains `variables` in place; on return they hold the best epoch's.

  Args:
    variables: what is trained.
    logits_fn: (x, training: bool) -> float32 [b, N] logits.
    train_batches: epoch (1-based) -> iterable of (x, y int64 [b]); the
      order must depend only on the epoch and the seed (resume).
    validation_batches: () -> iterable of (x, y).
    steps_per_epoch: batches train_batches yields per epoch.
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
  schedule = Schedule(options.learning_rate,
                      max(1, round(options.warmup_epochs * steps_per_epoch)),
                      options.epochs * steps_per_epoch)
  optimizer = AdamW(variables, options.weight_decay)
  best = [tf.Variable(v, trainable=False) for v in variables]
  state = {'epoch': tf.Variable(0, dtype=tf.int64),
           'best_epoch': tf.Variable(0, dtype=tf.int64),
           'best_accuracy': tf.Variable(-1.0, dtype=tf.float64),
           'best_cross_entropy': tf.Variable(math.inf, dtype=tf.float64),
           'since_best': tf.Variable(0, dtype=tf.int64)}
  checkpoint = tf.train.Checkpoint(variables=list(variables),
                                   optimizer=optimizer, best=best, **state)
  manager = None
  resumed = 0
  if checkpoint_dir:
    _prepare_checkpoint_dir(checkpoint_dir, identity or {})
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir,
                                         max_to_keep=1)
    if manager.latest_checkpoint:
      checkpoint.restore(manager.latest_checkpoint).expect_partial()
      resumed = int(state['epoch'].numpy())
      logging.info('Resuming fine-tuning from %s: %d of %d epochs done, best '
                   'validation accuracy %.1f%% (epoch %d).',
                   manager.latest_checkpoint, resumed, options.epochs,
                   100 * float(state['best_accuracy'].numpy()),
                   int(state['best_epoch'].numpy()))

  @tf.function(reduce_retracing=True)
  def train_step(x, y, learning_rate):
    with tf.GradientTape() as tape:
      logits = logits_fn(x, True)
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, variables)
    optimizer.apply(grads, variables, learning_rate)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(logits, axis=1), y), tf.int64))
    return loss, correct

  @tf.function(reduce_retracing=True)
  def infer(x):
    return logits_fn(x, False)

  def summarise(point: EpochPoint) -> None:
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

  def consider(point: EpochPoint) -> None:
    """Keeps the weights if this epoch is the best so far."""
    better = (point.validation_accuracy > state['best_accuracy'].numpy() or (
        point.validation_accuracy == state['best_accuracy'].numpy() and
        point.validation_cross_entropy < state['best_cross_entropy'].numpy()))
    if better:
      for b, v in zip(best, variables, strict=True):
        b.assign(v)
      state['best_epoch'].assign(point.epoch)
      state['best_accuracy'].assign(point.validation_accuracy)
      state['best_cross_entropy'].assign(point.validation_cross_entropy)
      state['since_best'].assign(0)
    else:
      state['since_best'].assign_add(1)

  history = []
  if resumed == 0:
    started = time.monotonic()
    loss, accuracy, _ = evaluate(infer, validation_batches())
    point = EpochPoint(0, None, None, loss, accuracy, 0.0,
                       time.monotonic() - started)
    logging.info('Fine-tuning starts at validation accuracy %.1f%%, cross '
                 'entropy %.4f (the head alone).', 100 * accuracy, loss)
    consider(point)
    summarise(point)
    history.append(point)

  stopped_early = False
  for epoch in range(resumed + 1, options.epochs + 1):
    if options.patience and state['since_best'].numpy() >= options.patience:
      stopped_early = True
      break
    started = time.monotonic()
    step = (epoch - 1) * steps_per_epoch
    total_loss, total_correct, total = 0.0, 0, 0
    learning_rate = schedule(step)
    for x, y in train_batches(epoch):
      learning_rate = schedule(step)
      loss, correct = train_step(x, y, tf.constant(learning_rate, tf.float32))
      loss = float(loss)
      if not math.isfinite(loss):
        raise FineTuneError(
            f'Fine-tuning diverged at epoch {epoch} (cross entropy {loss}) '
            f'with --fine_tune_learning_rate={options.learning_rate:g}: '
            'pass a smaller one (the default is 1e-4).')
      n = len(y)
      total_loss += loss * n
      total_correct += int(correct)
      total += n
      step += 1
    val_loss, val_accuracy, _ = evaluate(infer, validation_batches())
    point = EpochPoint(epoch, total_loss / max(total, 1),
                       total_correct / max(total, 1), val_loss, val_accuracy,
                       learning_rate, time.monotonic() - started)
    logging.info(
        'Fine-tuning epoch %d/%d: train accuracy %.1f%%, cross entropy '
        '%.4f; validation accuracy %.1f%%, cross entropy %.4f; learning '
        'rate %.2g; %.1f s.', epoch, options.epochs,
        100 * point.train_accuracy, point.train_cross_entropy,
        100 * val_accuracy, val_loss, learning_rate, point.seconds)
    consider(point)
    state['epoch'].assign(epoch)
    summarise(point)
    history.append(point)
    if manager is not None:
      manager.save(checkpoint_number=epoch)
    if on_epoch is not None:
      on_epoch(point)
  else:
    stopped_early = False

  for b, v in zip(best, variables, strict=True):
    v.assign(b)
  best_epoch = int(state['best_epoch'].numpy())
  logging.info('Fine-tuning keeps the weights of epoch %d (validation '
               'accuracy %.1f%%)%s.', best_epoch,
               100 * float(state['best_accuracy'].numpy()),
               ', stopped early' if stopped_early else '')
  return FitResult(history=history, best_epoch=best_epoch,
                   best_validation_accuracy=float(
                       state['best_accuracy'].numpy()),
                   resumed_from=resumed, stopped_early=stopped_early)
