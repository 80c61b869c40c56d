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
  feeds the same thing); written by `retrain.export.tflite_format`.
- Checkpoint (`--checkpoint_path`): `tf.train.Checkpoint` of the head's
  `final_weights` [D, N] and `final_biases` [N]; see `read_checkpoint`.

- ONNX (`--onnx_output_file`, optional extra `[onnx]`): see
  `retrain.export.onnx_format`; labels and metadata in metadata_props.

The frozen graph and the TFLite file describe themselves with two files
beside them, named after the whole model file (X.pb -> X.pb.labels.txt and
X.pb.metadata.json; X.tflite -> X.tflite.labels.txt, ...;
`retrain.export.files`), so a .pb and a .tflite of the same stem never
share them; tools/label_image.py reads them,
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
from typing import Dict, List, Optional, Sequence

import tensorflow as tf
from absl import logging

from retrain.common import earlier_outputs as keep
from retrain.common import phases as phases_lib
from retrain.common.names import (
  IMAGES_INPUT,
  INPUT_TENSOR_NAME,
  NOVELTY_OUTPUT,
  PROBABILITIES_OUTPUT,
)
from retrain.errors import OutputError
from retrain.export import onnx_format, quantization_check
from retrain.export import saved_model as export_lib
from retrain.export.files import (  # noqa: F401  (the formats' API)
  LABELS_SUFFIX,
  METADATA_SUFFIX,
  file_metadata,
  sidecar_paths,
  write_file,
  write_sidecars,
)
from retrain.export.tflite_format import (  # noqa: F401  (the formats' API)
  calibration_sample,
  representative_images,
  tflite_model,
  write_tflite,
)
from retrain.features.modules import FeatureModule
from retrain.head.model import Head

INTERMEDIATE_PATTERN = 'intermediate_{steps}.pb'


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
      import tf2onnx  # noqa: F401
    except ImportError as e:
      raise OutputError('onnx_output_file needs tf2onnx: pip install '
                        '"retrain[onnx]" (or leave it empty).',
                        fields=('onnx_output_file',)) from e
  if options.max_quantization_loss < 0:
    raise OutputError(f'max_quantization_loss='
                      f'{options.max_quantization_loss} must be 0 or more '
                      '(points of top-1 accuracy).',
                      fields=('max_quantization_loss',))
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
  classifier = export_lib.classifier_for(module, head, final_tensor_name)
  height, width = module.input_size

  @tf.function(input_signature=[tf.TensorSpec(
      [None, height, width, 3], tf.float32, name=INPUT_TENSOR_NAME)])
  def classify(images):
    # _classify names its softmax op `final_tensor_name`; calling it here
    # (not the tf.function) keeps that op at the top level of the graph.
    outputs = classifier._classify(images)  # noqa: SLF001 the classifier's own untraced call
    return [outputs[k] for k in (PROBABILITIES_OUTPUT, NOVELTY_OUTPUT)
            if k in outputs]

  outputs = [final_tensor_name] + (
      [NOVELTY_OUTPUT] if head.novelty is not None else [])
  graph_def = _freeze(classify.get_concrete_function(), *outputs)
  if _activation_named(graph_def, final_tensor_name):
    _prune(graph_def, *outputs)
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
  from tensorflow.python.framework import convert_to_constants
  try:
    data = convert_to_constants._FunctionConverterDataInEager(  # noqa: SLF001 TensorFlow has no public way to freeze a function
        func=function, lower_control_flow=True, aggressive_inlining=False)
    graph_def, _ = convert_to_constants._replace_variables_by_constants(  # noqa: SLF001 TensorFlow has no public way to freeze a function
        converter_data=data)
    del data  # its copy of every weight
  except AttributeError:
    graph_def = convert_to_constants.convert_variables_to_constants_v2(
        function).graph.as_graph_def()
  _prune(graph_def, output, *more)
  return graph_def


def _activation_named(graph_def: tf.compat.v1.GraphDef, name: str) -> bool:
  """When op `name` is an Identity of the softmax (or sigmoid), as in a
  classifier loaded from a SavedModel (retrain.export.from_disk), renames
  that activation `name` in its place, in place: retrain.py's graphs have
  a Softmax op `final_result`. Returns whether it did."""
  nodes = {node.name: node for node in graph_def.node}
  node, source = nodes.get(name), None
  while node is not None and node.op == 'Identity' and node.input:
    source = nodes.get(node.input[0].lstrip('^').split(':')[0])
    node = source
  if source is None or source.op not in ('Softmax', 'Sigmoid'):
    return False
  old = source.name
  graph_def.node.remove(nodes[name])
  source.name = name
  for other in graph_def.node:
    for i, value in enumerate(other.input):
      if value == old or value.startswith(old + ':') or value == '^' + old:
        other.input[i] = value.replace(old, name, 1)
  return True


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
  write_file(path, graph_def.SerializeToString())
  info = {'format': 'frozen_graph',
          'input_tensor': f'{INPUT_TENSOR_NAME}:0',
          'output_tensor': f'{final_tensor_name}:0',
          **((extra_metadata or {}) if head.multi_label else {})}
  if head.novelty is not None:
    info.update(novelty_tensor=f'{NOVELTY_OUTPUT}:0',
                novelty=head.novelty.metadata())
  write_sidecars(path, labels, module, info)
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


