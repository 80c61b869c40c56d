"""The int8 feature model as a TensorFlow graph, for the exports.

A run with int8 bottlenecks trains its head on the vectors of each int8
member's full-integer TFLite model (retrain/features/int8.py). So that
every export serves those very features, `Int8Graph` reads that model's
flatbuffer and redoes its arithmetic with TensorFlow ops:

* an int8 tensor is carried as float32 holding its integers minus its
  zero point (q - z): sums of products of such values are exact integers
  in float32 (below 2^24), and zero padding means padding with z, as the
  TFLite kernels pad;
* weights and int32 biases are float32 holding their integer values
  (exact: int8 and biases below 2^24), so every converter takes them as
  it takes a float model's: filters as variables, biases (a few
  thousand numbers) as constants of the graph (a variable costs the
  SavedModel's writer time per capture and checkpoint entry, a constant
  a copy of its values per function that holds it);
* each op's result is requantised as XNNPACK's int8 kernels (the
  runtime that made the cached vectors) do: the integer accumulator times
  the effective scale (input scale x weight scale of the channel / output
  scale, in float32), rounded to nearest (ties to even; ADD and SUB round
  ties up, as their fixed-point kernels), plus the output zero point,
  clamped to [-128, 127] and to the fused activation's range.

On the bundled EfficientNet-Lite0/1/2 int8 models the graph gives the
interpreter's vectors bit for bit (bench/int8_export.py; TFLite's
reference kernels without XNNPACK round in fixed point and differ by a
step here and there). Exports hold only builtin ops (conv, depthwise conv,
round, floor, clip, mean), so frozen graph, TFLite (also quantised),
ONNX and MediaPipe conversions carry it as well.

Ops translated: QUANTIZE, DEQUANTIZE, CONV_2D, DEPTHWISE_CONV_2D, ADD,
SUB, MUL, MEAN, AVERAGE_POOL_2D, PAD, RESHAPE, CONCATENATION (fused NONE,
RELU, RELU6, RELU_N1_TO_1); any other op raises Untranslatable, and the
export falls back to the float module for that member (export_module).
Each model's translation is also run against its int8 interpreter, once
per model (retrain/export/int8_check.py, recorded in the module cache); one
that gives other vectors falls back the same way.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.export import int8_check
from retrain.features import ensemble as ensemble_lib
from retrain.features import int8
from retrain.features import modules as features
from retrain.features.modules import FeatureModule


class Untranslatable(ValueError):
  """The int8 model holds something Int8Graph cannot reproduce."""


# TensorType codes of the schema.
_FLOAT32, _INT32, _INT64, _INT8 = 0, 2, 4, 9
# Padding codes; fused activations as (real low, real high) bounds.
_SAME = 0
_ACTIVATIONS = {0: (None, None), 1: (0.0, None), 2: (-1.0, 1.0),
                3: (0.0, 6.0)}


class _Plain:
  """Holds an object out of tf.Module's attribute tracking."""

  def __init__(self, value):
    self.value = value

  def __getattr__(self, name):
    return getattr(self.value, name)


@dataclasses.dataclass(frozen=True)
class _Quant:
  """A tensor's quantisation: scale float64 [C] (or [1]) and zero point
  int64 [C] (or [1]); per-channel values run along the weights' output
  channels, the last axis once in TensorFlow's layout."""
  scale: np.ndarray
  zero: np.ndarray


