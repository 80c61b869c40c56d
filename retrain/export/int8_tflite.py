"""The int8 TFLite model of an int8-bottleneck run: its int8 models as they are.

When every member of the exported module is an int8 model translated into
TensorFlow ops (retrain.export.int8_graph.Int8Graph), the int8 TFLite
export is not the translated graph quantised again (which loses accuracy):
it is one TFLite graph made of

* the float "input glue": the image input float32 [batch, H, W, 3] in
  [0, 1], area-resized to each member's own size where that is smaller
  (retrain.features.ensemble.area_resize), converted as a small float
  TFLite model;
* each member's full-integer int8 TFLite model (retrain/features/int8.py)
  as it is: the very model that made the cached vectors (QUANTIZE, int8
  convolutions, DEQUANTIZE to float32 [batch, D_i]);
* the float "output glue": the members' vectors concatenated, the head's
  matmul and softmax (float32 [batch, N], column j is class id j) and,
  when the head has one, the novelty score float32 [batch], converted as
  a small float TFLite model.

The parts' tensors, buffers and operator codes are renumbered into one
subgraph, whose signature is the float export's (`serving_default`:
input `images`, outputs `output_0` probabilities and `output_1`
novelty). The result is a quarter of the float model's size, runs the
int8 kernels, and its features are the cached int8 vectors.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Dict, List, Tuple

import tensorflow as tf

from retrain.common.names import (
  NOVELTY_OUTPUT,
  OUTPUT_TENSOR_NAME,
  PROBABILITIES_OUTPUT,
  SERVING_SIGNATURE,
)
from retrain.export import int8_graph
from retrain.export import saved_model as export_lib
from retrain.features import ensemble as ensemble_lib
from retrain.features.modules import FeatureModule
from retrain.head.model import Head

# The float export's input name (its signature's argument).
_INPUT_NAME = 'images'


def int8_members(module) -> List[Tuple[str, Tuple[int, int]]]:
  """[(int8 model file, its (height, width))] per member of `module`, in
  member order, when every member is an int8 model translated into
  TensorFlow ops (an Int8Graph); else []. A written export
  (retrain.export.from_disk.SavedModule) says so in its `int8_members`."""
  if hasattr(module, 'saved_classifier'):
    return [(path, tuple(size))
            for path, size in getattr(module, 'int8_members', ())]
  graphs = [m.obj for m in ensemble_lib.members(module)]
  if not all(isinstance(g, int8_graph.Int8Graph) for g in graphs):
    return []
  return [(g.path, tuple(g.input_size)) for g in graphs]


def stitchable(module) -> bool:
  """True when the int8 TFLite export of `module` can hold its members'
  int8 TFLite models as they are (int8_members)."""
  return bool(int8_members(module))


def stitched_model(module, head) -> bytes:
  """The classifier as one TFLite flatbuffer made of the members' int8
  models and float glue (module doc); needs stitchable(module).

  Args:
    module: the exported module (members Int8Graph), or a written export
      (from_disk.SavedModule) with int8_members.
    head: its Head, or the SavedHead of the written export (the head's
      weights are then read from the SavedModel).

  Returns a model with input float32 [batch, H, W, 3] in [0, 1] (H, W:
  module.input_size), output 0 float32 [batch, N] probabilities and,
  with a novelty score, output 1 float32 [batch].
  """
  from tensorflow.lite.tools import flatbuffer_utils
  members = int8_members(module)
  parts = [flatbuffer_utils.read_model(path) for path, _ in members]
  size = tuple(module.input_size)
  resized = [i for i, (_, s) in enumerate(members) if s != size]
  merged = _Merged()
  image = None
  member_inputs: Dict[int, int] = {}
  if resized:
    pre = _input_glue(size, [members[i][1] for i in resized])
    mapped = merged.add(pre, {})
    image = mapped[_signature_tensor(pre, 'inputs', _INPUT_NAME)]
    for k, i in enumerate(resized):
      member_inputs[i] = mapped[_signature_tensor(pre, 'outputs',
                                                  f'output_{k}')]
  vectors, dims = [], []
  for i, part in enumerate(parts):
    source = part.subgraphs[0]
    feed = member_inputs.get(i, image)
    mapped = merged.add(part, {} if feed is None else
                        {source.inputs[0]: feed})
    if feed is None:
      image = mapped[source.inputs[0]]
    vectors.append(mapped[source.outputs[0]])
    dims.append(int(source.tensors[source.outputs[0]].shape[-1]))
  post = _output_glue(_head_of(module, head), dims)
  bound = {_signature_tensor(post, 'inputs', f'vectors_{i}'): v
           for i, v in enumerate(vectors)}
  mapped = merged.add(post, bound)
  outputs = [(t.name, mapped[t.tensorIndex])
             for t in post.signatureDefs[0].outputs]
  model = merged.finish(image, outputs, post)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _head_of(module, head) -> Head:
  """`head` itself, or for a written export the Head its SavedModel holds
  (from_disk.SavedModule.saved_head: read from its variables)."""
  if not hasattr(module, 'saved_classifier'):
    return head
  return module.saved_head(head)


def _converted(function, trackable=None):
  """The flatbuffer object (schema ModelT, with its signature) of float
  tf.function `function` (variables held by `trackable`), converted with
  builtin ops through a SavedModel (a concrete function converts without
  a signature)."""
  from tensorflow.lite.tools import flatbuffer_utils
  holder = trackable if trackable is not None else tf.Module()
  with tempfile.TemporaryDirectory(prefix='retrain-glue-') as folder:
    tf.saved_model.save(holder, folder, signatures={
        SERVING_SIGNATURE: function.get_concrete_function()})
    converter = tf.lite.TFLiteConverter.from_saved_model(
        folder, signature_keys=[SERVING_SIGNATURE])
    model = converter.convert()
  return flatbuffer_utils.convert_bytearray_to_object(bytearray(model))


def _input_glue(size: Tuple[int, int], sizes: List[Tuple[int, int]]):
  """images float32 [batch, H, W, 3] -> one area-resized copy per size."""
  height, width = size

  def resize(images):
    return [ensemble_lib.area_resize(images, size, tuple(s)) for s in sizes]

  function = tf.function(resize, input_signature=[tf.TensorSpec(
      [None, height, width, 3], tf.float32, name=_INPUT_NAME)])
  return _converted(function)


def _output_glue(head: Head, dims: List[int]):
  """Member vectors float32 [batch, D_i] (inputs vectors_i) -> [the
  probabilities, the novelty score when the head has one], as the float
  export computes them from the concatenated vectors."""
  identity = FeatureModule(handle='int8 vectors', resolved='', path='',
                           fingerprint='', input_size=(1, 1),
                           output_dim=sum(dims), obj=lambda v: v,
                           call=lambda v: v)
  classifier = export_lib.Classifier(identity, head, OUTPUT_TENSOR_NAME)
  specs = [tf.TensorSpec([None, d], tf.float32, name=f'vectors_{i}')
           for i, d in enumerate(dims)]

  def classify(*vectors):
    outputs = classifier._classify(tf.concat(vectors, axis=1))  # noqa: SLF001 the classifier's own untraced call
    return [outputs[k] for k in (PROBABILITIES_OUTPUT, NOVELTY_OUTPUT)
            if k in outputs]

  # Its variables only: saving the classifier would trace its `classify`.
  holder = tf.Module()
  holder.head_variables = list(classifier.variables)
  return _converted(tf.function(classify, input_signature=specs), holder)


def _signature_tensor(model, side: str, name: str) -> int:
  """The tensor index of input or output `name` of `model`'s signature."""
  for entry in getattr(model.signatureDefs[0], side):
    if _text(entry.name) == name:
      return entry.tensorIndex
  raise int8_graph.Untranslatable(f'the glue model has no {side} {name!r}')


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else value


