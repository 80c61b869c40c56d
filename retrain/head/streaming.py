"""Training and evaluating the head from the cache, a chunk at a time.

Below the memory budget (Config.max_vectors_in_memory) retrain holds every
training vector in one tensor (retrain.head.train, the fastest path). Past
it, this module trains the same head with the same SGD, reading the
vectors from the bottleneck cache in chunks so memory stays flat however
many images there are:

  schedule  the training items, in the order their rows lie on disk, are
            cut into blocks of BLOCK_VECTORS; a chunk is a random set of
            blocks (so one chunk mixes images from all over the data set,
            whatever order they were cached in) of CHUNK_BYTES (32 MB) or
            half the budget if that is less, and the next chunk is read in
            a background thread while the current one trains (two chunks
            in memory at most). The chunk size does not grow with the
            budget: the budget only decides in memory or streaming.
  steps     each chunk gets its share of the steps, `len(chunk) * min(E, 1)
            / batch_size` with E = steps * batch_size / n_train the epochs
            the run amounts to: below one epoch every chunk is visited once
            (every image can be drawn, as in memory); past it, chunks are
            visited again in a new random order, one pass of draws each.
  batches   drawn inside the chunk as retrain.py drew them from the whole
            set (--sampling classes: a class uniformly among those the
            chunk holds, then one of its images; --sampling images: an
            image uniformly).
  validation  a fixed random sample (SAMPLE_BYTES, 32 MB, or an eighth of
            the budget if that is less) is read once; each evaluation
            draws --validation_batch_size from it (or uses it all for -1
            and for early stopping).
  test      evaluate_streaming reads the test set in chunks.

The optimizer and loss options of retrain.head.options all apply.
TensorBoard summaries are not written on this path (the log lines are).

The converging solver (a separate issue) needs the whole set per
iteration; past the budget it falls back to this SGD (documented in
docs/scale.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Callable, Iterator, List, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from bottleneck_cache.chunks import ChunkReader
from retrain.head import evaluate as evaluate_lib
from retrain.head import math as head_math
from retrain.head import model as model_lib
from retrain.head import options as options_lib
from retrain.head import train as train_lib

# Items per block of the chunk schedule: 1024 x 1280 float32 = 5 MB, large
# enough that a block is a few contiguous reads, small enough that a chunk
# of blocks mixes the whole data set.
BLOCK_VECTORS = 1024
# Bytes of one chunk of training (or test) vectors: 32 MB is 6 blocks of
# 1,280 floats, a few hundred SGD draws per visit at the default batch, and
# reads of a few ms each. Fixed rather than a share of the budget, so memory
# past the budget does not depend on it (a 100,000-vector budget once made
# 250 MB chunks).
CHUNK_BYTES = 32 << 20
# The validation (and calibration) sample: at most this many bytes, and at
# most an eighth of the budget (6,553 vectors of 1,280 floats: accuracy
# measured to about +-0.5 %).
SAMPLE_BYTES = 32 << 20
_VALIDATION_SHARE = 8


def should_stream(train_vectors: int, max_vectors_in_memory: int) -> bool:
  """True when the training vectors exceed the budget (0 or less: never)."""
  return 0 < max_vectors_in_memory < train_vectors


def _vector_bytes(dim: Optional[int]) -> int:
  return 4 * max(1, dim or 1)


def chunk_capacity(max_vectors_in_memory: int, dim: Optional[int]) -> int:
  """Vectors per chunk of float32 [., dim]: CHUNK_BYTES, at most half the
  budget (one chunk trains while the next is read), at least one block."""
  return max(BLOCK_VECTORS, min(max_vectors_in_memory // 2,
                                CHUNK_BYTES // _vector_bytes(dim)))


def sample_capacity(max_vectors_in_memory: int, dim: Optional[int]) -> int:
  """Vectors of the validation or calibration sample: SAMPLE_BYTES, at
  most an eighth of the budget."""
  return max(1, min(max_vectors_in_memory // _VALIDATION_SHARE,
                    SAMPLE_BYTES // _vector_bytes(dim)))


def chunk_schedule(order: np.ndarray, capacity: int,
                   rng: np.random.Generator) -> Iterator[np.ndarray]:
  """Endless chunks of items: each pass over the data is a new random
  grouping of storage blocks into chunks of at most `capacity` items.

  Args:
    order: int64 [n], the items in storage order (ChunkReader.storage_order).
  """
  blocks = [order[i:i + BLOCK_VECTORS]
            for i in range(0, len(order), BLOCK_VECTORS)]
  per_chunk = max(1, capacity // BLOCK_VECTORS)
  while True:
    picked = rng.permutation(len(blocks))
    for start in range(0, len(blocks), per_chunk):
      yield np.sort(np.concatenate([blocks[b] for b in
                                    picked[start:start + per_chunk]]))


class _Sampler:
  """Rows of one chunk for batches drawn as in retrain.head.train."""

  def __init__(self, labels: np.ndarray, by_class: bool):
    self.n = len(labels)
    self.by_class = by_class
    self.order = np.argsort(labels, kind='stable')
    classes, starts, counts = np.unique(labels[self.order], return_index=True,
                                        return_counts=True)
    self.classes, self.starts, self.counts = classes, starts, counts

  def rows(self, rng: np.random.Generator, steps: int, batch: int) -> np.ndarray:
    """int64 [steps, batch] rows of the chunk."""
    if not self.by_class:
      return rng.integers(0, self.n, size=(steps, batch), dtype=np.int64)
    pick = rng.integers(0, len(self.classes), size=(steps, batch))
    within = np.minimum((rng.random((steps, batch)) *
                         self.counts[pick]).astype(np.int64),
                        self.counts[pick] - 1)
    return self.order[self.starts[pick] + within].astype(np.int64)


class _Trainer:
  """The head's variables and a compiled loop over given batches."""

  def __init__(self, dim: int, num_classes: int, learning_rate: float,
               seed: int, opts,
               loss_weights: Optional[np.ndarray]):
    tf.random.set_seed(seed)
    self.gen = tf.random.Generator.from_seed(seed)
    # The layer and initialisation retrain.head.train uses.
    self.layer = model_lib.HeadVariables(dim, num_classes, seed)
    self.opts = opts
    self.optimizer = options_lib.Optimizer(opts.optimizer if opts else 'sgd',
                                           learning_rate, self.layer.variables)
    self.loss_weights = (tf.constant(loss_weights) if loss_weights is not None
                         else None)
    dropout = bool(opts and opts.dropout_rate)
    # The batches of a call are gathered from the chunk by numpy and
    # handed over as [S, B, D] (a few MB): handed the whole chunk, XLA
    # copied it on every call, and turning a chunk into a tensor cost a
    # copy of it too (0.1 s per 100 MB, on a busy machine far more).
    self.run = tf.function(self._steps_on, jit_compile=not dropout)

  def _steps_on(self, xs, ys, n):
    """SGD steps on batches xs[i], ys[i] for i < n; xs float32 [S, B, D],
    ys int64 [S, B] (S fixed per run, so XLA compiles once rather than
    once per segment length)."""
    opts = self.opts

    def step(i):
      xb, yb = xs[i], ys[i]
      with tf.GradientTape() as tape:
        if opts is not None:
          xb = options_lib.dropout(xb, opts.dropout_rate, self.gen)
        loss = options_lib.objective(
            self.layer.logits(xb), yb, self.layer.weights, self.loss_weights,
            opts.label_smoothing if opts else 0.0,
            opts.l2_regularizer if opts else 0.0)
      self.optimizer.apply(tape.gradient(loss, self.layer.variables))
      return i + 1

    tf.while_loop(lambda i: i < n, step, [tf.constant(0, tf.int64)])
    return tf.constant(0)

  def head(self) -> model_lib.Head:
    return self.layer.snapshot()


