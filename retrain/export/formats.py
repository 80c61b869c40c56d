"""Export formats besides the SavedModel: frozen graph, TFLite, checkpoint.

Every format computes the same function as the SavedModel's
`serving_default`: images float32 [batch, H, W, 3] in [0, 1] (decoded and
resized by `retrain.images`) -> probabilities float32 [batch, N], column j
is class id j (row j of the labels file).

- Frozen graph (`--output_graph`, retrain.py's format): a GraphDef with the
  module and the head as constants; input op `Placeholder` float32
  [None, H, W, 3] in [0, 1], output op `--final_tensor_name` (default
  `final_result`), so label_image commands from the retrain tutorial work.
- TFLite (`--tflite_output_file`): one float32 input [batch, H, W, 3] in
  [0, 1], one float32 output [batch, N], whatever the quantization
  (`none`, `dynamic`, `float16`, `int8`; int8 is calibrated on a sample of
  training images and keeps float input and output, so every consumer
  feeds the same thing).
- Checkpoint (`--checkpoint_path`): `tf.train.Checkpoint` of the head's
  `final_weights` [D, N] and `final_biases` [N]; see `read_checkpoint`.

- ONNX (`--onnx_output_file`, optional extra `[onnx]`): see
  `retrain.export.onnx_format`; labels and metadata in metadata_props.

The frozen graph and the TFLite file describe themselves with two files
beside them, named after the whole model file (X.pb -> X.pb.labels.txt and
X.pb.metadata.json; X.tflite -> X.tflite.labels.txt, ...), so a .pb and a
.tflite of the same stem never share them; tools/label_image.py reads them,
so they need no training flags either. The TFLite file also carries its
metadata inside (labels, normalisation, rejection threshold;
`retrain.export.tflite_metadata`) when the optional mediapipe package is
installed, so MediaPipe Tasks run it as it is. A quantised TFLite model is
checked against the float model on held-out images before it is written
(`retrain.export.quantization_check`).

Nothing a user made is lost: each file is written under a temporary name
and renamed into place; a file already there is first moved to
`<name>.previous-<time>`.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from retrain import images as images_lib
from retrain.common import atomic, strict_json
from retrain.common import earlier_outputs as keep
from retrain.common.names import (
  INPUT_TENSOR_NAME,
  OUTPUT_TENSOR_NAME,
  QUANTIZATIONS,
)
from retrain.errors import OutputError
from retrain.export import onnx_format, quantization_check, tflite_metadata
from retrain.export import saved_model as export_lib
from retrain.features.modules import FeatureModule
from retrain.head.model import Head

LABELS_SUFFIX = '.labels.txt'
METADATA_SUFFIX = '.metadata.json'
INTERMEDIATE_PATTERN = 'intermediate_{steps}.pb'
NOVELTY = export_lib.NOVELTY_OUTPUT


def sidecar_paths(path: str) -> Dict[str, str]:
  """The labels and metadata files that travel with a .pb or .tflite file.

  Named after the whole file name (flowers.pb -> flowers.pb.labels.txt), so
  two models with the same stem (flowers.pb, flowers.tflite) never share
  them.
  """
  return {'labels': path + LABELS_SUFFIX, 'metadata': path + METADATA_SUFFIX}


def _write_file(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically, keeping any earlier file aside."""
  with atomic.replacing(path) as tmp:
    atomic.write_bytes(tmp, data)
    keep.move_aside(path)


def _file_metadata(path: str, labels: Sequence[str], module: FeatureModule,
                   info: dict) -> dict:
  """The JSON metadata of a model file (sidecar, and embedded in TFLite)."""
  data = export_lib.describe_model(module, labels)
  data['model_file'] = os.path.basename(path)
  data.update(info)
  return data


def _write_sidecars(path: str, labels: Sequence[str], module: FeatureModule,
                    info: dict) -> None:
  data = _file_metadata(path, labels, module, info)
  files = sidecar_paths(path)
  _write_file(files['labels'], export_lib.labels_text(labels).encode())
  _write_file(files['metadata'], strict_json.dumps(data, indent=2).encode())


