"""The frozen graph, TFLite and ONNX exports converted from the SavedModel
a run wrote first, one format after the other.

Each converter keeps part of what it allocated (TensorFlow's native state),
so conversions in one process stack up; converted from the files on disk,
each can run in a fresh process that holds nothing else (`python -m
retrain` hands its last exports to `retrain.export_job`, which starts a
fresh process per format). Measured on the default three-module ensemble,
fine-tuned, one fresh process each (bench/memory.py): frozen graph
0.93 GB, TFLite 1.00 GB, ONNX (from the float TFLite model) 1.30 GB.

The files are those the in-memory route writes: the same tensor names
(frozen graph `Placeholder` -> `final_result`, `novelty`), signatures,
metadata and sidecars (retrain.export.formats), and the same predictions
within float rounding. ONNX is converted from the float TFLite model
(tf2onnx reads a flatbuffer in less memory than a TensorFlow graph) and
keeps the names `images`, `probabilities` and `novelty`.

A plan (`Plan`, a JSON file) says what is left to do, so that each stage
can run in a process of its own: the SavedModel folder, the settings, the
formats still to convert and what was written so far. `finish` then
records the written files in the SavedModel's metadata and in the
deployment report.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import List, Optional

from absl import logging

from retrain.common import atomic, names
from retrain.common.names import METADATA_FILE, SERVING_SIGNATURE

# The stages, in the order they run: tflite converts, tflite_metadata
# embeds the metadata and writes the file; float_tflite (a float model for
# the ONNX conversion when the TFLite export is quantised or not asked
# for) and onnx come last.
STAGES = ('output_graph', 'tflite', 'tflite_metadata', 'float_tflite',
          'onnx')
PLAN_PREFIX = 'retrain-exports-'


@dataclasses.dataclass
class SavedNovelty:
  """The novelty score a SavedModel computes, as its metadata describes
  it (what retrain.head.novelty.Novelty.metadata returned) and, once read
  from its variables (SavedModule.saved_head), its arrays."""
  described: dict
  arrays: Optional[dict] = None

  def metadata(self) -> dict:
    return self.described

  def graph_arrays(self) -> dict:
    """The score's arrays as retrain.head.novelty.Novelty.graph_arrays
    gives them (name -> float32 array), as the SavedModel holds them."""
    return self.arrays


@dataclasses.dataclass
class SavedHead:
  """What the export writers read of the head of a written SavedModel."""
  novelty: Optional[SavedNovelty] = None
  multi_label: bool = False


@dataclasses.dataclass
class SavedModule:
  """A written SavedModel export in the place of a FeatureModule for the
  export writers: the module's identity (from the export's metadata) and,
  through `saved_classifier`, the classifier it serves.

  Attributes:
    path: the SavedModel folder; input_size: (height, width).
    int8_members: with int8 bottlenecks, [(int8 model file, [height,
      width])] per member (retrain.export.int8_tflite.int8_members, from
      the plan), which the int8 TFLite export holds as they are.
  """
  path: str
  handle: str
  resolved: str
  fingerprint: str
  output_dim: int
  input_size: tuple
  int8_members: tuple = ()

  def saved_classifier(self, head: SavedHead, final_tensor_name: str):
    """The classifier of the export, loaded anew (freed with it), with the
    novelty output only when `head` has one (see _loaded_classifier)."""
    import tensorflow as tf
    return _loaded_classifier(tf.saved_model.load(self.path), self.input_size,
                              final_tensor_name, head.novelty is not None)

  def saved_head(self, head: SavedHead):
    """The retrain.head.model.Head the export holds (weights, biases and,
    when `head` has a novelty score, a SavedNovelty with its arrays), read
    from the SavedModel's variables without loading its graph."""
    from retrain.head.model import Head
    arrays = saved_head_arrays(self.path)
    novelty = None
    if head.novelty is not None:
      novelty = SavedNovelty(head.novelty.described, arrays['novelty'])
    return Head(arrays['weights'], arrays['biases'], novelty=novelty,
                multi_label=head.multi_label)


def saved_head_arrays(path: str) -> dict:
  """The head of the SavedModel export at `path`, read from its variables
  checkpoint (only these tensors; no graph is loaded):
  {'weights': float32 [D, N], 'biases': float32 [N] (column j is class id
  j), 'novelty': {name: float32 array} of the novelty score (as
  retrain.head.novelty.Novelty.graph_arrays names them), {} without one}."""
  import tensorflow as tf

  from retrain.export import formats
  prefix = os.path.join(path, 'variables', 'variables')
  head = formats.read_checkpoint(prefix)
  reader = tf.train.load_checkpoint(prefix)
  suffix = '/.ATTRIBUTES/VARIABLE_VALUE'
  novelty = {key[len('_novelty/'):-len(suffix)]: reader.get_tensor(key)
             for key in reader.get_variable_to_shape_map()
             if key.startswith('_novelty/') and key.endswith(suffix)}
  return {'weights': head.weights, 'biases': head.biases, 'novelty': novelty}


