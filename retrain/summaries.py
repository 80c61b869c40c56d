"""TensorBoard summaries under --summaries_dir.

Two runs, `train/` and `validation/`, with the scalars `cross_entropy` and
`accuracy` (the same names as in the log), and in `train/` histograms
`final_layer/weights`, `final_layer/biases` and `final_layer/activations`
(the softmax outputs of the last training batch).

retrain.py deleted --summaries_dir at start. Nothing a user made is deleted
here: event files of an earlier run are moved into a `previous-<time>/`
sub-folder, where TensorBoard still shows them as separate runs.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from retrain import keep

# test/ and projector/ are written by retrain/explain.py.
RUNS = ('train', 'validation', 'test', 'projector')


def keep_previous_runs(summaries_dir: str) -> None:
  """Moves an earlier run's train/ and validation/ aside, if there are any."""
  existing = [r for r in RUNS if os.path.isdir(os.path.join(summaries_dir, r))]
  if not existing:
    return
  aside = keep.stamped(os.path.join(summaries_dir, 'previous-'))
  os.makedirs(aside)
  for run in existing:
    os.rename(os.path.join(summaries_dir, run), os.path.join(aside, run))
  logging.info('Moved the previous TensorBoard run in %s to %s.',
               summaries_dir, aside)


class Writers:
  """The train and validation summary writers of one run."""

  def __init__(self, summaries_dir: str):
    keep_previous_runs(summaries_dir)
    self.directory = summaries_dir
    self.train = tf.summary.create_file_writer(
        os.path.join(summaries_dir, 'train'))
    self.validation = tf.summary.create_file_writer(
        os.path.join(summaries_dir, 'validation'))

  def write_train(self, step, accuracy, cross_entropy, weights, biases,
                  probabilities) -> None:
    with self.train.as_default(step=step):
      tf.summary.scalar('accuracy', accuracy)
      tf.summary.scalar('cross_entropy', cross_entropy)
      tf.summary.histogram('final_layer/weights', weights)
      tf.summary.histogram('final_layer/biases', biases)
      tf.summary.histogram('final_layer/activations', probabilities)

  def write_validation(self, step, accuracy, cross_entropy) -> None:
    with self.validation.as_default(step=step):
      tf.summary.scalar('accuracy', accuracy)
      tf.summary.scalar('cross_entropy', cross_entropy)

  def close(self) -> None:
    self.train.close()
    self.validation.close()