def _loss_and_accuracy(head: model_lib.Head, x: np.ndarray,
                       y: np.ndarray) -> tuple:
  """(mean cross entropy, accuracy) of the head on vectors x, ids y."""
  if not len(y):
    return 0.0, 0.0
  probs = head.probabilities(x)
  picked = np.maximum(probs[np.arange(len(y)), y], 1e-30)
  return (float(-np.mean(np.log(picked))),
          head_math.accuracy(probs, y))


@dataclasses.dataclass
class StreamStats:
  """How the streaming run went: chunks read, vectors read, seconds spent
  waiting for reads (not hidden behind training)."""
  chunks: int = 0
  vectors_read: int = 0
  wait_seconds: float = 0.0


@dataclasses.dataclass
class Labelled:
  """Vectors in the cache and their classes.

  Attributes:
    reader: reads the vectors, float32 [n, D], in chunks.
    y: int class ids [n] in [0, num_classes).
  """
  reader: ChunkReader
  y: np.ndarray

  def __len__(self) -> int:
    return len(self.y)


def train_head_streaming(
    train: Labelled, validation: Labelled, num_classes: int,
    settings: train_lib.Settings, max_vectors_in_memory: int,
    on_eval: Optional[Callable[[train_lib.EvalPoint], None]] = None,
    stats: Optional[StreamStats] = None) -> train_lib.TrainResult:
  """Trains the head reading training vectors from the cache in chunks.

  Args:
    train: the training vectors and ids.
    validation: the validation vectors and ids (may be empty).
    settings: what to train, as for retrain.head.train.train_head.
    max_vectors_in_memory: the budget; chunks as chunk_capacity.
    on_eval: called with each evaluation point, in order.
    stats: filled with what was read, if given.

  Returns:
    A TrainResult (history of EvalPoints; best_step with early stopping).
  """
  stats = stats if stats is not None else StreamStats()
  train_y = np.asarray(train.y, np.int64)
  rng = np.random.default_rng(settings.seed)
  loop = _Loop(settings, _make_trainer(settings, train_y, num_classes,
                                       train.reader.dim),
               _ValidationSample(validation.reader,
                                 np.asarray(validation.y, np.int64),
                                 max_vectors_in_memory,
                                 settings.validation_batch_size, rng,
                                 train.reader.dim), on_eval)
  # Steps owed per vector of a chunk (see the module docstring).
  share = min(settings.steps * settings.batch_size / max(1, len(train_y)),
              1.0) / settings.batch_size
  capacity = chunk_capacity(max_vectors_in_memory, train.reader.dim)
  chunk_list = _read_ahead(
      train.reader, chunk_schedule(train.reader.storage_order(), capacity,
                                   rng), stats)
  owed = 0.0
  for items, chunk_x in chunk_list:
    owed += len(items) * share
    visit = min(max(1, int(owed)), settings.steps - loop.done)
    owed -= visit
    loop.train_on(chunk_x, train_y[items], visit, rng)
    if loop.done >= settings.steps:
      break
  chunk_list.close()
  return loop.result()