def _loaded_classifier(loaded, input_size, final_tensor_name: str,
                       novelty: bool):
  """A tf.Module like retrain.export.saved_model.Classifier (`classify`
  tf.function, `_classify` untraced) that calls the loaded SavedModel's
  serving signature: float32 [batch, H, W, 3] in [0, 1] -> {probabilities
  float32 [batch, N] (op `final_tensor_name`), novelty float32 [batch]
  (op `novelty`, when asked)}."""
  import tensorflow as tf

  from retrain.common.names import (
    IMAGES_INPUT,
    NOVELTY_OUTPUT,
    PROBABILITIES_OUTPUT,
  )

  class LoadedClassifier(tf.Module):
    """The loaded export's serving signature, its outputs renamed."""

    def __init__(self):
      super().__init__(name='retrained_classifier')
      self.loaded = loaded
      height, width = input_size
      self.classify = tf.function(
          self._classify,
          input_signature=[tf.TensorSpec([None, height, width, 3],
                                         tf.float32, name=IMAGES_INPUT)])

    def _classify(self, images):
      served = self.loaded.signatures[SERVING_SIGNATURE](images=images)
      outputs = {PROBABILITIES_OUTPUT: tf.identity(
          served[PROBABILITIES_OUTPUT], name=final_tensor_name)}
      if novelty:
        outputs[NOVELTY_OUTPUT] = tf.identity(served[NOVELTY_OUTPUT],
                                              name=NOVELTY_OUTPUT)
      return outputs

  return LoadedClassifier()


def open_export(path: str):
  """(SavedModule, SavedHead, labels) of the SavedModel export at `path`."""
  with open(os.path.join(path, METADATA_FILE), encoding='utf-8') as f:
    meta = json.load(f)
  module = meta['module']
  saved = SavedModule(path, module['handle'], module['resolved'],
                      module['fingerprint'], module['output_dim'],
                      (meta[names.META_INPUT_HEIGHT],
                       meta[names.META_INPUT_WIDTH]))
  novelty = meta.get(names.META_NOVELTY)
  head = SavedHead(SavedNovelty(novelty) if novelty else None)
  return saved, head, list(meta[names.META_LABELS])


# --- The plan -----------------------------------------------------------------


def new_plan(options, saved_model_dir: str, calibration_paths, gate,
             extra_metadata: dict, written: dict) -> dict:
  """The plan of the conversions `options` (config.outputs) ask for, from
  the export at `saved_model_dir`.

  Args:
    calibration_paths: the training images int8 calibration may use; the
      plan keeps only the sample it calibrates on (calibration_sample of
      options.tflite_calibration_images), none without an int8 TFLite.
    gate: the retrain.export.quantization_check.Gate of a quantised
      TFLite model.
    extra_metadata: stored in the TFLite and ONNX metadata.
    written: what was written already ({'checkpoint': prefix, ...}).
  """
  stages = []
  if options.output_graph:
    stages.append('output_graph')
  if options.tflite_output_file:
    stages += ['tflite', 'tflite_metadata']
  if options.onnx_output_file:
    if not (options.tflite_output_file and
            options.tflite_quantization == 'none'):
      stages.append('float_tflite')
    stages.append('onnx')
  calibration = []
  if options.tflite_output_file and options.tflite_quantization == 'int8':
    from retrain.export import tflite_format
    calibration = tflite_format.calibration_sample(
        calibration_paths, options.tflite_calibration_images)
  return {
      'saved_model_dir': os.path.abspath(saved_model_dir),
      'stages': stages, 'done': [],
      'calibration_paths': calibration,
      'gate': None if gate is None else {
          'paths': list(gate.paths),
          'labels': [int(y) for y in gate.labels], 'subset': gate.subset,
          'max_loss_points': gate.max_loss_points,
          'keep_lossy': gate.keep_lossy,
          'calibration_count': gate.calibration_count},
      'extra_metadata': extra_metadata, 'written': dict(written),
      'quantization_checks': [],
      'temporary': {name: os.path.join(
          tempfile.gettempdir(), f'{PLAN_PREFIX}{os.getpid()}-{name}.tflite')
          for name in ('tflite', 'float_tflite')},
  }


