"""TensorBoard summaries under --summaries_dir.

Two runs, `train/` and `validation/`, with the scalars `cross_entropy` and
`accuracy` (the same names as in the log), and in `train/` histograms
`final_layer/weights`, `final_layer/biases` and `final_layer/activations`
(the softmax outputs of the last training batch).

retrain.py deleted --summaries_dir at start. Nothing a user made is deleted
here: the runs of an earlier training are moved BESIDE it, to
`<summaries_dir>.previous-<time>/`, so `tensorboard --logdir <summaries_dir>`
shows this run's curves only (and its Projector opens on this run); point
TensorBoard at the parent folder to compare with earlier ones.
"""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf
from absl import logging
from tensorboard.plugins.histogram import metadata as histogram_metadata

from retrain.common import earlier_outputs as keep

# test/ and projector/ are written by retrain/report/writer.py.
RUNS = ('train', 'validation', 'test', 'projector')

# tf.summary.histogram's default.
_HISTOGRAM_BUCKETS = 30


def keep_previous_runs(summaries_dir: str) -> Optional[str]:
  """Moves an earlier training's runs (train/, validation/, ...) beside
  `summaries_dir`, into `<summaries_dir>.previous-<time>/`, if there are any;
  only the newest few such folders are kept (earlier_outputs.prune).

  Returns:
    The folder they were moved to, or None when there were none.
  """
  existing = [r for r in RUNS if os.path.isdir(os.path.join(summaries_dir, r))]
  if not existing:
    return None
  prefix = os.path.abspath(summaries_dir).rstrip(os.sep) + '.previous-'
  aside = keep.stamped(prefix)
  os.makedirs(aside)
  for run in existing:
    os.rename(os.path.join(summaries_dir, run), os.path.join(aside, run))
  logging.info('Moved the previous TensorBoard run in %s to %s.',
               summaries_dir, aside)
  keep.prune(prefix)  # only the newest few are kept
  return aside


def histogram_buckets(data) -> tf.Tensor:
  """float64 [30, 3]: (left edge, right edge, count) of each bucket, the
  tensor tf.summary.histogram writes for non-empty finite `data`
  (equal-width buckets from the minimum to the maximum; all values in the
  last one if they are equal).

  Computed with a bincount and no tf.cond, where tf.summary.histogram uses a
  one-hot matrix and nested conds that cost more to trace and to run than
  the training steps between two evaluations.
  """
  count = _HISTOGRAM_BUCKETS
  data = tf.reshape(tf.cast(data, tf.float64), [-1])
  low, high = tf.reduce_min(data), tf.reduce_max(data)
  width = (high - low) / count
  index = tf.where(width > 0, tf.cast(tf.floor((data - low) / width),
                                      tf.int32), count - 1)
  # Clipped: NaN (a diverged run) must not make bincount fail.
  index = tf.clip_by_value(index, 0, count - 1)
  counts = tf.math.bincount(index, minlength=count, maxlength=count)
  # The edges tf.linspace(low, high, count + 1) gives, in fewer ops.
  edges = tf.concat([[low], low + width * tf.range(1, count, dtype=tf.float64),
                     [high]], 0)
  return tf.stack([edges[:-1], edges[1:], tf.cast(counts, tf.float64)], 1)


def histogram(name: str, data) -> None:
  """Writes a TensorBoard histogram of non-empty finite `data` like
  tf.summary.histogram(name, data), at the default writer's step."""
  tf.summary.write(name, lambda: histogram_buckets(data),
                   metadata=histogram_metadata.create_summary_metadata(
                       display_name=None, description=None))


class Writers:
  """The train and validation summary writers of one run."""

  def __init__(self, summaries_dir: str):
    keep_previous_runs(summaries_dir)
    self.directory = summaries_dir
    self.train = tf.summary.create_file_writer(
        os.path.join(summaries_dir, 'train'))
    self.validation = tf.summary.create_file_writer(
        os.path.join(summaries_dir, 'validation'))

  # The tags are absolute (name_scope('') leaves any enclosing scope, such
  # as the `while/` of a loop in a tf.function), so they are the same
  # wherever the summaries are written.

  def write_train(self, step, accuracy, cross_entropy, weights, biases,
                  probabilities) -> None:
    with tf.name_scope(''), self.train.as_default(step=step):
      tf.summary.scalar('accuracy', accuracy)
      tf.summary.scalar('cross_entropy', cross_entropy)
      histogram('final_layer/weights', weights)
      histogram('final_layer/biases', biases)
      histogram('final_layer/activations', probabilities)

  def write_validation(self, step, accuracy, cross_entropy) -> None:
    with tf.name_scope(''), self.validation.as_default(step=step):
      tf.summary.scalar('accuracy', accuracy)
      tf.summary.scalar('cross_entropy', cross_entropy)

  def close(self) -> None:
    self.train.close()
    self.validation.close()
