"""The classifier as a TFLite model (`--tflite_output_file`).

One float32 input [batch, H, W, 3] in [0, 1], one float32 output
[batch, N] (column j is class id j), whatever the quantization (`none`,
`dynamic`, `float16`, `int8`; int8 is calibrated on a sample of training
images and keeps float input and output, so every consumer feeds the same
thing; with int8 bottlenecks it holds the members' int8 models as they
are instead, retrain.export.int8_tflite); with a novelty score, a second
output float32 [batch] (not in calibrated int8 models: see
_without_novelty). The file
carries its metadata inside (labels, normalisation, rejection threshold;
`retrain.export.tflite_metadata`) when the optional mediapipe package is
installed, and always has the labels and metadata files beside it
(`retrain.export.files`). A quantised model is checked against the float
model on held-out images before it is written
(`retrain.export.quantization_check`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from retrain import images as images_lib
from retrain.common import names
from retrain.common import phases as phases_lib
from retrain.common.names import (
  NOVELTY_OUTPUT,
  OUTPUT_TENSOR_NAME,
  PROBABILITIES_OUTPUT,
  QUANTIZATIONS,
  SERVING_SIGNATURE,
)
from retrain.errors import OutputError
from retrain.export import int8_tflite, quantization_check, tflite_metadata
from retrain.export import saved_model as export_lib
from retrain.export.files import file_metadata, write_file, write_sidecars
from retrain.features.modules import FeatureModule
from retrain.head import math as head_math
from retrain.head.model import Head


def calibration_sample(paths: Sequence[str], count: int) -> List[str]:
  """Up to `count` of `paths`, spread evenly over them (they are sorted by
  class, so every class is seen)."""
  return [paths[i] for i in head_math.evenly_spread(len(paths), count)]


def representative_images(paths: Sequence[str], size, count: int
                          ) -> Callable[[], Iterable[List[np.ndarray]]]:
  """A TFLite representative dataset: up to `count` of `paths`, decoded.

  The sample is spread evenly over `paths` (calibration_sample); files
  that cannot be decoded are passed over.
  """
  paths = calibration_sample(paths, count)

  def generate():
    for path in paths:
      try:
        image = images_lib.load_image(path, size)
      except Exception:  # noqa: BLE001 unreadable photos were reported by the bottleneck step
        continue  # Already reported by the bottleneck step.
      yield [image.numpy()[None]]

  return generate


def tflite_model(module: FeatureModule, head: Head, quantization: str = 'none',
                 calibration: Optional[Callable] = None) -> bytes:
  """The classifier as a TFLite flatbuffer.

  Args:
    quantization: 'none' (float32), 'dynamic' (int8 weights), 'float16'
      (float16 weights) or 'int8' (int8 weights and activations, calibrated
      on `calibration`; input and output stay float32; when every member
      is an int8 model, int8_tflite.stitched_model: those models as they
      are, no calibration).
    calibration: a representative dataset (see representative_images);
      needed for 'int8'.
  """
  if quantization not in QUANTIZATIONS:
    raise OutputError(f'Unknown TFLite quantization {quantization!r}; use one '
                      f'of {", ".join(QUANTIZATIONS)}.')
  if quantization == 'int8' and int8_tflite.stitchable(module):
    model = int8_tflite.stitched_model(module, head)
    return _probabilities_first(model) if head.novelty is not None else model
  if quantization == 'int8' and calibration is None:
    raise OutputError('int8 TFLite quantization needs calibration images.')
  with tempfile.TemporaryDirectory(prefix='retrain-tflite-') as folder:
    # Converted from a SavedModel written first, with the traced function
    # and its graph freed before the conversion: from the concrete
    # function, the converter saves such a SavedModel itself but keeps the
    # function's graph while it loads and converts it (fine-tuned
    # three-module ensemble, one fresh process each: peak +676 MB against
    # +834 MB, and 60 MB less kept afterwards; the same model).
    _save_for_conversion(module, head, folder)
    phases_lib.release_memory()
    converter = tf.lite.TFLiteConverter.from_saved_model(
        folder, signature_keys=[SERVING_SIGNATURE])
    _configure(converter, quantization, calibration)
    model = converter.convert()
  return _probabilities_first(model) if head.novelty is not None else model


def _save_for_conversion(module: FeatureModule, head: Head, folder: str
                         ) -> None:
  """Saves the classifier to `folder` as a SavedModel whose one signature
  returns a list: probabilities float32 [batch, N] first (output 0 is what
  MediaPipe and every [batch, N] reader take), then novelty float32
  [batch] when the head has one."""
  classifier = export_lib.classifier_for(module, head, OUTPUT_TENSOR_NAME)
  height, width = module.input_size

  @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3],
                                              tf.float32)])
  def ordered(images):
    outputs = classifier._classify(images)  # noqa: SLF001 the classifier's own untraced call
    return [outputs[k] for k in (PROBABILITIES_OUTPUT, NOVELTY_OUTPUT)
            if k in outputs]

  tf.saved_model.save(classifier, folder, signatures={
      SERVING_SIGNATURE: ordered.get_concrete_function()})


def _configure(converter, quantization: str,
               calibration: Optional[Callable]) -> None:
  """Sets `converter`'s optimizations for `quantization` (see
  tflite_model)."""
  if quantization != 'none':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == 'float16':
    converter.target_spec.supported_types = [tf.float16]
  elif quantization == 'int8':
    converter.representative_dataset = calibration
    # Integer kernels where they exist, float for the rare op without one,
    # so conversion never fails on an unusual module.
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]


def _probabilities_first(model: bytes) -> bytes:
  """`model` with its outputs reordered so that output 0 is the [batch, N]
  probabilities and output 1 the novelty [batch]: the converter emitted
  them the other way round whatever the function's order, and MediaPipe
  and every [batch, N] reader take output 0."""
  import flatbuffers
  from tensorflow.lite.python import schema_py_generated as schema
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
    calibration_paths: the images int8 calibration may use; up to
      gate.calibration_count of them (spread evenly, calibration_sample),
      all of them without a gate.
    extra_metadata: more JSON-ready fields for the metadata (e.g.
      'confidence', with the rejection 'threshold').
  """
  model, info = converted(path, module, head, quantization,
                          calibration_paths, gate, extra_metadata)
  return write_described(path, model, labels, module, info)