def write_plan(plan: dict, path: Optional[str] = None) -> str:
  """Writes `plan` (atomically) to `path`, by default a new file in the
  temporary folder; returns the path."""
  if path is None:
    fd, path = tempfile.mkstemp(prefix=PLAN_PREFIX, suffix='.json')
    os.close(fd)
  return atomic.write_json(path, plan)


def read_plan(path: str) -> dict:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def pending(plan: dict) -> List[str]:
  """The stages of `plan` still to run, in order."""
  return [s for s in plan['stages'] if s not in plan['done']]


def run_stage(plan: dict, stage: str, options) -> None:
  """Runs one stage of `plan` (see STAGES) and records it there.

  Args:
    options: the run's config.outputs.

  Raises:
    OutputError: a quantised model lost too much accuracy; the converter
      failed.
  """
  from retrain.export import formats as export_formats
  from retrain.export import onnx_format, tflite_format
  module, head, labels = open_export(plan['saved_model_dir'])
  module.int8_members = tuple(plan.get('int8_members', ()))
  extra, written, temporary = (plan['extra_metadata'], plan['written'],
                               plan['temporary'])
  if stage == 'output_graph':
    written['output_graph'] = export_formats.frozen_graph_step(
        options, module, head, labels, extra)
  elif stage == 'tflite':
    _convert_tflite(plan, options, module, head)
  elif stage == 'tflite_metadata':
    with open(temporary['tflite'], 'rb') as f:
      model = f.read()
    written['tflite'] = os.path.abspath(tflite_format.write_described(
        options.tflite_output_file, model, labels, module,
        plan['tflite_info']))
    export_formats.log_tflite(options, plan['tflite_started'])
  elif stage == 'float_tflite':
    started = time.monotonic()
    atomic.write_bytes(temporary['float_tflite'], tflite_format.tflite_model(
        module, head, 'none'))
    logging.info('Converted a float TFLite model for the ONNX export in '
                 '%.1f s.', time.monotonic() - started)
  elif stage == 'onnx':
    source = (temporary['float_tflite'] if 'float_tflite' in plan['stages']
              else options.tflite_output_file)
    written['onnx'] = export_formats.onnx_step(
        options, lambda info: onnx_format.onnx_from_tflite(
            source, labels, export_formats.file_metadata(
                options.onnx_output_file, labels, module, info),
            module.input_size), extra)
  plan['done'].append(stage)
  remove_temporary(plan)


def _convert_tflite(plan: dict, options, module: SavedModule,
                    head: SavedHead) -> None:
  """The `tflite` stage: the model converted (and checked when quantised)
  into a temporary file, its metadata fields into the plan; the
  `tflite_metadata` stage writes it."""
  from retrain.export import quantization_check, tflite_format
  plan['tflite_started'] = time.monotonic()
  gate = (quantization_check.Gate(**plan['gate'])
          if plan['gate'] is not None else None)
  model, plan['tflite_info'] = tflite_format.converted(
      options.tflite_output_file, module, head, options.tflite_quantization,
      plan['calibration_paths'], gate, plan['extra_metadata'])
  atomic.write_bytes(plan['temporary']['tflite'], model)
  plan['quantization_checks'] += [c.metadata() for c in
                                  (gate.results if gate else [])]


def remove_temporary(plan: dict, every: bool = False) -> None:
  """Removes the plan's temporary files no stage left needs (`every`:
  all of them)."""
  needs = {'tflite': 'tflite_metadata', 'float_tflite': 'onnx'}
  for name, path in plan['temporary'].items():
    if (every or needs[name] in plan['done'] or
        needs[name] not in plan['stages']) and os.path.exists(path):
      os.remove(path)


def run_all(plan: dict, options) -> None:
  """Runs every stage of `plan` in this process, one after the other,
  then `finish`es it; options: the run's config.outputs."""
  from retrain.common import phases as phases_lib
  phases_lib.release_memory()
  try:
    for stage in pending(plan):
      run_stage(plan, stage, options)
      phases_lib.release_memory()
    finish(plan, options.report_dir)
  finally:
    remove_temporary(plan, every=True)


def finish(plan: dict, report_dir: str) -> None:
  """Records what the stages wrote in the SavedModel's metadata
  (`other_exports`, `quantization_checks`) and in
  <report_dir>/deployment.json (`exports`, `quantization_checks`)."""
  path = os.path.join(plan['saved_model_dir'], METADATA_FILE)
  for target in (path, os.path.join(report_dir, 'deployment.json')):
    if not os.path.isfile(target):
      continue
    with open(target, encoding='utf-8') as f:
      data = json.load(f)
    data['other_exports' if target == path else 'exports'] = plan['written']
    data['quantization_checks'] = plan['quantization_checks']
    atomic.write_json(target, data)
