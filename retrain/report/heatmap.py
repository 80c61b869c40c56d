"""Heat maps for a trained run: which method fits its feature module.

* Every member run as its int8 copy (retrain.features.int8, the default
  on CPUs where it is faster), not fine-tuned, each ending in a global
  average pooling: Grad-CAM on what that pooling averages (the head
  convolution's output of an EfficientNet-Lite), as the int8 model
  computes it, so the map is of the features the head trained on; a
  TFLite interpreter runs the model with that tensor as its output
  (int8.activations_model), in about half the float networks' time
  (bench/heat_maps.py).
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


def _int8_member(member, ensemble_size):
  """(conv, pool) of a member run as its int8 model (see the module
  docstring): conv runs the model up to its global average pooling on the
  ensemble's images, resized to the member's size as the ensemble does,
  and returns that tensor dequantised, float32 [b, h, w, C]; the
  interpreter (one thread: the export runs beside the heat maps) opens
  on the first call. Raises ValueError when the model does not end in a
  global average pooling."""
  import tensorflow as tf

  from retrain.features import int8 as int8_lib
  from retrain.features import tflite_runner
  model = int8_lib.activations_model(int8_lib.model_path(member))
  size = tuple(member.input_size)
  runner = []

  def conv(images):
    if size != tuple(ensemble_size):
      images = ensemble_lib.area_resize(images, tuple(ensemble_size), size)
    if not runner:
      runner.append(tflite_runner.TFLiteRunner(
          tflite_runner.open_interpreter(model_content=model, num_threads=1),
          None, size))
    return tf.constant(runner[0].run(np.asarray(images, np.float32))[0])

  def pool(activations):
    return tf.reduce_mean(activations, axis=[1, 2])

  return conv, pool


def _int8_members(members, size):
  """[(conv, pool)] of _int8_member for every member, or None when some
  member is not an int8 copy or does not end in a global average
  pooling."""
  from retrain.features import int8 as int8_lib
  if not all(int8_lib.model_path(m) for m in members):
    return None
  try:
    return [_int8_member(m, size) for m in members]
  except ValueError:
    return None


def _bundled(member) -> bool:
  preset = presets.PRESETS.get(member.handle)
  return bool(preset is not None and preset.bundled)


def explainer(module, head: Head, fine_tuned: bool = False,
              occlusion_module=None) -> Explainer:
  """The heat-map method for `module` (a FeatureModule or EnsembleModule)
  followed by `head`; see the module docstring.

  Args:
    module: the run's feature module (after fine-tuning, the fine-tuned one).
    head: its head: weights float32 [D, N], biases [N].
    fine_tuned: True when the module's weights were fine-tuned (then the
      bundled weights no longer describe it, and occlusion is used).
    occlusion_module: what occlusion runs the images through (default
      `module`; the same vectors, e.g. a few images at a time).
  """
  members = ensemble_lib.members(module)
  size = tuple(module.input_size)
  int8_pairs = None if fine_tuned else _int8_members(members, size)
  if int8_pairs or not fine_tuned and all(_bundled(m) for m in members):
    pairs = int8_pairs or [_lite_member(m, size) for m in members]
    combined = ('' if len(members) == 1 else
                f' The {len(members)} members\' maps are resized to '
                f'{size[0]}x{size[1]} and added, each in units of its '
                'contribution to the class score, so a member weighs as '
                'much as it moves the prediction.')
    names = ', '.join(m.handle for m in members)
    if int8_pairs:
      one = len(members) == 1
      on = (f'what the int8 model{"" if one else "s"} of {names} '
            f'average{"s" if one else ""} into {"its" if one else "their"} '
            'features (in an EfficientNet-Lite, the head convolution\'s '
            'output)')
    else:
      on = f'the last convolution (the head conv) of {names}'
    return Explainer(
        explain.GRAD_CAM,
        f'Grad-CAM on {on}: red marks where the features that raised the '
        'predicted class were found.' + combined,
        lambda images, classes: explain.grad_cam(
            images, pairs, head.weights, head.biases, classes), size)

  occluded = occlusion_module or module

  def probabilities(images):
    features = np.asarray(occluded.call(images), np.float32)
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
