"""The one TFLite runner: opening a TFLite model and running images through it.

The bottlenecks' module on TFLite (retrain.features.tflite_runtime and
int8.py), the export's quantisation check (retrain.export.
quantization_check) and the .tflite loader of label_image and retrain.load
(retrain.predict.tflite) all run their models here, so all three run the
same runtime: LiteRT's interpreter when the ai_edge_litert package is
installed (TFLite's successor), else TensorFlow's tf.lite.Interpreter.

Imports neither runtime (nor TensorFlow) until a model is opened.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import numpy as np


def interpreter_class():
  """The LiteRT interpreter when installed, else TensorFlow's own."""
  try:
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter
  except ImportError:
    import tensorflow as tf
    return tf.lite.Interpreter


def open_interpreter(**kwargs):
  """An interpreter of `interpreter_class()`, made with kwargs (model_path
  or model_content, num_threads)."""
  with warnings.catch_warnings():
    # tf.lite.Interpreter warns that it moves to LiteRT; it works in TF 2.21.
    warnings.simplefilter('ignore')
    return interpreter_class()(**kwargs)


class TFLiteRunner:
  """images [n, H, W, 3] -> every output of a TFLite model, float32.

  An integer output (a quantised model's) is dequantised with its scale
  and zero point; a float32 one is returned as the model gives it.

  Args:
    interpreter: from open_interpreter.
    invoke_batch: images per invoke, the input resized to that batch once;
      a shorter last group is padded with zeros (a resize would re-plan the
      whole graph). None: all of a call's images in one invoke, the input
      resized whenever the number of images changes.
    input_size: (height, width) of the input; None: the model's own.
  """

  def __init__(self, interpreter, invoke_batch: Optional[int] = None,
               input_size: Optional[Sequence[int]] = None):
    self.interpreter = interpreter
    self.input = interpreter.get_input_details()[0]
    self.outputs = interpreter.get_output_details()
    self._size = tuple(input_size or self.input['shape'][1:3])
    self._fixed = invoke_batch
    self._batch = None
    self._resize(invoke_batch or 1)

  def _resize(self, batch: int) -> None:
    if batch != self._batch:
      self.interpreter.resize_tensor_input(
          self.input['index'], [batch, self._size[0], self._size[1], 3])
      self.interpreter.allocate_tensors()
      self._batch = batch

  def _output(self, details: dict, count: int) -> np.ndarray:
    result = self.interpreter.get_tensor(details['index'])[:count]
    if details['dtype'] != np.float32:  # An integer output: dequantize it.
      scale, zero = details['quantization']
      return (result.astype(np.float32) - zero) * scale
    return result.copy()

  def run(self, images) -> List[np.ndarray]:
    """Every output for images [n, H, W, 3] (n >= 1), in the order of the
    model's output details, each [n, ...] float32."""
    images = np.asarray(images)
    n = images.shape[0]
    step = self._fixed or n
    self._resize(step)
    parts = [[] for _ in self.outputs]
    for start in range(0, n, step):
      part = images[start:start + step]
      if part.shape[0] < step:
        pad = np.zeros((step - part.shape[0],) + part.shape[1:], part.dtype)
        part = np.concatenate([part, pad])
      # No copy when the images already have the input's dtype (float32
      # for the bottleneck models): set_tensor copies them in anyway.
      self.interpreter.set_tensor(self.input['index'], np.ascontiguousarray(
          part, self.input['dtype']))
      self.interpreter.invoke()  # releases the GIL
      for kept, details in zip(parts, self.outputs, strict=True):
        kept.append(self._output(details, min(step, n - start)))
    return [np.concatenate(kept) for kept in parts]