class _Loop:
  """The state of a streaming run: steps done, evaluation points, early
  stopping."""

  def __init__(self, settings: train_lib.Settings, trainer: _Trainer,
               validate: _ValidationSample,
               on_eval: Optional[Callable[[train_lib.EvalPoint], None]]):
    options = settings.options
    self.settings, self.trainer, self.validate = settings, trainer, validate
    self.on_eval = on_eval
    self.by_class = not (options and options.sampling == 'images')
    self.points = train_lib.eval_steps(settings.steps,
                                       settings.eval_step_interval)
    self.point_set = set(self.points)
    # A compiled call trains up to the next evaluation point.
    self.segment = max(1, min(settings.eval_step_interval, settings.steps))
    self.stopper = (options_lib.EarlyStopping(
        options.early_stopping_patience)
                    if options and options.early_stopping_patience and
                    len(validate.y) else None)
    self.history: List[train_lib.EvalPoint] = []
    self.done = 0

  def train_on(self, chunk_x: np.ndarray, chunk_y: np.ndarray, visit: int,
               rng: np.random.Generator) -> None:
    """`visit` steps on batches of one chunk, float32 [m, D] and int64 [m]
    (fewer when early stopping ends the run: done is then steps)."""
    steps, batch_size = self.settings.steps, self.settings.batch_size
    sampler = _Sampler(chunk_y, self.by_class)
    while visit > 0:
      upcoming = next((p for p in self.points if p >= self.done), steps - 1)
      count = min(visit, upcoming + 1 - self.done)
      rows = sampler.rows(rng, count, batch_size)
      padded = np.zeros((self.segment, batch_size), np.int64)
      padded[:count] = rows
      self.trainer.run(tf.constant(chunk_x[padded]),
                       tf.constant(chunk_y[padded]),
                       tf.constant(count, tf.int64))
      self.done, visit = self.done + count, visit - count
      if self.done - 1 not in self.point_set:
        continue
      head = self.trainer.head()
      point = self.validate.point(self.done - 1, head, chunk_x[rows[-1]],
                                  chunk_y[rows[-1]])
      self.history.append(point)
      if self.on_eval is not None:
        self.on_eval(point)
      if self.stopper is not None and self.stopper.update(
          point.step, self.validate.loss(head), self.trainer.head):
        logging.info('Early stopping at step %d (validation sample of %d).',
                     point.step, len(self.validate.y))
        self.done = steps
        return

  def result(self) -> train_lib.TrainResult:
    if self.stopper is not None and self.stopper.best is not None:
      return train_lib.TrainResult(self.stopper.best, self.history,
                                   self.stopper.best_step)
    return train_lib.TrainResult(self.trainer.head(), self.history)


