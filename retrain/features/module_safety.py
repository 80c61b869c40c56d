"""A SavedModel is code: run only graphs made of the operations image
feature extractors use.

`--tfhub_module` may name any local SavedModel folder, and label_image
loads any export or frozen graph it is given. A graph runs with the
user's rights, and TensorFlow has hundreds of ops, many of which reach
outside the computation: read or write files (ReadFile, WriteFile,
checkpoint savers, summary writers, PrintV2 to a `file://` stream, dataset
readers and savers), run Python (PyFunc), or run another graph carried as
data (DatasetFromGraph on a serialized dataset graph). A deny-list of such
ops is always one op short, so this module checks against an allow-list,
`ALLOWED_OPS`: the arithmetic, neural-network, array, image-decoding,
variable and functional control-flow ops that the bundled EfficientNet-Lite
modules, TF-Hub image feature vectors and retrain's own exports use.

Every graph a SavedModel can run is checked: the main graph and every
function of its library, from `saved_model.pb` or `saved_model.pbtxt`
(both, when both exist); a frozen graph (.pb GraphDef) likewise. The
checkpoint ops a SavedModel carries for its own variables (SaveV2,
RestoreV2, MergeV2Checkpoints) are accepted only inside the save and
restore functions its saver names, and only when nothing else calls those
functions. A serialized graph inside a string constant or a string
variable is refused outright, whatever its ops. The check reads the files
before anything of the model is loaded or run; `--trust_module` skips it.
"""

from __future__ import annotations

import collections
import os
from typing import Dict, Iterable, List, Optional

from retrain.errors import ModuleError

# Ops that compute on tensors and nothing else. Names as in the GraphDef.
ALLOWED_OPS = frozenset('''
Abs Acos Acosh Add AddN AddV2 AdjustContrastv2 AdjustHue AdjustSaturation All
Any ApproximateEqual ArgMax ArgMin Asin Asinh Assert Assign AssignAdd
AssignAddVariableOp AssignSub AssignSubVariableOp AssignVariableOp Atan Atan2
Atanh AvgPool AvgPool3D BatchMatMul BatchMatMulV2 BatchMatMulV3
BatchNormWithGlobalNormalization BatchToSpaceND BiasAdd BiasAddV1 Bitcast
BroadcastArgs BroadcastGradientArgs BroadcastTo Bucketize Case Cast Ceil
CheckNumerics ClipByValue Complex ComplexAbs Concat ConcatOffset ConcatV2
Const ControlTrigger Conv2D Conv2DBackpropInput Conv3D Cos Cosh CropAndResize
Cumprod Cumsum DecodeAndCropJpeg DecodeBmp DecodeGif DecodeImage DecodeJpeg
DecodePng DecodeRaw DecodeWebP DepthToSpace DepthwiseConv2dNative
DepthwiseConv2dNativeBackpropInput Dequantize DestroyResourceOp Diag DiagPart
Dilation2D DisableCopyOnRead Div DivNoNan DynamicStitch Einsum Elu Empty
EnsureShape Enter Equal Erf Erfc Exit Exp ExpandDims Expm1 ExtractImagePatches
ExtractJpegShape FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars
FakeQuantWithMinMaxVarsPerChannel Fill Floor FloorDiv FloorMod
FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 FusedPadConv2D
FusedResizeAndPadConv2D Gather GatherNd GatherV2 Greater GreaterEqual
HSVToRGB Identity IdentityN If Imag InTopKV2 Inv InvertPermutation IsFinite
IsInf IsNan IsVariableInitialized L2Loss LRN LeakyRelu Less LessEqual Lgamma
LinSpace Log Log1p LogSoftmax LogicalAnd LogicalNot LogicalOr LoopCond MatMul
MatrixBandPart MatrixDiag MatrixDiagPart MatrixDiagV3 MatrixSetDiag
MatrixSetDiagV3 Max MaxPool MaxPool3D MaxPoolV2 Maximum Mean Merge Min
Minimum MirrorPad Mod Mul MulNoNan Neg NextIteration NoOp NonMaxSuppressionV3
NonMaxSuppressionV4 NonMaxSuppressionV5 NotEqual OneHot OnesLike Pack Pad
PadV2 PartitionedCall Placeholder PlaceholderWithDefault Pow PreventGradient
Prod QuantizeAndDequantizeV2 QuantizeAndDequantizeV3 QuantizeAndDequantizeV4
QuantizeV2 RGBToHSV RandomStandardNormal RandomUniform RandomUniformInt Range
Rank ReadVariableOp Real RealDiv Reciprocal Relu Relu6 Reshape ResizeArea
ResizeBicubic ResizeBilinear ResizeNearestNeighbor ResourceGather
ResourceGatherNd Reverse ReverseSequence ReverseV2 Rint Round Rsqrt
ScaleAndTranslate ScatterNd Select SelectV2 Selu Shape ShapeN ShardedFilename
ShardedFilespec Sigmoid Sign Sin Sinh Size Slice Snapshot Softmax Softplus
Softsign SpaceToBatchND SpaceToDepth Split SplitV Sqrt Square
SquaredDifference Squeeze StatefulPartitionedCall StatelessCase StatelessIf
StatelessRandomNormal StatelessRandomNormalV2 StatelessRandomUniform
StatelessRandomUniformV2 StatelessRandomUniformInt
StatelessRandomUniformIntV2 StatelessTruncatedNormal
StatelessTruncatedNormalV2 StatelessWhile StaticRegexFullMatch StopGradient
StridedSlice StringJoin StringLength Sub Substr Sum Switch Tan Tanh
TensorListElementShape TensorListFromTensor TensorListGetItem
TensorListLength TensorListPopBack TensorListPushBack TensorListReserve
TensorListResize TensorListSetItem TensorListStack Tile TopKV2 Transpose
TruncateDiv TruncateMod TruncatedNormal Unique Unpack UnsortedSegmentMax
UnsortedSegmentSum VarHandleOp VarIsInitializedOp Variable VariableV2 Where
While Xdivy Xlogy ZerosLike
'''.split())