def check_output_file(flag: str, path: str, suffixes: Sequence[str]) -> None:
  """Raises OutputError when `path` cannot take a model file."""
  if not path:
    return
  if os.path.isdir(path) or path.endswith(('/', os.sep)):
    raise OutputError(f'{flag} {path!r} is a folder: give a file path, '
                      f'e.g. {os.path.join(path, "model" + suffixes[0])}.',
                      fields=(flag,))
  if not path.lower().endswith(tuple(suffixes)):
    raise OutputError(f'{flag} {path!r} should end in '
                      f'{" or ".join(suffixes)}, so that tools (and '
                      'label_image) recognise the format.',
                      fields=(flag,))
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.exists(parent) and not os.access(parent, os.W_OK):
    raise OutputError(f'Cannot write in {parent!r}: give a {flag} in a '
                      'writable folder.',
                      fields=(flag,))


def check_options(options) -> None:
  """Checks the export-format settings before any slow work."""
  check_output_file('output_graph', options.output_graph, ('.pb',))
  check_output_file('tflite_output_file', options.tflite_output_file,
                    ('.tflite',))
  # --- Deployment checks ---
  check_output_file('onnx_output_file', options.onnx_output_file, ('.onnx',))
  if options.onnx_output_file:
    try:
      import tf2onnx  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise OutputError('onnx_output_file needs tf2onnx: pip install '
                        '"retrain[onnx]" (or leave it empty).',
                        fields=('onnx_output_file',)) from e
  if options.max_quantization_loss < 0:
    raise OutputError(f'max_quantization_loss='
                      f'{options.max_quantization_loss} must be 0 or more '
                      '(points of top-1 accuracy).',
                      fields=('max_quantization_loss',))
  # --- End of deployment checks ---
  if options.tflite_quantization not in QUANTIZATIONS:
    raise OutputError(f'tflite_quantization={options.tflite_quantization!r} '
                      f'is not one of {", ".join(QUANTIZATIONS)}.',
                      fields=('tflite_quantization',))
  if options.intermediate_store_frequency < 0:
    raise OutputError(f'intermediate_store_frequency='
                      f'{options.intermediate_store_frequency} must be 0 '
                      '(none) or a positive number of steps.',
                      fields=('intermediate_store_frequency',))
  if options.intermediate_store_frequency and not (
      options.intermediate_output_graphs_dir):
    raise OutputError('intermediate_store_frequency needs '
                      'intermediate_output_graphs_dir (a folder).',
                      fields=('intermediate_store_frequency',
                              'intermediate_output_graphs_dir'))
  if options.checkpoint_path and os.path.isdir(options.checkpoint_path):
    raise OutputError(f'checkpoint_path {options.checkpoint_path!r} is a '
                      'folder: give a file prefix, e.g. '
                      f'{os.path.join(options.checkpoint_path, "head")}.',
                      fields=('checkpoint_path',))


# --- Frozen graph -------------------------------------------------------------


def frozen_graph_def(module: FeatureModule, head: Head,
                     final_tensor_name: str) -> tf.compat.v1.GraphDef:
  """The classifier as a GraphDef with every variable turned into a constant.

  Input op `Placeholder` float32 [None, H, W, 3] in [0, 1]; output op
  `final_tensor_name` float32 [None, N] (softmax probabilities).
  """
  classifier = export_lib.Classifier(module, head, final_tensor_name)
  height, width = module.input_size

  @tf.function(input_signature=[tf.TensorSpec(
      [None, height, width, 3], tf.float32, name=INPUT_TENSOR_NAME)])
  def classify(images):
    # _classify names its softmax op `final_tensor_name`; calling it here
    # (not the tf.function) keeps that op at the top level of the graph.
    outputs = classifier._classify(images)  # pylint: disable=protected-access
    return [outputs[k] for k in ('probabilities', NOVELTY) if k in outputs]

  graph_def = _freeze(classify.get_concrete_function(), final_tensor_name,
                      *([NOVELTY] if head.novelty is not None else []))
  names = {node.name for node in graph_def.node}
  if INPUT_TENSOR_NAME not in names or final_tensor_name not in names:
    raise OutputError(f'Freezing the graph lost the ops {INPUT_TENSOR_NAME!r} / '
                      f'{final_tensor_name!r}; choose another '
                      'final_tensor_name.',
                      fields=('final_tensor_name',))
  return graph_def