class Int8Graph(tf.Module):
  """float32 [batch, H, W, 3] in [0, 1] -> float32 [batch, D]: the int8
  TFLite model at `path` computed with TensorFlow ops (module doc).

  Raises:
    Untranslatable: an op, type or option outside the list above.
  """

  def __init__(self, path: str, input_size: Tuple[int, int]):
    super().__init__(name='int8_features')
    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model(path)
    if len(model.subgraphs) != 1:
      raise Untranslatable(f'{path} has {len(model.subgraphs)} subgraphs')
    # Plain attributes hidden from tf.Module's tracking (not variables).
    self._model = _Plain(model)
    self._graph = _Plain(model.subgraphs[0])
    names = int8.op_names()
    ops = []
    for op in self._graph.operators:
      code = model.operatorCodes[op.opcodeIndex]
      name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), '?')
      if name not in _TRANSLATORS:
        raise Untranslatable(f'op {name} is not translated')
      if _activation(op) not in _ACTIVATIONS:
        raise Untranslatable(f'op {name} has fused activation '
                             f'{_activation(op)}, which is not translated')
      ops.append((name, op))
    self._ops = _Plain(ops)
    self._check_types()
    # Variables made now: a tf.function may not create them when traced.
    self._weights = {}
    # Weights held as graph constants: tensor index -> layout (or None).
    self._constant_weights = _Plain({})
    # The float32 constants of the graph being traced, one node per value
    # (const); empty between traces.
    self._made = _Plain({})
    for name, op in ops:
      if name in _WEIGHT_LAYOUTS:
        self._make_weight(op.inputs[1], lambda a, op=op, name=name:
                          _WEIGHT_LAYOUTS[name](self, op, a),
                          variable=True)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
          self._make_weight(op.inputs[2], None, variable=False)
    self.input_size = tuple(input_size)
    # The int8 model's file, for the int8 TFLite export
    # (retrain.export.int8_tflite), which holds it as it is.
    self.path = path
    height, width = self.input_size
    # Plain Python over the model's ops, traced as it is (AutoGraph would
    # convert every translator call and gain nothing). Kept out of
    # tf.Module's tracking: a SavedModel holding this graph holds its ops
    # in the functions that call it (__call__), not as a function of its
    # own that the writer would trace once more.
    self._call = _Plain(tf.function(
        self._run, autograph=False,
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)]))

  def __call__(self, images):
    """float32 [batch, H, W, 3] in [0, 1] -> float32 [batch, D]. Inside
    a function being traced (the exports' classifier), the ops go into
    that function's graph itself: a nested function would have each
    variable captured once more per level of nesting and its graph copied
    into every function that calls it."""
    if tf.inside_function():
      return self._run(images)
    return self._call.value(images)

  def _check_types(self) -> None:
    for index in self._constants():
      tensor = self._graph.tensors[index]
      if tensor.type not in (_INT8, _INT32, _INT64, _FLOAT32):
        raise Untranslatable(f'tensor {self.name_of(index)!r} has type '
                             f'{tensor.type}')
    for index in (*self._graph.inputs, *self._graph.outputs):
      if self._graph.tensors[index].type != _FLOAT32:
        raise Untranslatable('its input and output are not float32')

  def _constants(self) -> List[int]:
    """The tensors that hold a value (without decoding it)."""
    return [i for i in range(len(self._graph.tensors))
            if self._buffer(i) is not None]

  def _buffer(self, index: int):
    """The bytes of tensor `index`'s value (uint8 array), or None."""
    data = self._model.buffers[self._graph.tensors[index].buffer].data
    return None if data is None or not len(data) else data

  def _data(self, index: int) -> Optional[np.ndarray]:
    """The constant value of tensor `index` (its own dtype), or None."""
    tensor = self._graph.tensors[index]
    data = self._buffer(index)
    if data is None:
      return None
    dtype = {_INT8: np.int8, _INT32: np.int32, _INT64: np.int64,
             _FLOAT32: np.float32}[tensor.type]
    shape = [int(s) for s in tensor.shape] if tensor.shape is not None else []
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(),
                         dtype).reshape(shape)

  def quant(self, index: int) -> _Quant:
    q = self._graph.tensors[index].quantization
    if q is None or q.scale is None or not len(q.scale):
      raise Untranslatable(
          f'tensor {self.name_of(index)!r} is not quantised')
    zero = (np.zeros(len(q.scale), np.int64) if q.zeroPoint is None
            else np.asarray(q.zeroPoint, np.int64))
    return _Quant(np.asarray(q.scale, np.float64), zero)

  def name_of(self, index: int) -> str:
    name = self._graph.tensors[index].name
    return name.decode('utf-8', 'replace') if isinstance(name, bytes) else name

  def is_int8(self, index: int) -> bool:
    return self._graph.tensors[index].type == _INT8

  def output_shape(self, index: int) -> List[int]:
    tensor = self._graph.tensors[index]
    return [int(s) for s in tensor.shape]

  def _make_weight(self, index: int, layout, variable: bool) -> None:
    """Holds constant tensor `index` (conv weights, int32 biases) as
    float32 of its integer values: a variable, or (not `variable`) a
    constant made when the graph is traced; `layout(raw)` reorders it for
    TensorFlow. float32, not int8 with a cast in the graph: the TFLite
    converter's int8 quantisation cannot take a convolution whose weights
    are computed (a cast), and float weights convert like any model's."""
    raw = self._data(index)
    if raw is None:
      raise Untranslatable(f'weights {self.name_of(index)!r} '
                           'are not constant')
    if raw.dtype == np.int8 and np.any(self.quant(index).zero):
      raise Untranslatable(f'weights {self.name_of(index)!r} '
                           'have a non-zero zero point')
    if not variable:
      self._constant_weights.value[index] = layout
      return
    if layout is not None:
      raw = layout(raw)
    self._weights[f't{index}'] = tf.Variable(
        raw.astype(np.float32), trainable=False, name=f'int8_t{index}')

  def weight(self, index: int) -> tf.Tensor:
    """float32 weights of tensor `index` (made by _make_weight)."""
    if index not in self._constant_weights.value:
      return self._weights[f't{index}']
    raw, layout = self._data(index), self._constant_weights.value[index]
    return self.const(raw if layout is None else layout(raw))

  def const(self, value) -> tf.Tensor:
    """`value` as a float32 constant of the graph being traced; a value
    met before in this trace gives the node made then (the multipliers
    and bounds of the requantisations repeat)."""
    array = np.asarray(value, np.float32)
    key = (array.shape, array.tobytes())
    if key not in self._made.value:
      self._made.value[key] = tf.constant(array)
    return self._made.value[key]

  def constant(self, index: int):
    """A small constant (axes, shapes) as numpy."""
    return self._data(index)

  def value(self, values: dict, index: int) -> tf.Tensor:
    """The centred value of tensor `index`: computed, or a constant."""
    if index in values:
      return values[index]
    data = self._data(index)
    if data is None:
      raise Untranslatable(f'tensor {self.name_of(index)!r} '
                           'is used before it is computed')
    if self.is_int8(index):
      q = self.quant(index)
      data = data.astype(np.int64) - (q.zero[0] if len(q.zero) == 1 else
                                      q.zero)
    return self.const(data)

  def _run(self, images):
    values = {self._graph.inputs[0]: images}
    try:
      for name, op in self._ops.value:
        out = _TRANSLATORS[name](self, op, values)
        values[op.outputs[0]] = out
    finally:
      self._made.value = {}
    return values[self._graph.outputs[0]]


