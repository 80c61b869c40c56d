"""The check that an int8 member's TensorFlow ops give its int8 model's
vectors, made once per int8 model and recorded in the module cache.

The exports of an int8 run hold each int8 member as its int8 TFLite model
redone in TensorFlow ops (retrain.export.int8_graph.Int8Graph). That
translation is a pure function of the model file, of the translation code
and of TensorFlow, so it is checked once: the translated graph and the
int8 TFLite interpreter (XNNPACK, the runtime that made the cached
vectors) run PROBE_COUNT fixed synthetic images (the calibration rule's
images, retrain.features.int8.calibration_images: a fixed seed, never a
user's photo), and the largest difference of a vector element, in steps
of the model's output quantisation (its last DEQUANTIZE's scale), is
recorded beside the model: `<int8 model>.translation.json`.

A later run reads the record (at most MAX_RECORD_BYTES, every field
checked) and trusts it only when it describes this very model (size and
SHA-256 of the file), this translation (a hash of this file's and
int8_graph.py's source, and the TensorFlow version) and this probe; any
other record, or one that does not parse, is measured again. The
translation is taken when the recorded difference is at most
MAX_OUTPUT_STEPS (the bundled EfficientNet-Lite0/1/2 models: 0, bit for
bit); else the export falls back to the member's float module
(int8_graph.export_module).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.common import atomic
from retrain.features import cache_files, int8, tflite_runtime

RECORD_SUFFIX = '.translation.json'
# Probe images (the first calibration images) run through both.
PROBE_COUNT = 8
# Largest difference of a vector element between the translated graph and
# the interpreter, in output quantisation steps: a rounding step here and
# there (TFLite's kernels differ so among themselves), no more.
MAX_OUTPUT_STEPS = 2.0
# A record is a few hundred bytes; anything longer is not one.
MAX_RECORD_BYTES = 1 << 14
_FORMAT = 1


def record_path(model_path: str) -> str:
  """Where the translation record of the int8 model at `model_path` lives."""
  return model_path + RECORD_SUFFIX


def translation_check(graph: Callable, model_path: str,
                      input_size: Tuple[int, int]) -> dict:
  """The check of `graph` (the translation of the int8 model at
  `model_path`: float32 [n, H, W, 3] in [0, 1] -> float32 [n, D]): read
  from its record when one matches (module doc), else measured now and
  recorded (a cache that cannot be written is logged, not an error).

  Returns:
    {'int8_model': the file's name, 'probe_images': PROBE_COUNT,
    'max_output_steps': float >= 0, 'max_abs_difference': float >= 0
    (both None when not comparable), 'matches': max_output_steps <=
    MAX_OUTPUT_STEPS, 'measured': True when measured in this call, False
    when read from the record}.
  """
  identity = _identity(model_path, graph)
  recorded = read_record(record_path(model_path), identity)
  if recorded is None:
    recorded = _measure(graph, model_path, input_size)
    try:
      atomic.write_json(record_path(model_path), {**identity, **recorded})
    except OSError as e:
      logging.info('The translation check of %s is not recorded (%s); the '
                   'next run measures it again.', model_path, e)
    measured = True
  else:
    measured = False
  steps = recorded['max_output_steps']
  return {'int8_model': os.path.basename(model_path),
          'probe_images': PROBE_COUNT, **recorded,
          'matches': steps is not None and steps <= MAX_OUTPUT_STEPS,
          'measured': measured}


def _identity(model_path: str, graph) -> dict:
  """What a record must hold to describe this model, its translation
  (the source of this file and of the module defining `graph`'s class)
  and the probe."""
  model = cache_files.entry(model_path)
  translation = hashlib.sha256(tf.__version__.encode())
  for source in (__file__, sys.modules[type(graph).__module__].__file__):
    with open(source, 'rb') as f:
      translation.update(f.read())
  return {'format': _FORMAT, 'model_size': model['size'],
          'model_sha256': model['sha256'],
          'translation': translation.hexdigest(),
          'probe': f'{int8.QUANTIZATION} calibration images, first '
                   f'{PROBE_COUNT}'}


def read_record(path: str, identity: dict) -> Optional[dict]:
  """The record at `path` ({'max_output_steps', 'max_abs_difference'}:
  finite floats >= 0, or None when not comparable) when it parses and
  matches `identity`, else None."""
  try:
    with open(path, 'rb') as f:
      data = f.read(MAX_RECORD_BYTES + 1)
    if len(data) > MAX_RECORD_BYTES:
      return None
    record = json.loads(data.decode('utf-8'))
  except (OSError, ValueError):
    return None
  if not isinstance(record, dict) or any(
      record.get(k) != v for k, v in identity.items()):
    return None
  figures = {k: record.get(k) for k in ('max_output_steps',
                                        'max_abs_difference')}
  if not all(v is None or (isinstance(v, (int, float)) and
                           not isinstance(v, bool) and np.isfinite(v) and
                           v >= 0) for v in figures.values()):
    return None
  return {k: None if v is None else float(v) for k, v in figures.items()}


def _measure(graph: Callable, model_path: str,
             input_size: Tuple[int, int]) -> dict:
  """{'max_output_steps', 'max_abs_difference'} of `graph` against the
  int8 interpreter of `model_path` on the probe images; both None when
  the two cannot be compared (other shapes, an output not dequantised)."""
  started = time.monotonic()
  images = int8.calibration_images(tuple(input_size), PROBE_COUNT)
  want = tflite_runtime.TFLiteCall(model_path, tuple(input_size),
                                   interpreters=1)(images).numpy()
  got = np.asarray(graph(tf.constant(images)), np.float64)
  step = _output_step(model_path)
  figures = {'max_output_steps': None, 'max_abs_difference': None}
  if got.shape == want.shape and step:
    difference = float(np.max(np.abs(got - want)))
    figures = {'max_output_steps': difference / step,
               'max_abs_difference': difference}
  logging.info('Checked the TensorFlow ops of %s against its int8 model on '
               '%d fixed probe images in %.1f s (once per model; recorded '
               'beside it): %s.', os.path.basename(model_path), PROBE_COUNT,
               time.monotonic() - started, describe(figures))
  return figures


def describe(check: dict) -> str:
  """'they differ by up to N output steps' (or why they cannot be
  compared) of a check's figures."""
  steps = check['max_output_steps']
  if steps is None:
    return ('their outputs cannot be compared (other shapes, or an output '
            'that is not a dequantised int8 tensor)')
  return f'they differ by up to {steps:g} output steps'


def _output_step(model_path: str) -> Optional[float]:
  """The quantisation scale of the int8 tensor the model's output is
  dequantised from, or None when its output is not a DEQUANTIZE's."""
  from tensorflow.lite.tools import flatbuffer_utils
  model = flatbuffer_utils.read_model(model_path)
  graph = model.subgraphs[0]
  output = graph.outputs[0]
  for op in graph.operators:
    if op.outputs is not None and output in list(op.outputs):
      quant = graph.tensors[op.inputs[0]].quantization
      if quant is None or quant.scale is None or not len(quant.scale):
        return None
      return float(quant.scale[0])
  return None