def _freeze(function, output: str, *more: str) -> tf.compat.v1.GraphDef:
  """The GraphDef of a concrete function with its variables as constants,
  pruned to what computes op `output`.

  convert_variables_to_constants_v2 (the TF2 way to freeze; in
  tensorflow.python, stable since TF 2.0) ends by importing the frozen
  GraphDef back as a new function, which copies every constant again and
  stays registered in the eager context: for the three-module ensemble,
  +540 MB of peak memory against +178 MB for the GraphDef alone (measured
  in one process). So its two steps before that import are called
  directly, with the public function as the fallback if a TensorFlow
  release renames them; the output is the same graph (same probabilities,
  bit for bit, on the ensemble).
  """
  from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  try:
    data = convert_to_constants._FunctionConverterDataInEager(  # pylint: disable=protected-access
        func=function, lower_control_flow=True, aggressive_inlining=False)
    graph_def, _ = convert_to_constants._replace_variables_by_constants(  # pylint: disable=protected-access
        converter_data=data)
    del data  # its copy of every weight
  except AttributeError:
    graph_def = convert_to_constants.convert_variables_to_constants_v2(
        function).graph.as_graph_def()
  _prune(graph_def, output, *more)
  return graph_def


def _prune(graph_def: tf.compat.v1.GraphDef, output: str, *more: str
           ) -> None:
  """Removes, in place, the nodes ops `output` (and `more`) do not depend
  on."""
  by_name = {node.name: node for node in graph_def.node}
  needed, todo = set(), [output, *more]
  while todo:
    name = todo.pop()
    if name in needed or name not in by_name:
      continue
    needed.add(name)
    todo.extend(i.lstrip('^').split(':')[0] for i in by_name[name].input)
  del by_name
  for i in reversed(range(len(graph_def.node))):
    if graph_def.node[i].name not in needed:
      del graph_def.node[i]


def write_frozen_graph(path: str, module: FeatureModule, head: Head,
                       labels: Sequence[str], final_tensor_name: str,
                       extra_metadata: Optional[dict] = None) -> str:
  """Writes the frozen GraphDef to `path` (plus sidecars); returns path.
  extra_metadata: added to the metadata sidecar (a multi-label head's
  thresholds)."""
  graph_def = frozen_graph_def(module, head, final_tensor_name)
  _write_file(path, graph_def.SerializeToString())
  info = {'format': 'frozen_graph',
          'input_tensor': f'{INPUT_TENSOR_NAME}:0',
          'output_tensor': f'{final_tensor_name}:0',
          **((extra_metadata or {}) if head.multi_label else {})}
  if head.novelty is not None:
    info.update(novelty_tensor=f'{NOVELTY}:0',
                novelty=head.novelty.metadata())
  _write_sidecars(path, labels, module, info)
  return path


class IntermediateExports:
  """The `on_head` hook of train_head: a frozen graph every N steps.

  Writes <dir>/intermediate_<steps>.pb (with sidecars), as retrain.py's
  --intermediate_store_frequency did.
  """

  def __init__(self, directory: str, every: int, module: FeatureModule,
               labels: Sequence[str], final_tensor_name: str):
    self.directory, self.every = directory, every
    self.module, self.labels = module, list(labels)
    self.final_tensor_name = final_tensor_name
    self.written: List[str] = []

  def __call__(self, steps: int, head: Head) -> None:
    path = os.path.join(self.directory,
                        INTERMEDIATE_PATTERN.format(steps=steps))
    write_frozen_graph(path, self.module, head, self.labels,
                       self.final_tensor_name)
    self.written.append(path)
    logging.info('Step %d: wrote the intermediate graph %s.', steps, path)