def activation_bounds(graph: Int8Graph, index: int, activation: int
                      ) -> Tuple[float, float]:
  """The centred (q - z) range of output tensor `index` under a fused
  activation: [-128, 127] cut to the activation's real range."""
  if activation not in _ACTIVATIONS:
    raise Untranslatable(f'fused activation {activation} is not translated')
  q = graph.quant(index)
  scale, zero = float(q.scale[0]), int(q.zero[0])
  low, high = -128 - zero, 127 - zero
  real_low, real_high = _ACTIVATIONS[activation]
  if real_low is not None:
    low = max(low, int(np.round(real_low / scale)))
  if real_high is not None:
    high = min(high, int(np.round(real_high / scale)))
  return float(low), float(high)


def requantise(graph: Int8Graph, accumulator, multiplier, index: int,
               activation: int = 0, half_up: bool = False) -> tf.Tensor:
  """The centred int8 output tensor `index`: round(accumulator x
  multiplier) clamped to its range (activation_bounds); multiplier a
  float or float64 [C] along the last axis. Ties go to even, or up with
  `half_up` (the add kernels' fixed-point rounding)."""
  low, high = activation_bounds(graph, index, activation)
  scaled = accumulator * graph.const(multiplier)
  rounded = (tf.floor(scaled + graph.const(0.5)) if half_up
             else tf.round(scaled))
  return tf.clip_by_value(rounded, graph.const(low), graph.const(high))


def _activation(op) -> int:
  options = op.builtinOptions
  return int(getattr(options, 'fusedActivationFunction', 0) or 0)


def _quantize(graph: Int8Graph, op, values):
  source, out = op.inputs[0], op.outputs[0]
  x = graph.value(values, source)
  q = graph.quant(out)
  if graph.is_int8(source):  # int8 -> int8 rescale
    return requantise(graph, x, graph.quant(source).scale[0] / q.scale[0],
                      out)
  if not graph.is_int8(out):
    raise Untranslatable('QUANTIZE to a type other than int8')
  return requantise(graph, x, 1.0 / q.scale[0], out)


def _dequantize(graph: Int8Graph, op, values):
  x = graph.value(values, op.inputs[0])
  return x * graph.const(graph.quant(op.inputs[0]).scale[0])


