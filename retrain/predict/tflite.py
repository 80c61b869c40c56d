"""Loading a TFLite model (.tflite) to classify with, and the labels and
metadata packed in it."""

from __future__ import annotations

import json
import os
import warnings
from typing import Callable, List, Optional, Tuple

import numpy as np

from retrain.common.names import LABELS_FILE, METADATA_FILE
from retrain.predict.common import LabelImageError, choose_size


def tflite_interpreter(content: bytes):
  try:  # The LiteRT package, if installed, is TFLite's successor.
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
  with warnings.catch_warnings():
    # tf.lite.Interpreter warns that it moves to LiteRT; it works in TF 2.21.
    warnings.simplefilter('ignore')
    return Interpreter(model_content=content, num_threads=os.cpu_count())


def load_tflite(path: str, height, width) -> Tuple[Callable, tuple]:
  with open(path, 'rb') as f:
    content = f.read()
  try:
    interpreter = tflite_interpreter(content)
  except (ValueError, RuntimeError) as e:
    raise LabelImageError(f'{path!r} is not a TFLite model ({e}).') from e
  inp = interpreter.get_input_details()[0]
  # The probabilities are the [batch, N] output; an output of rank 1 is
  # the novelty score [batch].
  outs = interpreter.get_output_details()
  out = next((o for o in outs if len(o['shape_signature']) == 2), outs[0])
  extra = [o for o in outs if len(o['shape_signature']) == 1]
  shape = list(inp['shape_signature'])
  size = choose_size(tuple(d if d > 0 else None for d in shape[1:3]),
                      height, width, path)
  state = {'batch': None}

  def output(details):
    result = interpreter.get_tensor(details['index'])
    if details['dtype'] != np.float32:  # An integer output: dequantize it.
      scale, zero = details['quantization']
      result = (result.astype(np.float32) - zero) * scale
    return result

  def predict(images):
    if state['batch'] != len(images):
      interpreter.resize_tensor_input(inp['index'],
                                      [len(images), size[0], size[1], 3])
      interpreter.allocate_tensors()
      state['batch'] = len(images)
    interpreter.set_tensor(inp['index'], images.astype(inp['dtype']))
    interpreter.invoke()
    return output(out)

  if extra:
    def both(images):
      return predict(images), output(extra[0])
    predict.with_novelty = both
  return predict, size


def embedded_tflite_metadata(path: str
                             ) -> Tuple[Optional[List[str]], Optional[dict]]:
  """(labels, metadata) packed in a .tflite file (a zip archive appended to
  the flatbuffer, as MediaPipe's metadata writer packs them), or None."""
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    with zipfile.ZipFile(path) as archive:
      names = set(archive.namelist())
      labels = (archive.read(LABELS_FILE).decode('utf-8')
                if LABELS_FILE in names else None)
      meta = (json.loads(archive.read(METADATA_FILE))
              if METADATA_FILE in names else None)
  except (zipfile.BadZipFile, OSError, ValueError):
    return None, None
  return ([l for l in labels.splitlines() if l.strip()] if labels else None,
          meta)
