"""The classifier as an ONNX model (`--onnx_output_file`), for ONNX Runtime.

Same function as the SavedModel's `serving_default`: input `images`
float32 [batch, H, W, 3] in [0, 1] (decoded RGB, resized as
`retrain.images` does) -> output `probabilities` float32 [batch, N],
column j is class id j.

The model describes itself in its `metadata_props` (string key -> value),
read with `onnxruntime.InferenceSession(...).get_modelmeta()
.custom_metadata_map` or `onnx.load(...).metadata_props`:
  labels               JSON list, entry j is class id j
  input_height, input_width, input_value_range ("[0.0, 1.0]")
  preprocessing        how images become the input (see saved_model.py)
  retrain_metadata     the full JSON metadata (module, calibration,
                       rejection threshold, ...), as the SavedModel's
                       retrain_metadata.json

Converter: tf2onnx (optional extra `pip install retrain[onnx]`), from the
same tf.function the SavedModel serves (`onnx_model`), or, in a run, from
the float TFLite model converted from the written SavedModel
(`onnx_from_tflite`, less memory; retrain.export.from_disk); tf2onnx 1.17
converts the bundled EfficientNet-Lite modules under TF 2.21 and ONNX
Runtime matches TensorFlow to 1e-6 either way.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
from typing import Sequence

from retrain.common import names, strict_json
from retrain.common.names import (
  IMAGES_INPUT,
  ONNX_LABELS_KEY,
  ONNX_METADATA_KEY,
  OUTPUT_TENSOR_NAME,
  PROBABILITIES_OUTPUT,
)
from retrain.errors import OutputError

# ONNX opset 17 runs in every ONNX Runtime since 1.13 (2022) and has every
# op these models need.
OPSET = 17


class OnnxUnavailable(ImportError):
  """tf2onnx (the converter) is not installed."""


def _tf2onnx():
  """The tf2onnx module; OnnxUnavailable when it is not installed."""
  try:
    import tf2onnx
  except ImportError as e:
    raise OnnxUnavailable('tf2onnx is not installed: pip install '
                          '"retrain[onnx]" (tf2onnx, onnx, onnxruntime) for '
                          '--onnx_output_file.') from e
  return tf2onnx


def onnx_model(module, head, labels: Sequence[str], metadata: dict,
               opset: int = OPSET) -> bytes:
  """The serialized ONNX ModelProto of module + head.

  Args:
    module: a retrain.features.modules.FeatureModule.
    head: a retrain.head.train.Head (weights [D, N], biases [N]).
    labels: N class names in class id order.
    metadata: JSON-ready metadata stored as `retrain_metadata`.

  Raises:
    OnnxUnavailable: tf2onnx is not installed.
    OutputError: the converter failed on this module (with its message).
  """
  tf2onnx = _tf2onnx()
  import tensorflow as tf

  from retrain.export import saved_model as export_lib
  classifier = export_lib.Classifier(module, head, OUTPUT_TENSOR_NAME)
  height, width = module.input_size
  try:
    with compacting_optimizers(), lean_freezing():
      proto, _ = tf2onnx.convert.from_function(
          classifier.classify,
          input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32,
                                         name=IMAGES_INPUT)],
          opset=opset)
  except Exception as e:
    raise OutputError(f'tf2onnx could not convert {module.handle!r} to ONNX '
                      f'({type(e).__name__}: {e}); leave --onnx_output_file '
                      'empty, or use the SavedModel or TFLite export.') from e
  return _described(proto, labels, metadata, (height, width))


def _described(proto, labels: Sequence[str], metadata: dict, input_size
               ) -> bytes:
  """The serialized `proto` with the metadata_props, producer and doc
  string every ONNX export has (see the module docstring)."""
  height, width = input_size
  props = {
      ONNX_LABELS_KEY: json.dumps(list(labels)),
      names.META_INPUT_HEIGHT: str(height),
      names.META_INPUT_WIDTH: str(width),
      names.META_INPUT_VALUE_RANGE: json.dumps(
          metadata.get(names.META_INPUT_VALUE_RANGE, [0.0, 1.0])),
      names.META_PREPROCESSING: str(
          metadata.get(names.META_PREPROCESSING, '')),
      ONNX_METADATA_KEY: strict_json.dumps(metadata),
  }
  del proto.metadata_props[:]
  for key, value in props.items():
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value
  proto.producer_name = 'retrain (tf2onnx)'
  proto.doc_string = ('retrain image classifier: images float32 [batch, H, '
                      'W, 3] in [0, 1] -> probabilities float32 [batch, N]; '
                      'labels in metadata_props')
  return proto.SerializeToString()


def onnx_from_tflite(path: str, labels: Sequence[str], metadata: dict,
                     input_size, opset: int = OPSET) -> bytes:
  """The serialized ONNX model of the float TFLite model at `path` (one
  input float32 [batch, H, W, 3], output 0 probabilities float32
  [batch, N], output 1, when there, novelty float32 [batch]; as
  retrain.export.tflite_format writes it), with the names and metadata of
  onnx_model: input `images`, outputs `novelty` (when there) and
  `probabilities`, in that order.

  tf2onnx reads the flatbuffer without building a TensorFlow graph: on the
  fine-tuned default ensemble, one fresh process each, 1.30 GB against
  1.75 GB from the SavedModel's function, the same predictions (within
  1e-6).

  Raises:
    OnnxUnavailable: tf2onnx is not installed.
    OutputError: the converter failed (with its message).
  """
  tf2onnx = _tf2onnx()
  try:
    with compacting_optimizers():
      proto, _ = tf2onnx.convert.from_tflite(path, opset=opset)
  except Exception as e:
    raise OutputError(f'tf2onnx could not convert the TFLite model {path!r} '
                      f'to ONNX ({type(e).__name__}: {e}); leave '
                      '--onnx_output_file empty, or use the SavedModel or '
                      'TFLite export.') from e
  graph = proto.graph
  renames = {graph.input[0].name: IMAGES_INPUT}
  outputs = list(graph.output)
  renames[outputs[0].name] = PROBABILITIES_OUTPUT
  if len(outputs) > 1:
    renames[outputs[1].name] = names.NOVELTY_OUTPUT
  _rename(graph, renames)
  outputs.sort(key=lambda o: o.name)
  del graph.output[:]
  graph.output.extend(outputs)
  return _described(proto, labels, metadata, input_size)


def _rename(graph, renames: dict) -> None:
  """Renames, in place, the values of `graph` {old name: new name}: its
  inputs, outputs and every node's use of them."""
  for value in list(graph.input) + list(graph.output) + list(
      graph.value_info):
    value.name = renames.get(value.name, value.name)
  for node in graph.node:
    for i, name in enumerate(node.input):
      node.input[i] = renames.get(name, name)
    for i, name in enumerate(node.output):
      node.output[i] = renames.get(name, name)