# --- TFLite -------------------------------------------------------------------


def representative_images(paths: Sequence[str], size, count: int
                          ) -> Callable[[], Iterable[List[np.ndarray]]]:
  """A TFLite representative dataset: up to `count` of `paths`, decoded.

  The sample is spread evenly over `paths` (which are sorted by class), so
  every class is seen; files that cannot be decoded are passed over.
  """
  if len(paths) > count:
    picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
    paths = [paths[i] for i in picks]

  def generate():
    for path in paths:
      try:
        image = images_lib.load_image(path, size)
      except Exception:  # pylint: disable=broad-except
        continue  # Already reported by the bottleneck step.
      yield [image.numpy()[None]]

  return generate


def tflite_model(module: FeatureModule, head: Head, quantization: str = 'none',
                 calibration: Optional[Callable] = None) -> bytes:
  """The classifier as a TFLite flatbuffer.

  Args:
    quantization: 'none' (float32), 'dynamic' (int8 weights), 'float16'
      (float16 weights) or 'int8' (int8 weights and activations, calibrated
      on `calibration`; input and output stay float32).
    calibration: a representative dataset (see representative_images);
      needed for 'int8'.
  """
  if quantization not in QUANTIZATIONS:
    raise OutputError(f'Unknown TFLite quantization {quantization!r}; use one '
                      f'of {", ".join(QUANTIZATIONS)}.')
  classifier = export_lib.Classifier(module, head, OUTPUT_TENSOR_NAME)
  height, width = module.input_size

  # Outputs as a list, probabilities first: output 0 is what MediaPipe and
  # every [batch, N] reader take; `novelty` [batch] second when there is one.
  @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3],
                                              tf.float32)])
  def ordered(images):
    outputs = classifier._classify(images)  # pylint: disable=protected-access
    return [outputs[k] for k in ('probabilities', NOVELTY) if k in outputs]

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [ordered.get_concrete_function()], classifier)
  if quantization != 'none':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == 'float16':
    converter.target_spec.supported_types = [tf.float16]
  elif quantization == 'int8':
    if calibration is None:
      raise OutputError('int8 TFLite quantization needs calibration images.')
    converter.representative_dataset = calibration
    # Integer kernels where they exist, float for the rare op without one,
    # so conversion never fails on an unusual module.
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
  model = converter.convert()
  return _probabilities_first(model) if head.novelty is not None else model


def _probabilities_first(model: bytes) -> bytes:
  """`model` with its outputs reordered so that output 0 is the [batch, N]
  probabilities and output 1 the novelty [batch]: the converter emitted
  them the other way round whatever the function's order, and MediaPipe
  and every [batch, N] reader take output 0."""
  import flatbuffers  # pylint: disable=g-import-not-at-top
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=g-direct-tensorflow-import,g-import-not-at-top
  parsed = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
  graph = parsed.subgraphs[0]
  outputs = sorted(graph.outputs,
                   key=lambda t: -len(graph.tensors[t].shapeSignature
                                      if graph.tensors[t].shapeSignature
                                      is not None else graph.tensors[t].shape))
  if list(outputs) == list(graph.outputs):
    return model
  graph.outputs = outputs
  builder = flatbuffers.Builder(len(model) + 1024)
  builder.Finish(parsed.Pack(builder), file_identifier=b'TFL3')
  return bytes(builder.Output())


