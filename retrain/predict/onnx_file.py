"""Loading an ONNX model (.onnx, run with onnxruntime) to classify with."""

from __future__ import annotations

import json
from typing import Callable, Tuple

import numpy as np

from retrain.common.names import (
  META_LABELS,
  NOVELTY_OUTPUT,
  ONNX_LABELS_KEY,
  ONNX_METADATA_KEY,
  PROBABILITIES_OUTPUT,
)
from retrain.predict.common import LabelImageError, choose_size


def load_onnx(path: str, height, width) -> Tuple[Callable, tuple, dict]:
  try:
    import onnxruntime
  except ImportError as e:
    raise LabelImageError(f'{path} is an ONNX model: pip install onnxruntime '
                          '(or "retrain[onnx]") to run it.') from e
  try:
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
  except Exception as e:
    raise LabelImageError(f'{path!r} is not an ONNX model ({e}).') from e
  inp = session.get_inputs()[0]
  size = choose_size(tuple(d if isinstance(d, int) and d > 0 else None
                            for d in inp.shape[1:3]), height, width, path)

  outputs = [o.name for o in session.get_outputs()]
  first = (PROBABILITIES_OUTPUT if PROBABILITIES_OUTPUT in outputs
           else outputs[0])

  def predict(images):
    return session.run([first], {inp.name: images.astype(np.float32)})[0]

  if NOVELTY_OUTPUT in outputs:
    def both(images):
      return tuple(session.run([first, NOVELTY_OUTPUT],
                               {inp.name: images.astype(np.float32)}))
    predict.with_novelty = both

  props = session.get_modelmeta().custom_metadata_map
  if ONNX_METADATA_KEY in props:
    meta = json.loads(props[ONNX_METADATA_KEY])
  else:
    meta = ({META_LABELS: json.loads(props[ONNX_LABELS_KEY])}
            if ONNX_LABELS_KEY in props else {})
  return predict, size, meta