class _Merged:
  """One model's buffers, operator codes and single subgraph, to which
  parts are added with their indices renumbered."""

  def __init__(self):
    from tensorflow.lite.python import schema_py_generated as schema
    self.schema = schema
    self.buffers = [schema.BufferT()]
    self.codes: List = []
    self.graph = schema.SubGraphT()
    self.graph.tensors, self.graph.operators = [], []

  def add(self, part, bound: Dict[int, int]) -> Dict[int, int]:
    """Adds `part`'s (a ModelT of one subgraph) tensors and ops; its
    tensors in `bound` are the merged tensors they map to (an input fed
    by an earlier part). Returns part tensor index -> merged index."""
    source = part.subgraphs[0]
    mapping = dict(bound)
    for index, tensor in enumerate(source.tensors):
      if index in mapping:
        continue
      tensor = copy.copy(tensor)
      buffer = part.buffers[tensor.buffer] if tensor.buffer else None
      if buffer is not None and buffer.data is not None and len(buffer.data):
        self.buffers.append(buffer)
        tensor.buffer = len(self.buffers) - 1
      else:
        tensor.buffer = 0
      mapping[index] = len(self.graph.tensors)
      self.graph.tensors.append(tensor)
    for op in source.operators:
      op = copy.copy(op)
      op.opcodeIndex = self._code(part.operatorCodes[op.opcodeIndex])
      op.inputs = [mapping[i] if i >= 0 else -1 for i in op.inputs]
      op.outputs = [mapping[i] for i in op.outputs]
      if op.intermediates is not None:
        op.intermediates = [mapping[i] for i in op.intermediates]
      self.graph.operators.append(op)
    return mapping

  def _code(self, code) -> int:
    key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode,
           code.version)
    for index, known in enumerate(self.codes):
      if (known.builtinCode, known.deprecatedBuiltinCode, known.customCode,
          known.version) == key:
        return index
    self.codes.append(code)
    return len(self.codes) - 1

  def finish(self, image: int, outputs, post):
    """The ModelT: input `image`, outputs [(signature name, tensor)]."""
    schema = self.schema
    self.graph.inputs = [image]
    self.graph.outputs = [index for _, index in outputs]
    self.graph.name = b'main'
    self.graph.tensors[image].name = (
        f'{SERVING_SIGNATURE}_{_INPUT_NAME}:0').encode()
    signature = schema.SignatureDefT()
    signature.signatureKey = SERVING_SIGNATURE.encode()
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map(schema, _INPUT_NAME, image)]
    signature.outputs = [_tensor_map(schema, _text(name), index)
                         for name, index in outputs]
    model = schema.ModelT()
    model.version = post.version
    model.description = post.description
    model.buffers = self.buffers
    model.operatorCodes = self.codes
    model.subgraphs = [self.graph]
    model.signatureDefs = [signature]
    return model


def _tensor_map(schema, name: str, index: int):
  entry = schema.TensorMapT()
  entry.name = name.encode()
  entry.tensorIndex = index
  return entry