@contextlib.contextmanager
def lean_freezing():
  """While active, tf2onnx freezes the function without importing the frozen
  graph back as a new eager function; the graph it goes on with is the
  same.

  tf2onnx freezes with convert_variables_to_constants_v2, which ends by
  wrapping the frozen GraphDef as a new function registered in the eager
  context (every weight copied again, kept until a collection); tf2onnx
  only reads that function's graph. The same GraphDef imported into a
  plain tf.Graph serves it (see retrain.export.formats._freeze for the two
  steps called here). Without them in this TensorFlow release, nothing
  changes.
  """
  try:
    from tensorflow.python.framework import convert_to_constants
    from tf2onnx import tf_loader
    original = tf_loader.convert_variables_to_constants_v2
    steps = (convert_to_constants._FunctionConverterDataInEager,  # noqa: SLF001 TensorFlow has no public way to freeze a function
             convert_to_constants._replace_variables_by_constants)  # noqa: SLF001 TensorFlow has no public way to freeze a function
  except (ImportError, AttributeError):
    yield
    return
  tf_loader.convert_variables_to_constants_v2 = functools.partial(
      _frozen_graph_only, steps)
  try:
    yield
  finally:
    tf_loader.convert_variables_to_constants_v2 = original


class _FrozenGraph:
  """What tf2onnx reads of a frozen function: its `graph`."""

  def __init__(self, graph):
    self.graph = graph


def _frozen_graph_only(steps, func, lower_control_flow=True,
                       aggressive_inlining=False):
  """convert_variables_to_constants_v2(func, ...) as far as tf2onnx uses it:
  an object whose `graph` holds the frozen ops, input and output names as
  in `func`."""
  import tensorflow as tf
  make_data, replace = steps
  data = make_data(func=func, lower_control_flow=lower_control_flow,
                   aggressive_inlining=aggressive_inlining)
  graph_def, _ = replace(converter_data=data)
  del data  # its copy of every weight
  with tf.Graph().as_default() as graph:
    tf.import_graph_def(graph_def, name='')
  return _FrozenGraph(graph)


@contextlib.contextmanager
def compacting_optimizers():
  """While active, each of tf2onnx's ONNX graph optimizers is followed by a
  compaction of the graph's node protos; the converted model is the same.

  Each optimizer ends by rewriting every node's attributes into its
  NodeProto (Node.update_proto: delete, then extend). Under the upb
  protobuf runtime the deleted attributes stay in the message's arena
  until the message itself goes, so each of the 12 optimizers times 3
  passes kept one more copy of every weight: +1.5 GB for the three-module
  ensemble. A fresh copy of each NodeProto drops the old arena. Without
  the (private) optimizer table of this tf2onnx release, nothing changes.
  """
  try:
    from tf2onnx import optimizer
    table = optimizer._get_optimizers()  # noqa: SLF001 tf2onnx has no public optimizer table
  except (ImportError, AttributeError):
    yield
    return
  saved = dict(table)
  for name, factory in saved.items():
    table[name] = _compacting(factory)
  try:
    yield
  finally:
    for name, factory in saved.items():
      table[name] = factory


def _compacting(factory):
  """A tf2onnx optimizer class like `factory` that compacts the graph after
  optimizing it (see compacting_optimizers)."""

  class Compacting:
    """`factory`'s optimizer, then `_compact`."""

    def __init__(self):
      self.inner = factory()

    @property
    def graph_been_opt(self):
      return self.inner.graph_been_opt

    def optimize(self, graph, iteration):
      graph = self.inner.optimize(graph, iteration)
      _compact(graph)
      gc.collect()  # the graph before this optimizer, in reference cycles
      return graph

  return Compacting


def _compact(graph) -> None:
  """Replaces each node's NodeProto (and those of its sub-graphs) by a copy,
  which leaves the garbage of earlier rewrites behind."""
  for node in graph.get_nodes():
    proto = getattr(node, '_op', None)
    if proto is None:
      return
    fresh = type(proto)()
    fresh.CopyFrom(proto)
    node._op = fresh  # noqa: SLF001 tf2onnx has no public way to swap a node's proto
    for body in (node.get_body_graphs() or {}).values():
      _compact(body)