def write_tflite(path: str, module: FeatureModule, head: Head,
                 labels: Sequence[str], quantization: str = 'none',
                 calibration_paths: Sequence[str] = (),
                 calibration_count: int = 100,
                 gate: Optional[quantization_check.Gate] = None,
                 extra_metadata: Optional[dict] = None) -> str:
  """Writes the TFLite model to `path` (plus sidecars); returns path.

  A quantised model is first compared with the float model on `gate`'s
  images (see retrain.export.quantization_check): its figures go into the
  metadata and gate.results, and a model that loses too much accuracy is
  refused (OutputError) before anything is written. The metadata (labels,
  normalisation, rejection threshold, ours) is embedded in the file when
  the optional mediapipe package is installed; the sidecars are always
  written.

  Args:
    extra_metadata: more JSON-ready fields for the metadata (e.g.
      'confidence', with the rejection 'threshold').
  """
  calibration = None
  if quantization == 'int8':
    logging.info('Calibrating int8 quantization on %d training images.',
                 min(len(calibration_paths), calibration_count))
    calibration = representative_images(calibration_paths, module.input_size,
                                        calibration_count)
  model = tflite_model(module, head, quantization, calibration)
  info = {'format': 'tflite', 'quantization': quantization}
  info.update(extra_metadata or {})
  if quantization != 'none' and gate is not None:
    info['quantization_check'] = _check_quantized(model, module, head,
                                                  quantization, gate)
  model = _with_embedded_metadata(model, path, labels, module, info)
  _write_file(path, model)
  _write_sidecars(path, labels, module, info)
  return path


def _check_quantized(model: bytes, module: FeatureModule, head: Head,
                     quantization: str, gate: quantization_check.Gate
                     ) -> Optional[dict]:
  """Compares the quantised `model` with the float classifier; see write_tflite."""
  if not len(gate.paths):
    logging.warning('No %s images to check the %s TFLite model against the '
                    'float model; its accuracy is unchecked.', gate.subset,
                    quantization)
    return None
  classifier = export_lib.Classifier(module, head, OUTPUT_TENSOR_NAME)

  def float_predict(batch):
    return classifier.classify(tf.constant(batch))['probabilities'].numpy()

  logging.info('Checking the %s TFLite model against the float model on %d '
               '%s images.', quantization, len(gate.paths), gate.subset)
  check = quantization_check.compare(
      quantization, float_predict, quantization_check.tflite_predictor(model),
      gate, module.input_size)
  if check is None:
    return None
  quantization_check.enforce(check, gate)
  gate.results.append(check)
  return check.metadata()


def _with_embedded_metadata(model: bytes, path: str, labels: Sequence[str],
                            module: FeatureModule, info: dict) -> bytes:
  """`model` with MediaPipe-readable metadata, or as it is without mediapipe."""
  data = _file_metadata(path, labels, module, info)
  threshold = float((info.get('confidence') or {}).get('threshold') or 0.0)
  try:
    return tflite_metadata.embed(
        model, labels, data, threshold,
        description=(f'{len(labels)} classes, module {module.handle}, '
                     f'{info.get("quantization", "none")} quantization; '
                     f'input float32 [1, {module.input_size[0]}, '
                     f'{module.input_size[1]}, 3] in [0, 1]'))
  except tflite_metadata.MetadataWriterUnavailable as e:
    logging.info('TFLite metadata not embedded in %s (%s): MediaPipe Tasks '
                 'need it, so pip install "retrain[mediapipe]" for that; '
                 'the labels and metadata files beside it are written as '
                 'always.', path, e)
    return model


# --- ONNX ---------------------------------------------------------------------


def write_onnx(path: str, module: FeatureModule, head: Head,
               labels: Sequence[str],
               extra_metadata: Optional[dict] = None) -> str:
  """Writes the classifier as ONNX (metadata in metadata_props); returns path."""
  info = {'format': 'onnx', 'input_tensor': onnx_format.INPUT_NAME,
          'output_tensor': onnx_format.OUTPUT_NAME}
  info.update(extra_metadata or {})
  try:
    model = onnx_format.onnx_model(module, head, labels,
                                   _file_metadata(path, labels, module, info))
  except onnx_format.OnnxUnavailable as e:
    raise OutputError(str(e)) from e
  _write_file(path, model)
  return path