# --- ONNX ---------------------------------------------------------------------


def write_onnx_with(path: str, convert, extra_metadata: Optional[dict] = None
                    ) -> str:
  """Writes the ONNX model `convert(info)` returns (serialized; info: the
  model's own metadata fields, extra_metadata added) to `path`; returns
  path."""
  info = {'format': 'onnx', 'input_tensor': IMAGES_INPUT,
          'output_tensor': PROBABILITIES_OUTPUT}
  info.update(extra_metadata or {})
  try:
    model = convert(info)
  except onnx_format.OnnxUnavailable as e:
    raise OutputError(str(e)) from e
  write_file(path, model)
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

  Between two formats the memory the first one's converter left (graphs in
  reference cycles, freed heap pages) is released, so the peak is the
  largest single conversion's, not their sum.
  """
  written = {}
  if options.checkpoint_path:
    written['checkpoint'] = os.path.abspath(
        write_checkpoint(options.checkpoint_path, head))
    logging.info('Wrote the head checkpoint %s.', options.checkpoint_path)
  if options.output_graph:
    written['output_graph'] = frozen_graph_step(options, module, head, labels,
                                                extra_metadata)
    phases_lib.release_memory()
  if options.tflite_output_file:
    written['tflite'] = tflite_step(options, module, head, labels,
                                    calibration_paths, gate, extra_metadata)
    phases_lib.release_memory()
  if options.onnx_output_file:
    written['onnx'] = onnx_step(options, lambda info: onnx_format.onnx_model(
        module, head, labels, file_metadata(options.onnx_output_file, labels,
                                            module, info)), extra_metadata)
  return written


def frozen_graph_step(options, module: FeatureModule, head: Head,
                      labels: Sequence[str],
                      extra_metadata: Optional[dict] = None) -> str:
  """Writes options.output_graph and logs it; returns its absolute path.
  module and head: in memory, or a written export's
  (retrain.export.from_disk)."""
  started = time.monotonic()
  path = os.path.abspath(write_frozen_graph(
      options.output_graph, module, head, labels, options.final_tensor_name,
      extra_metadata))
  logging.info('Wrote the frozen graph %s (input %s, output %s) in %.1f s.',
               options.output_graph, INPUT_TENSOR_NAME,
               options.final_tensor_name, time.monotonic() - started)
  return path


def tflite_step(options, module: FeatureModule, head: Head,
                labels: Sequence[str], calibration_paths: Sequence[str],
                gate: Optional[quantization_check.Gate] = None,
                extra_metadata: Optional[dict] = None) -> str:
  """Writes options.tflite_output_file and logs it; returns its absolute
  path (see frozen_graph_step)."""
  started = time.monotonic()
  path = os.path.abspath(write_tflite(
      options.tflite_output_file, module, head, labels,
      options.tflite_quantization,
      calibration_sample(calibration_paths, options.tflite_calibration_images),
      gate, extra_metadata))
  log_tflite(options, started)
  return path


def log_tflite(options, started: float) -> None:
  """Logs that options.tflite_output_file was written, in the seconds
  since time.monotonic() was `started`."""
  logging.info('Wrote the TFLite model %s (%s quantization, %.1f MB) in '
               '%.1f s.', options.tflite_output_file,
               options.tflite_quantization,
               os.path.getsize(options.tflite_output_file) / 1e6,
               time.monotonic() - started)


def onnx_step(options, convert, extra_metadata: Optional[dict] = None) -> str:
  """Writes options.onnx_output_file and logs it; returns its absolute path.

  Args:
    convert: the converter (see write_onnx_with): onnx_format.onnx_model
      of the model in memory, or onnx_format.onnx_from_tflite.
  """
  started = time.monotonic()
  path = write_onnx_with(options.onnx_output_file, convert, extra_metadata)
  logging.info('Wrote the ONNX model %s (%.1f MB) in %.1f s.', path,
               os.path.getsize(path) / 1e6, time.monotonic() - started)
  return os.path.abspath(path)
