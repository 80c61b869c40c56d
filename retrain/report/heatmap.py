"""Heat maps for a trained run: which method fits its feature module.

* Every member a bundled EfficientNet-Lite (the default ensemble
  included), not fine-tuned: Grad-CAM on the head convolution of each
  member (retrain.predict.explain.grad_cam), the members' maps resized to
  the ensemble's input size and added in logit units. The network is
  rebuilt from the module's own variables, read from its SavedModel's
  checkpoint (the converter names them by layer; the SavedModel is not
  loaded), so its pooled activations are the module's feature vectors.
* Anything else (a TF-Hub or local module, whose convolutions the loaded
  SavedModel does not expose; a fine-tuned network): occlusion through
  the module and the head (explain.occlusion).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import numpy as np

from retrain.features import ensemble as ensemble_lib
from retrain.features import modules as features
from retrain.features import presets
from retrain.head.model import Head
from retrain.predict import explain


@dataclasses.dataclass
class Explainer:
  """Heat maps of one classifier.

  Attributes:
    method: explain.GRAD_CAM or explain.OCCLUSION.
    description: one sentence for the page: what the maps show and, for an
      ensemble, how the members' maps are combined.
    maps: (images float32 [b, H, W, 3] in [0, 1], classes int [b]) ->
      float32 [b, H, W] in [0, 1].
    input_size: (H, W) the images are decoded at.
    seconds_per_image: the mean time of the last `maps` call per image
      (0 before the first call).
  """
  method: str
  description: str
  maps: Callable[[np.ndarray, Sequence[int]], np.ndarray]
  input_size: tuple
  seconds_per_image: float = 0.0

  def __call__(self, images: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    started = time.monotonic()
    result = self.maps(images, classes)
    self.seconds_per_image = (time.monotonic() - started) / max(1, len(images))
    return result


def _lite_member(member, ensemble_size):
  """(conv, pool) of a bundled EfficientNet-Lite member, run on the
  member's own saved variables (named '<layer>/kernel', '<layer>/bias' by
  the converter): conv is the network up to its head convolution (after
  ReLU6), the tensor the module's feature vector averages; it resizes the
  ensemble's images to the member's size as the ensemble does."""
  import tensorflow as tf

  from retrain.features import efficientnet_lite
  blocks = efficientnet_lite.block_specs(efficientnet_lite.get_variant(
      presets.PRESETS[member.handle].name))
  found = {name: tf.constant(value) for name, value in
           features.saved_variables(member.path).items()}
  kernels = {name[:-len('/kernel')]: v for name, v in found.items()
             if name.endswith('/kernel')}
  biases = {name[:-len('/bias')]: v for name, v in found.items()
            if name.endswith('/bias')}
  size = tuple(member.input_size)

  # Eager: for the page's few photos, tracing a tf.function costs more
  # than it saves (Lite2, 17 photos: 2.1 s traced, 2.0 s eager).
  def conv(images):
    if size != tuple(ensemble_size):
      images = ensemble_lib.area_resize(images, tuple(ensemble_size), size)
    x = efficientnet_lite.apply_conv(efficientnet_lite.normalize(images), 'stem', kernels['stem'],
                        biases['stem'], stride=2)
    for i, b in enumerate(blocks):
      x = efficientnet_lite.apply_block(x, i, b, kernels, biases)
    return efficientnet_lite.apply_conv(x, 'head', kernels['head'], biases['head'])

  def pool(activations):
    return tf.reduce_mean(activations, axis=[1, 2])

  return conv, pool


def _bundled(member) -> bool:
  preset = presets.PRESETS.get(member.handle)
  return bool(preset is not None and preset.bundled)


def explainer(module, head: Head, fine_tuned: bool = False) -> Explainer:
  """The heat-map method for `module` (a FeatureModule or EnsembleModule)
  followed by `head`; see the module docstring.

  Args:
    module: the run's feature module (after fine-tuning, the fine-tuned one).
    head: its head: weights float32 [D, N], biases [N].
    fine_tuned: True when the module's weights were fine-tuned (then the
      bundled weights no longer describe it, and occlusion is used).
  """
  members = ensemble_lib.members(module)
  size = tuple(module.input_size)
  if not fine_tuned and all(_bundled(m) for m in members):
    pairs = [_lite_member(m, size) for m in members]
    combined = ('' if len(members) == 1 else
                f' The {len(members)} members\' maps are resized to '
                f'{size[0]}x{size[1]} and added, each in units of its '
                'contribution to the class score, so a member weighs as '
                'much as it moves the prediction.')
    return Explainer(
        explain.GRAD_CAM,
        'Grad-CAM on the last convolution (the head conv) of '
        f'{", ".join(m.handle for m in members)}: red marks where the '
        'features that raised the predicted class were found.' + combined,
        lambda images, classes: explain.grad_cam(
            images, pairs, head.weights, head.biases, classes), size)

  def probabilities(images):
    features = np.asarray(module.call(images), np.float32)
    return head.probabilities(features)

  why = ('the network is fine-tuned' if fine_tuned else
         'the module\'s convolutions are not reachable')
  return Explainer(
      explain.OCCLUSION,
      f'Occlusion ({why}): a grey square hides each of '
      f'{explain.OCCLUSION_GRID}x{explain.OCCLUSION_GRID} places in turn; '
      'red marks where hiding the photo lowers the predicted class\'s '
      'probability most.',
      lambda images, classes: explain.occlusion(images, probabilities,
                                                classes), size)


def export_explainer(predict: Callable[[np.ndarray], np.ndarray],
                     input_size, kind: Optional[str] = None) -> Explainer:
  """Occlusion through an export's predict (images float32 [b, H, W, 3]
  -> probabilities [b, N]): what a SavedModel, frozen graph, TFLite or
  ONNX file allows from outside."""
  return Explainer(
      explain.OCCLUSION,
      f'Occlusion through the {kind or "exported"} model: a grey square '
      f'hides each of {explain.OCCLUSION_GRID}x{explain.OCCLUSION_GRID} '
      'places in turn; red marks where hiding the photo lowers the '
      'predicted class\'s probability most.',
      lambda images, classes: explain.occlusion(images, predict, classes),
      tuple(input_size))
