"""Full fine-tuning of a TF-Hub module: no block boundary to cut at.

The whole module is wrapped in `hub.KerasLayer(trainable=True)` and trained
with the head on decoded images, which stream from disk through the
bottlenecks' parallel tf.data pipeline every epoch (never all in memory).
Each epoch runs the whole module forward and backward over every training
image, so it costs about three bottleneck passes per epoch; the log says so,
with an estimate, before it starts.

The module is called with training=False even while it is trained: batch
norm inside it keeps its inference statistics (frozen), and its own dropout
stays off; the head's dropout is ours.

Distortions (when switched on) are drawn afresh for each image in each
epoch, with stateless seeds from (--random_seed, image, epoch), so a resumed
epoch sees the same pixels.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from retrain import images as images_lib
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.common.progress import format_duration
from retrain.features.modules import FeatureModule
from retrain.finetune import lite as lite_lib


class HubNetwork(tf.Module):
  """hub.KerasLayer(trainable=True) plus the softmax classifier.

  logits(images float32 [b, H, W, 3] in [0, 1], training) -> float32 [b, N].
  """

  def __init__(self, module: FeatureModule, head_weights: np.ndarray,
               head_biases: np.ndarray, dropout: float = 0.0):
    super().__init__(name='fine_tuned_hub_module')
    import tensorflow_hub as hub  # imports Keras: only when fine-tuning
    self.layer = hub.KerasLayer(module.path, trainable=True)
    self.input_size = module.input_size
    self.dropout = float(dropout)
    self.final_weights = tf.Variable(head_weights, name='final_weights')
    self.final_biases = tf.Variable(head_biases, name='final_biases')
    self.features(tf.zeros([1, *module.input_size, 3]))  # builds the layer

  @property
  def top_variables(self):
    return list(self.layer.trainable_weights) + [self.final_weights,
                                                 self.final_biases]

  def features(self, images):
    return self.layer(images, training=False)

  def pooled(self, images):
    """The batches' x (images) -> float32 [b, D] features."""
    return self.features(images)

  def logits(self, images, training: bool = False, seed=None):
    return lite_lib.classify(self, self.features(images), training, seed)


def image_batches(paths: Sequence[str], labels: np.ndarray,
                  size, batch_size: int, order: Optional[np.ndarray] = None,
                  distortions=None,
                  seeds: Optional[np.ndarray] = None):
  """(images float32 [b, H, W, 3], labels int64 [b]) batches, streamed.

  Args:
    order: the item order (default: as given).
    distortions: the run's config.distort (retrain.config.Distort), or None.
    seeds: int64 [n, 2] stateless seeds per item, used with `distortions`.
  """
  order = np.arange(len(paths)) if order is None else order
  files = tf.constant([paths[i] for i in order], tf.string)
  index = tf.constant(order, tf.int64)
  if distortions is not None:
    items = (index, files, tf.constant(seeds[order], tf.int64))

    def load(i, path, seed):
      return i, distort_lib.distort_image(tf.io.read_file(path), size, seed,
                                          distortions)
  else:
    items = (index, files)

    def load(i, path):
      return i, images_lib.decode_and_resize(tf.io.read_file(path), size)

  for indices, images in bottlenecks_lib.image_batches(items, load,
                                                       batch_size):
    yield images, tf.constant(labels[indices.numpy()], tf.int64)


def estimate_epoch_seconds(network: HubNetwork, batch_size: int,
                           train_count: int) -> float:
  """Seconds per epoch, from timing one forward and backward pass of a
  batch of zeros (after a first, tracing, call)."""
  images = tf.zeros([batch_size, *network.input_size, 3])

  @tf.function
  def probe(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(network.logits(x, True))
    return tape.gradient(loss, network.top_variables)

  probe(images)
  started = time.monotonic()
  probe(images)
  per_batch = time.monotonic() - started
  return per_batch * train_count / batch_size


def log_estimate(handle: str, seconds_per_epoch: float, epochs: int,
                 train_count: int) -> None:
  logging.info(
      'Full fine-tuning of %s: the module has no block boundary to cache '
      'activations at, so every epoch re-runs the whole module forward and '
      'backward on all %d training images: about %s per epoch, %s for %d '
      'epochs (early stopping may end sooner). Nothing of it is cached.',
      handle, train_count, format_duration(seconds_per_epoch),
      format_duration(seconds_per_epoch * epochs), epochs)