# Checkpoint ops: accepted only in the functions (or TF1 saver nodes) that
# the SavedModel's saver names for saving, resp. restoring, its variables.
SAVE_OPS = frozenset({'SaveV2', 'MergeV2Checkpoints', 'Save', 'SaveSlices'})
RESTORE_OPS = frozenset({'RestoreV2', 'Restore', 'RestoreSlice'})
_PLACES_PER_OP = 3


def _read_saved_model(path: str) -> list:
  """The SavedModel protos of folder `path` (.pb and .pbtxt); [] if none
  parses (loading then reports the problem)."""
  from google.protobuf import text_format
  from tensorflow.core.protobuf import saved_model_pb2
  found = []
  for name, text in (('saved_model.pb', False), ('saved_model.pbtxt', True)):
    try:
      with open(os.path.join(path, name), 'rb') as f:
        data = f.read()
      saved = saved_model_pb2.SavedModel()
      if text:
        text_format.Parse(data.decode('utf-8'), saved)
      else:
        saved.ParseFromString(data)
      found.append(saved)
    except Exception:  # noqa: BLE001 data that does not parse is not that kind of file
      continue
  return found


def _called(node) -> List[str]:
  """Names of the functions a NodeDef calls (func and list(func) attrs)."""
  names = [node.op]
  for value in node.attr.values():
    if value.func.name:
      names.append(value.func.name)
    names.extend(f.name for f in value.list.func)
  return names


def _closure(roots: Iterable[str], functions: dict) -> set:
  """The functions reachable from `roots` (function names) through calls."""
  seen, pending = set(), [r for r in roots if r in functions]
  while pending:
    name = pending.pop()
    if name in seen:
      continue
    seen.add(name)
    for node in functions[name].node_def:
      pending.extend(n for n in _called(node) if n in functions)
  return seen


def _node_ancestors(graph_def, names: Iterable[str]) -> set:
  """Names of the main-graph nodes that `names` depend on (inputs and
  control inputs), themselves included."""
  nodes = {node.name: node for node in graph_def.node}
  seen, pending = set(), [n.split(':')[0].lstrip('^') for n in names if n]
  while pending:
    name = pending.pop()
    if name in seen or name not in nodes:
      continue
    seen.add(name)
    pending.extend(i.split(':')[0].lstrip('^') for i in nodes[name].input)
  return seen


def _checkpoint_places(meta) -> tuple:
  """(main-graph nodes and functions that may save, the same for restore):
  the saver's own, minus any function something else also calls."""
  graph = meta.graph_def
  functions = {f.signature.name: f for f in graph.library.function}
  saver = meta.saver_def
  save_nodes = _node_ancestors(graph, [saver.save_tensor_name])
  restore_nodes = _node_ancestors(graph, [saver.restore_op_name])
  others = [node for node in graph.node
            if node.name not in save_nodes | restore_nodes]
  callable_ = _closure([n for node in others for n in _called(node)] +
                       list(meta.object_graph_def.concrete_functions),
                       functions)

  def places(nodes):
    called = _closure([n for node in graph.node if node.name in nodes
                       for n in _called(node)], functions)
    return nodes, called - callable_
  return places(save_nodes), places(restore_nodes)


def _graph_in_data(node) -> bool:
  """Whether a string Const holds a serialized GraphDef (a graph to be run
  by an op such as DatasetFromGraph)."""
  if node.op != 'Const':
    return False
  tensor = node.attr['value'].tensor
  return any(_is_graph(value) for value in tensor.string_val)


def _is_graph(data: bytes) -> bool:
  from tensorflow.core.framework import graph_pb2
  if len(data) < 8:
    return False
  try:
    graph = graph_pb2.GraphDef.FromString(data)
  except Exception:  # noqa: BLE001 data that does not parse is not that kind of file
    return False
  return bool(graph.node) and all(node.op for node in graph.node)