# --- Checkpoint ---------------------------------------------------------------


def write_checkpoint(prefix: str, head: Head) -> str:
  """Writes the head as a tf.train.Checkpoint at `prefix`; returns prefix.

  Files: <prefix>.index and <prefix>.data-*; earlier ones are moved aside.
  """
  directory = os.path.dirname(os.path.abspath(prefix))
  os.makedirs(directory, exist_ok=True)
  base = os.path.basename(prefix)
  for name in sorted(os.listdir(directory)):
    if name == base + '.index' or name.startswith(base + '.data-'):
      keep.move_aside(os.path.join(directory, name))
  checkpoint = tf.train.Checkpoint(
      final_weights=tf.Variable(head.weights, name='final_weights'),
      final_biases=tf.Variable(head.biases, name='final_biases'))
  checkpoint.write(prefix)
  return prefix


def read_checkpoint(prefix: str) -> Head:
  """The head written by write_checkpoint."""
  reader = tf.train.load_checkpoint(prefix)
  key = '{}/.ATTRIBUTES/VARIABLE_VALUE'
  return Head(reader.get_tensor(key.format('final_weights')),
              reader.get_tensor(key.format('final_biases')))


# --- All of them, for the pipeline --------------------------------------------


def intermediate_hook(options, module: FeatureModule, labels: Sequence[str]
                      ) -> Optional[IntermediateExports]:
  """The train_head hook for --intermediate_store_frequency, or None."""
  if options.intermediate_store_frequency <= 0:
    return None
  return IntermediateExports(options.intermediate_output_graphs_dir,
                             options.intermediate_store_frequency, module,
                             labels, options.final_tensor_name)


def export_other_formats(options, module: FeatureModule, head: Head,
                         labels: Sequence[str],
                         calibration_paths: Sequence[str],
                         gate: Optional[quantization_check.Gate] = None,
                         extra_metadata: Optional[dict] = None
                         ) -> Dict[str, str]:
  """Writes every non-SavedModel format asked for.

  Args:
    gate: the held-out images a quantised TFLite model is checked on.
    extra_metadata: stored in the TFLite and ONNX metadata (e.g. the
      calibration and rejection threshold).

  Returns:
    {'output_graph': path, 'tflite': path, 'onnx': path, 'checkpoint':
    prefix} for the files written.
  """
  written = {}
  if options.checkpoint_path:
    written['checkpoint'] = os.path.abspath(
        write_checkpoint(options.checkpoint_path, head))
    logging.info('Wrote the head checkpoint %s.', options.checkpoint_path)
  if options.output_graph:
    started = time.monotonic()
    written['output_graph'] = os.path.abspath(write_frozen_graph(
        options.output_graph, module, head, labels, options.final_tensor_name,
        extra_metadata))
    logging.info('Wrote the frozen graph %s (input %s, output %s) in %.1f s.',
                 options.output_graph, INPUT_TENSOR_NAME, options.final_tensor_name,
                 time.monotonic() - started)
  if options.tflite_output_file:
    started = time.monotonic()
    written['tflite'] = os.path.abspath(write_tflite(
        options.tflite_output_file, module, head, labels,
        options.tflite_quantization, calibration_paths,
        options.tflite_calibration_images, gate, extra_metadata))
    logging.info('Wrote the TFLite model %s (%s quantization, %.1f MB) in '
                 '%.1f s.', options.tflite_output_file,
                 options.tflite_quantization,
                 os.path.getsize(options.tflite_output_file) / 1e6,
                 time.monotonic() - started)
  if options.onnx_output_file:
    started = time.monotonic()
    written['onnx'] = os.path.abspath(write_onnx(
        options.onnx_output_file, module, head, labels, extra_metadata))
    logging.info('Wrote the ONNX model %s (%.1f MB) in %.1f s.',
                 options.onnx_output_file,
                 os.path.getsize(options.onnx_output_file) / 1e6,
                 time.monotonic() - started)
  return written
