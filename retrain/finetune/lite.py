"""EfficientNet-Lite cut at a block boundary: a frozen bottom, a trainable top.

Block K's boundary is the tensor that enters MBConv block K (the output of
block K-1, or of the stem for K = 0). The bottom (stem and blocks < K) runs
once per image to make the cached activations; the top (blocks >= K, the
head conv, the global average pool and the classifier) is what fine-tuning
trains:

  bottom: images float32 [batch, S, S, 3] in [0, 1]
          -> activations float32 [batch, h, w, c] (`boundary_shape`)
  top:    activations -> logits float32 [batch, N], columns in label order

Batch norm is frozen by construction: it was folded into the convolutions
with its inference statistics (`efficientnet_lite.fold_weights`), so there
are no batch statistics to use or update, and an image's output never
depends on the other images of its batch. Training moves the folded
kernels and biases, which is training the conv weights and the BN affine
parameters together.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from retrain.errors import DatasetError
from retrain.features import efficientnet_lite
from retrain.features import ensemble as ensemble_lib
from retrain.features.efficientnet_lite import FoldedWeights


def classify(network, features: tf.Tensor, training: bool,
             seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """The classifier every fine-tuned network ends in: float32 [b, D]
  pooled features -> [b, N] logits through network.final_weights [D, N]
  and final_biases [N], with dropout at network.dropout while training:
  stateless, drawn from `seed` (int64 [2]) when given, so that a run (and
  a resumed one) repeats exactly."""
  if training and network.dropout > 0:
    features = (tf.nn.dropout(features, rate=network.dropout) if seed is None
                else tf.nn.experimental.stateless_dropout(
                    features, rate=network.dropout, seed=seed))
  return tf.matmul(features, network.final_weights) + network.final_biases


def check_boundary(block: int, blocks: List[efficientnet_lite.BlockSpec],
                   title: str) -> int:
  """The block to cut at: `block`, or for a negative -K the first of the
  last K blocks (-1: the last block; -2: the last two).

  Raises:
    DatasetError: naming the value and the accepted range.
  """
  if -len(blocks) <= block < 0:
    return len(blocks) + block
  if not 0 <= block <= len(blocks):
    raise DatasetError(
        f'fine_tune_from={block} is not a block of {title}, which has '
        f'blocks 0 to {len(blocks) - 1} ({len(blocks)} means only the head '
        f'conv; -1 to -{len(blocks)} count from the last block): pass one '
        'of those.',
        fields=('fine_tune_from',))
  return block


def boundary_shape(weights: FoldedWeights, block: int) -> Tuple[int, int, int]:
  """(h, w, c) of the activations entering `block` ('SAME' padding)."""
  size = weights.variant.input_size
  size = math.ceil(size / 2)  # the stem
  channels = efficientnet_lite.block_specs(weights.variant)[0].in_channels
  for b in weights.blocks[:block]:
    size = math.ceil(size / b.stride)
    channels = b.out_channels
  return size, size, channels


class LiteNetwork(tf.Module):
  """EfficientNet-Lite plus a softmax classifier, trainable from a block on.

  Args:
    weights: the folded module weights.
    block: the boundary K (0 <= K <= number of blocks).
    head_weights: float32 [1280, N], head_biases float32 [N]: the trained
      head the classifier starts from; None for a member of an
      `EnsembleNetwork`, which holds the classifier itself.
    dropout: rate on the pooled features in `logits(..., training=True)`.
  """

  def __init__(self, weights: FoldedWeights, block: int,
               head_weights: Optional[np.ndarray],
               head_biases: Optional[np.ndarray], dropout: float = 0.0):
    super().__init__(name='fine_tuned_efficientnet_lite')
    self.variant = weights.variant
    self.block = block
    self.input_size = weights.variant.input_size
    self.dropout = float(dropout)
    self._specs = list(weights.blocks)
    self.activation_shape = boundary_shape(weights, block)
    top = {'head'} | {f'block{i}/{part}' for i in range(block,
                                                         len(self._specs))
                      for part in ('expand', 'depthwise', 'project')}
    self.kernels, self.biases = {}, {}
    for name, (kernel, bias) in weights.convs.items():
      trainable = name in top
      self.kernels[name] = tf.Variable(kernel, trainable=trainable,
                                       name=f'{name}/kernel')
      self.biases[name] = tf.Variable(bias, trainable=trainable,
                                      name=f'{name}/bias')
    if head_weights is not None:
      self.final_weights = tf.Variable(head_weights, name='final_weights')
      self.final_biases = tf.Variable(head_biases, name='final_biases')

  @property
  def top_convs(self) -> List[tf.Variable]:
    """The top's kernels and biases (blocks from the cut, the head conv)."""
    names = sorted(n for n, v in self.kernels.items() if v.trainable)
    return [v for n in names for v in (self.kernels[n], self.biases[n])]

  @property
  def top_variables(self) -> List[tf.Variable]:
    """What fine-tuning trains: the top's kernels and biases, the head."""
    return self.top_convs + [self.final_weights, self.final_biases]

  def bottom(self, images: tf.Tensor) -> tf.Tensor:
    """float32 [b, S, S, 3] in [0, 1] -> float32 [b, h, w, c] at the cut."""
    x = efficientnet_lite.apply_conv(
        efficientnet_lite.normalize(images), 'stem', self.kernels['stem'],
        self.biases['stem'], stride=2)
    for i in range(self.block):
      x = efficientnet_lite.apply_block(x, i, self._specs[i], self.kernels,
                                        self.biases)
    return x

  def top_features(self, x: tf.Tensor) -> tf.Tensor:
    """Activations at the cut -> float32 [b, 1280] pooled features."""
    for i in range(self.block, len(self._specs)):
      x = efficientnet_lite.apply_block(x, i, self._specs[i], self.kernels,
                                        self.biases)
    x = efficientnet_lite.apply_conv(x, 'head', self.kernels['head'],
                                     self.biases['head'])
    return tf.reduce_mean(x, axis=[1, 2])

  def logits(self, x: tf.Tensor, training: bool = False,
             seed: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Activations at the cut (any float dtype) -> float32 [b, N] logits
    (seed: of the dropout while training, see `classify`)."""
    return classify(self, self.pooled(x), training, seed)

  def pooled(self, x: tf.Tensor) -> tf.Tensor:
    """Activations at the cut (any float dtype) -> float32 [b, 1280]."""
    return self.top_features(tf.cast(x, tf.float32))

  def features(self, images: tf.Tensor) -> tf.Tensor:
    """The whole fine-tuned feature extractor: images -> float32 [b, 1280]."""
    return self.top_features(self.bottom(images))


class FixedMember(tf.Module):
  """An ensemble member whose features are not fine-tuned: while training,
  its input is its bottleneck vectors (float32 [b, D], what the frozen head
  trained on), passed through unchanged; the export runs the whole,
  unchanged network on images. Costs no training step time.

  Args:
    weights: the folded module weights.
  """

  def __init__(self, weights: FoldedWeights):
    super().__init__(name='fixed_efficientnet_lite')
    self.network = LiteNetwork(weights, len(weights.blocks), None, None)
    self.variant = weights.variant
    self.block = None
    self.input_size = weights.variant.input_size
    self.activation_shape = (int(weights.convs['head'][0].shape[-1]),)

  @property
  def top_convs(self) -> List[tf.Variable]:
    return []

  def top_features(self, x: tf.Tensor) -> tf.Tensor:
    """Bottleneck vectors float32 [b, D] -> the same."""
    return x

  def features(self, images: tf.Tensor) -> tf.Tensor:
    """float32 [b, S, S, 3] in [0, 1] -> float32 [b, D], the module's own."""
    return self.network.features(images)


class EnsembleNetwork(tf.Module):
  """Several EfficientNet-Lite members, each trainable from its own cut,
  their pooled features side by side under one softmax classifier: the
  fine-tunable form of an ensemble of bundled modules
  (`retrain.features.ensemble`), member order as in --tfhub_module.

  `logits` and `pooled` take a tuple with one activation array per member
  (member i's float [b, h_i, w_i, c_i]); `features` takes images at the
  largest member's size and area-resizes them for the smaller members, as
  the frozen ensemble's export does.

  Args:
    members: per member a LiteNetwork built without a classifier, or a
      FixedMember (features not fine-tuned; its input is its vectors).
    head_weights: float32 [1280 * len(members), N], head_biases [N].
    dropout: rate on the concatenated pooled features while training.
  """

  def __init__(self, members: Sequence[LiteNetwork], head_weights: np.ndarray,
               head_biases: np.ndarray, dropout: float = 0.0):
    super().__init__(name='fine_tuned_ensemble')
    self.members = list(members)
    self.dropout = float(dropout)
    self._sizes = [(m.input_size, m.input_size) for m in self.members]
    self.input_size = max(self._sizes)
    self.final_weights = tf.Variable(head_weights, name='final_weights')
    self.final_biases = tf.Variable(head_biases, name='final_biases')

  @property
  def top_variables(self) -> List[tf.Variable]:
    """Every member's top kernels and biases, then the classifier."""
    return ([v for m in self.members for v in m.top_convs] +
            [self.final_weights, self.final_biases])

  def pooled(self, xs) -> tf.Tensor:
    """Per-member activations -> float32 [b, 1280 * members]."""
    return tf.concat([m.top_features(tf.cast(x, tf.float32))
                      for m, x in zip(self.members, xs, strict=True)], axis=1)

  def logits(self, xs, training: bool = False,
             seed: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Per-member activations -> float32 [b, N] logits."""
    return classify(self, self.pooled(xs), training, seed)

  def features(self, images: tf.Tensor) -> tf.Tensor:
    """float32 [b, S, S, 3] in [0, 1] at the largest member's size ->
    float32 [b, 1280 * members]."""
    return ensemble_lib.concatenated([m.features for m in self.members],
                                     self._sizes, self.input_size, images)