def scan_graph(graph_def, meta=None) -> Dict[str, List[str]]:
  """{op type or finding: [where, ...]} of what the allow-list refuses in a
  GraphDef (and its function library); `meta`: the MetaGraphDef it belongs
  to, whose saver may use checkpoint ops."""
  (save_nodes, save_fns), (restore_nodes, restore_fns) = (
      _checkpoint_places(meta) if meta is not None else ((set(), set()),) * 2)
  found = collections.defaultdict(list)

  def check(node, where, saving, restoring):
    op = node.op
    if op in ALLOWED_OPS or op in functions:
      if _graph_in_data(node):
        op, where = 'a serialized graph carried as data', (
            f'{where}, constant {node.name}')
      else:
        return
    elif (op in SAVE_OPS and saving) or (op in RESTORE_OPS and restoring):
      return
    if len(found[op]) < _PLACES_PER_OP and where not in found[op]:
      found[op].append(where)

  functions = {f.signature.name for f in graph_def.library.function}
  for node in graph_def.node:
    check(node, 'graph', node.name in save_nodes, node.name in restore_nodes)
  for function in graph_def.library.function:
    name = function.signature.name
    for node in function.node_def:
      check(node, f'function {name}', name in save_fns, name in restore_fns)
  return found


def _string_variables(path: str) -> Dict[str, List[str]]:
  """Serialized graphs kept in string variables of the SavedModel."""
  prefix = os.path.join(path, 'variables', 'variables')
  if not os.path.exists(prefix + '.index'):
    return {}
  import tensorflow as tf
  try:
    reader = tf.train.load_checkpoint(prefix)
    types = reader.get_variable_to_dtype_map()
  except Exception:  # noqa: BLE001 data that does not parse is not that kind of file
    return {}  # Loading reports an unreadable checkpoint.
  where = []
  for name, dtype in sorted(types.items()):
    if dtype != tf.string:
      continue
    values = reader.get_tensor(name)
    flat = values.ravel().tolist() if hasattr(values, 'ravel') else [values]
    if any(isinstance(v, bytes) and _is_graph(v) for v in flat):
      where.append(f'variable {name}')
  return {'a serialized graph carried as data': where[:_PLACES_PER_OP]} \
      if where else {}


def unsafe_ops(path: str) -> Dict[str, List[str]]:
  """{op type or finding: [where, ...]} of what the allow-list refuses in
  the SavedModel folder `path`, or in the frozen graph file `path`.

  `where` is 'graph', 'function <name>' (plus ', constant <node>' or
  'variable <name>' for a serialized graph); at most 3 places per op. An
  unreadable model gives {} (loading reports it).
  """
  found = collections.defaultdict(list)
  if os.path.isdir(path):
    for saved in _read_saved_model(path):
      for meta in saved.meta_graphs:
        for op, where in scan_graph(meta.graph_def, meta).items():
          found[op].extend(w for w in where if w not in found[op])
    for op, where in _string_variables(path).items():
      found[op].extend(where)
  else:
    graph = _read_graph_file(path)
    if graph is not None:
      found.update(scan_graph(graph))
  return {op: where[:_PLACES_PER_OP] for op, where in found.items()}


def _read_graph_file(path: str):
  """The GraphDef in a frozen graph file, or None."""
  from tensorflow.core.framework import graph_pb2
  try:
    with open(path, 'rb') as f:
      return graph_pb2.GraphDef.FromString(f.read())
  except Exception:  # noqa: BLE001 data that does not parse is not that kind of file
    return None


def check_model(path: str, trust: bool, handle: Optional[str] = None) -> None:
  """Raises ModuleError if the SavedModel folder or frozen graph file at
  `path` contains anything the allow-list refuses (see the module doc).

  The one check for everything that loads a model: feature modules,
  label_image's exports and frozen graphs, evaluation.

  Args:
    path: a local SavedModel folder or frozen GraphDef (.pb) file.
    trust: the user's --trust_module: the check is skipped.
    handle: what the user passed, for the message (default: path).
  """
  if trust or not path or not os.path.exists(path):
    return
  found = unsafe_ops(path)
  if not found:
    return
  listed = '; '.join(f'{op} (in {", ".join(where)})'
                     for op, where in sorted(found.items()))
  named = path if handle in (None, path) else f'{handle!r} ({path})'
  raise ModuleError(
      f'Model {named} contains operations that an image model does not use '
      f'and that may read or write files, run Python or run a hidden graph: '
      f'{listed}. A SavedModel or graph is code that runs with your rights. '
      'Use it only if you trust where it came from, and then set '
      'trust_module=True.', fields=('trust_module',))


def check_module(handle: str, path: str, trust: bool) -> None:
  """Raises ModuleError if the module at `path` may act (check_model).

  Args:
    handle: what the user passed (for the message).
    path: the local SavedModel folder.
    trust: the user's --trust_module: check skipped.
  """
  if path and os.path.isdir(path):
    check_model(path, trust, handle)