def _make_trainer(settings: train_lib.Settings, train_y: np.ndarray,
                  num_classes: int, dim: int) -> _Trainer:
  options = settings.options
  loss_weights = None
  if options and options.class_weighting != 'none':
    loss_weights = options_lib.class_weights(
        np.bincount(train_y, minlength=num_classes), options.class_weighting,
        options.sampling)
  return _Trainer(dim, num_classes, settings.learning_rate, settings.seed,
                  options, loss_weights)


def _read_ahead(reader: ChunkReader, schedule: Iterator[np.ndarray],
                stats: StreamStats):
  """Yields (items, float32 [len(items), D]) for the chunks of `schedule`,
  reading the next chunk in a thread while the caller trains on one."""
  import time
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    items = next(schedule)
    pending = pool.submit(reader.read, items)
    try:
      while True:
        waited = time.monotonic()
        chunk_x = pending.result()
        stats.wait_seconds += time.monotonic() - waited
        stats.chunks += 1
        stats.vectors_read += len(items)
        next_items = next(schedule)
        pending = pool.submit(reader.read, next_items)
        yield items, chunk_x
        items = next_items
    finally:
      pending.cancel()


class _ValidationSample:
  """A fixed random sample of the validation vectors (sample_capacity),
  read once; evaluation points are measured on it."""

  def __init__(self, reader: ChunkReader, val_y: np.ndarray, budget: int,
               batch_size: int, rng: np.random.Generator, dim: int):
    items = np.arange(len(val_y), dtype=np.int64)
    cap = sample_capacity(budget, dim)
    if len(items) > cap:
      items = np.sort(rng.choice(len(items), cap, replace=False))
    self.x = reader.read(items) if len(items) else np.zeros((0, dim),
                                                            np.float32)
    self.y = val_y[items]
    self.count = len(val_y)
    self.batch_size, self.rng = batch_size, rng

  def point(self, step: int, head: model_lib.Head, batch_x: np.ndarray,
            batch_y: np.ndarray) -> train_lib.EvalPoint:
    """The evaluation after `step`: training metrics on the step's batch,
    validation accuracy on --validation_batch_size draws (or all: -1)."""
    loss, acc = _loss_and_accuracy(head, batch_x, batch_y)
    if not len(self.y):
      return train_lib.EvalPoint(step, acc, loss, None, 0, 0)
    pick = (np.arange(len(self.y)) if self.batch_size < 0 else
            self.rng.integers(0, len(self.y), self.batch_size))
    _, v_acc = _loss_and_accuracy(head, self.x[pick], self.y[pick])
    return train_lib.EvalPoint(step, acc, loss, v_acc, self.count, len(pick))

  def loss(self, head: model_lib.Head) -> float:
    """Cross entropy on the whole sample (for early stopping)."""
    return _loss_and_accuracy(head, self.x, self.y)[0]


def evaluate_streaming(head: model_lib.Head, reader: ChunkReader,
                       y: np.ndarray, max_vectors_in_memory: int,
                       batch_size: int = -1,
                       seed: Optional[int] = None) -> evaluate_lib.Evaluation:
  """retrain.head.evaluate.evaluate on vectors read in chunks.

  Args:
    head: the trained head.
    reader: the vectors (float32 [n, D]); y: int [n] class ids.
    max_vectors_in_memory: the budget; chunks as chunk_capacity.
    batch_size, seed: -1 for every vector, else a random sample of that
      many (with replacement, repeatable with seed), as evaluate().

  Returns:
    An Evaluation whose rows index the reader's items.
  """
  y = np.asarray(y, np.int64)
  rows = np.arange(len(y), dtype=np.int64)
  if batch_size is not None and batch_size >= 0 and len(y):
    rows = np.random.default_rng(seed).integers(0, len(y), size=batch_size)
  num_classes = head.biases.shape[0]
  probs = np.zeros((len(rows), num_classes), np.float32)
  capacity = chunk_capacity(max_vectors_in_memory, reader.dim)
  # Storage order for cheap reads; results go back to their row's place.
  order = np.lexsort((reader.row[rows], reader.shard[rows]))
  for start in range(0, len(order), capacity):
    part = order[start:start + capacity]
    probs[part] = head.probabilities(reader.read(rows[part]))
  labels = y[rows]
  preds = probs.argmax(axis=1).astype(np.int64)
  accuracy = head_math.accuracy(probs, labels)
  return evaluate_lib.Evaluation(accuracy, len(labels), labels, preds, probs,
                                 rows)