def converted(path: str, module: FeatureModule, head: Head,
              quantization: str = 'none', calibration_paths: Sequence[str] = (),
              gate: Optional[quantization_check.Gate] = None,
              extra_metadata: Optional[dict] = None):
  """(the TFLite model, its metadata fields) of write_tflite, checked,
  before anything is written: write_described writes them, in a fresh
  process when the memory matters (embedding the metadata parses the
  whole model: +0.4 GB for the default ensemble, on top of what the
  converter keeps)."""
  info = {'format': 'tflite', names.META_QUANTIZATION: quantization}
  info.update(extra_metadata or {})
  stitched = quantization == 'int8' and int8_tflite.stitchable(module)
  if quantization == 'int8' and head.novelty is not None and not stitched:
    head = _without_novelty(head, info, path)
  calibration = None
  calibration_count = (gate.calibration_count if gate is not None else
                       len(calibration_paths))
  if quantization == 'int8' and not stitched:
    logging.info('Calibrating int8 quantization on %d training images.',
                 min(len(calibration_paths), calibration_count))
    calibration = representative_images(calibration_paths, module.input_size,
                                        calibration_count)
  model = tflite_model(module, head, quantization, calibration)
  if quantization != 'none' and gate is not None:
    info['quantization_check'] = _check_quantized(model, module, head,
                                                  quantization, gate)
  return model, info


def write_described(path: str, model: bytes, labels: Sequence[str],
                    module: FeatureModule, info: dict) -> str:
  """Writes `model` with its metadata embedded (when mediapipe is
  installed) to `path`, and its sidecars; returns path. info: the
  metadata fields write_tflite gathered."""
  model = _with_embedded_metadata(model, path, labels, module, info)
  write_file(path, model)
  write_sidecars(path, labels, module, info)
  return path


def _without_novelty(head: Head, info: dict, path: str) -> Head:
  """`head` without its novelty score, and info saying so: int8 quantises
  the score to the range the calibration photos (of the classes) give it,
  so photos far from every class all get the same clipped score, which
  can sit below the threshold; a broken "unknown" is worse than none."""
  info.pop(names.META_NOVELTY, None)
  info['novelty_left_out'] = (
      'int8 quantization clips the novelty score to the range of the '
      'calibration photos, so it cannot tell photos of none of the classes '
      'apart; the float32, dynamic and float16 exports carry it')
  logging.warning('The int8 TFLite model %s has no novelty output (%s).',
                  path, info['novelty_left_out'])
  return dataclasses.replace(head, novelty=None)


def _check_quantized(model: bytes, module: FeatureModule, head: Head,
                     quantization: str, gate: quantization_check.Gate
                     ) -> Optional[dict]:
  """Compares the quantised `model` with the float classifier; see write_tflite."""
  if not len(gate.paths):
    logging.warning('No %s images to check the %s TFLite model against the '
                    'float model; its accuracy is unchecked.', gate.subset,
                    quantization)
    return None
  classifier = export_lib.classifier_for(module, head, OUTPUT_TENSOR_NAME)

  def float_predict(batch):
    return classifier.classify(tf.constant(batch))[PROBABILITIES_OUTPUT].numpy()

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
  data = file_metadata(path, labels, module, info)
  threshold = float((info.get(names.META_CONFIDENCE) or {}).get(
      names.CONFIDENCE_THRESHOLD) or 0.0)
  quantization = info.get(names.META_QUANTIZATION, 'none')
  try:
    return tflite_metadata.embed(
        model, labels, data, threshold,
        description=(f'{len(labels)} classes, module {module.handle}, '
                     f'{quantization} quantization; '
                     f'input float32 [1, {module.input_size[0]}, '
                     f'{module.input_size[1]}, 3] in [0, 1]'))
  except tflite_metadata.MetadataWriterUnavailable as e:
    logging.info('TFLite metadata not embedded in %s (%s): MediaPipe Tasks '
                 'need it, so pip install "retrain[mediapipe]" for that; '
                 'the labels and metadata files beside it are written as '
                 'always.', path, e)
    return model