def _padding(options) -> str:
  return 'SAME' if options.padding == _SAME else 'VALID'


def _conv(graph: Int8Graph, op, values):
  x = graph.value(values, op.inputs[0])
  o = op.builtinOptions
  w = graph.weight(op.inputs[1])
  acc = tf.nn.conv2d(x, w, [1, o.strideH, o.strideW, 1], _padding(o),
                     dilations=[1, o.dilationHFactor, o.dilationWFactor, 1])
  return _bias_requantise(graph, op, acc)


def _depthwise(graph: Int8Graph, op, values):
  x = graph.value(values, op.inputs[0])
  o = op.builtinOptions
  w = graph.weight(op.inputs[1])
  dilations = [o.dilationHFactor, o.dilationWFactor]
  acc = tf.nn.depthwise_conv2d(x, w, [1, o.strideH, o.strideW, 1],
                               _padding(o), dilations=dilations)
  return _bias_requantise(graph, op, acc)


def _bias_requantise(graph: Int8Graph, op, acc):
  """A convolution's accumulator plus its int32 bias, requantised with
  the per-channel effective scale."""
  if len(op.inputs) > 2 and op.inputs[2] >= 0:
    acc = acc + graph.weight(op.inputs[2])
  out = op.outputs[0]
  # In float32 arithmetic, as XNNPACK's kernels compute it.
  scale_in = np.float32(graph.quant(op.inputs[0]).scale[0])
  scale_w = graph.quant(op.inputs[1]).scale.astype(np.float32)
  multiplier = scale_in * scale_w / np.float32(graph.quant(out).scale[0])
  return requantise(graph, acc, multiplier, out, _activation(op))


def _add_or_sub(sign: float):
  def translate(graph: Int8Graph, op, values):
    a, b = (graph.value(values, i) for i in op.inputs[:2])
    sa, sb = (graph.quant(i).scale[0] for i in op.inputs[:2])
    so = graph.quant(op.outputs[0]).scale[0]
    # b x (sb / so) added or subtracted: the same float32 as adding
    # (sign x b) x (sb / so), sign being +-1.
    real_a, real_b = a * graph.const(sa / so), b * graph.const(sb / so)
    real = real_a + real_b if sign > 0 else real_a - real_b
    return requantise(graph, real, 1.0, op.outputs[0], _activation(op),
                      half_up=True)
  return translate


def _mul(graph: Int8Graph, op, values):
  a, b = (graph.value(values, i) for i in op.inputs[:2])
  sa, sb = (graph.quant(i).scale[0] for i in op.inputs[:2])
  so = graph.quant(op.outputs[0]).scale[0]
  return requantise(graph, a * b, sa * sb / so, op.outputs[0],
                    _activation(op))


def _mean(graph: Int8Graph, op, values):
  x = graph.value(values, op.inputs[0])
  axes = [int(a) for a in np.atleast_1d(graph.constant(op.inputs[1]))]
  keep = bool(getattr(op.builtinOptions, 'keepDims', False))
  mean = tf.reduce_mean(x, axis=axes, keepdims=keep)
  ratio = graph.quant(op.inputs[0]).scale[0] / graph.quant(
      op.outputs[0]).scale[0]
  return requantise(graph, mean, ratio, op.outputs[0])


def _average_pool(graph: Int8Graph, op, values):
  x = graph.value(values, op.inputs[0])
  o = op.builtinOptions
  pooled = tf.nn.avg_pool2d(x, [o.filterHeight, o.filterWidth],
                            [o.strideH, o.strideW], _padding(o))
  ratio = graph.quant(op.inputs[0]).scale[0] / graph.quant(
      op.outputs[0]).scale[0]
  return requantise(graph, pooled, ratio, op.outputs[0], _activation(op))


def _pad(graph: Int8Graph, op, values):
  x = graph.value(values, op.inputs[0])
  return tf.pad(x, graph.constant(op.inputs[1]).astype(np.int32))


def _reshape(graph: Int8Graph, op, values):
  x = graph.value(values, op.inputs[0])
  return tf.reshape(x, [-1] + graph.output_shape(op.outputs[0])[1:])


def _concatenation(graph: Int8Graph, op, values):
  out = op.outputs[0]
  so = graph.quant(out).scale[0]
  parts = []
  for index in op.inputs:
    x = graph.value(values, index)
    ratio = graph.quant(index).scale[0] / so
    parts.append(x if ratio == 1.0 else requantise(graph, x, ratio, out))
  joined = tf.concat(parts, axis=op.builtinOptions.axis)
  low, high = activation_bounds(graph, out, _activation(op))
  return tf.clip_by_value(joined, graph.const(low), graph.const(high))


# How conv weights are reordered for TensorFlow: TFLite's CONV_2D [O, kh,
# kw, I] -> [kh, kw, I, O]; DEPTHWISE_CONV_2D [1, kh, kw, I * M] -> [kh, kw,
# I, M] (channel i * M + m in both).
_WEIGHT_LAYOUTS = {
    'CONV_2D': lambda graph, op, a: np.transpose(a, (1, 2, 3, 0)),
    'DEPTHWISE_CONV_2D': lambda graph, op, a: a.reshape(
        a.shape[1], a.shape[2], graph.output_shape(op.inputs[0])[-1], -1),
}

_TRANSLATORS = {
    'QUANTIZE': _quantize, 'DEQUANTIZE': _dequantize, 'CONV_2D': _conv,
    'DEPTHWISE_CONV_2D': _depthwise, 'ADD': _add_or_sub(1.0),
    'SUB': _add_or_sub(-1.0), 'MUL': _mul, 'MEAN': _mean,
    'AVERAGE_POOL_2D': _average_pool, 'PAD': _pad, 'RESHAPE': _reshape,
    'CONCATENATION': _concatenation,
}


def export_module(module: FeatureModule, float_module: FeatureModule,
                  cache_dir: Optional[str] = None
                  ) -> Tuple[FeatureModule, Optional[FeatureModule]]:
  """(the module the exports hold, the module whose vectors they compute
  when that differs from `module`'s).

  Each int8 member's `obj` becomes its Int8Graph, so the exports compute
  the vectors the head was trained on. A member whose int8 model cannot
  be translated exports its float module (one warning line); the second
  value is then `module` with those members float (its vectors are what
  the exports compute, for precision_lib.check_float_exports), else None.

  Args:
    module: the run's module (members at their chosen precision).
    float_module: the same module all in float (prepare's float_module).
    cache_dir: the module cache (where the int8 models are).
  """
  members = ensemble_lib.members(module)
  if not any(m.quantization for m in members):
    return module, None
  exported, served, fell_back = [], [], False
  for member, float_member in zip(members, ensemble_lib.members(float_module),
                                  strict=True):
    if not member.quantization:
      exported.append(member)
      served.append(member)
      continue
    try:
      graph = _checked_graph(int8.int8_file(member, cache_dir),
                             tuple(member.input_size))
    except (Untranslatable, OSError, ValueError) as e:
      logging.warning(
          'The exports compute float features for %s: its int8 model cannot '
          'be written as TensorFlow ops (%s); their accuracy on the held-out '
          'photos is measured below.', member.handle, e)
      exported.append(float_member)
      served.append(float_member)
      fell_back = True
      continue
    exported.append(features.derive(member, obj=graph))
    served.append(member)
  if len(members) == 1:
    return exported[0], (served[0] if fell_back else None)
  exported = tuple(exported)
  return (features.derive(module, members=exported,
                          obj=ensemble_lib.Ensemble(exported)),
          ensemble_lib.with_members(module, served) if fell_back else None)


def _checked_graph(path: str, input_size: Tuple[int, int]) -> Int8Graph:
  """Int8Graph of the int8 model at `path`, its translation checked
  against the model (int8_check: once per model) and the check kept in
  its `translation_check` (a dict, in a _Plain).

  Raises:
    Untranslatable: the translation does not give the model's vectors.
  """
  graph = Int8Graph(path, input_size)
  check = int8_check.translation_check(graph, path, input_size)
  if not check['matches']:
    raise Untranslatable(
        f'on {check["probe_images"]} fixed probe images its TensorFlow ops '
        f'and its int8 model give other vectors: {int8_check.describe(check)}'
        f', more than {int8_check.MAX_OUTPUT_STEPS:g} '
        f'(see {int8_check.record_path(path)})')
  graph.translation_check = _Plain(check)
  return graph


def translation_checks(module: FeatureModule) -> List[dict]:
  """The translation check (int8_check.translation_check, with the
  member's 'handle') of each member of `module` exported as an Int8Graph,
  in member order; [] when there is none."""
  return [{'handle': m.handle, **m.obj.translation_check.value}
          for m in ensemble_lib.members(module)
          if hasattr(m.obj, 'translation_check')]
