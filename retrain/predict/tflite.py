"""Loading a TFLite model (.tflite) to classify with, and the labels and
metadata packed in it."""

from __future__ import annotations

import json
import os
from typing import Callable, List, Optional, Tuple

from retrain.common.names import LABELS_FILE, METADATA_FILE
from retrain.features import tflite_runner
from retrain.predict.common import LabelImageError, choose_size


def load_tflite(path: str, height, width) -> Tuple[Callable, tuple]:
  """(predict, size) of a .tflite file, run by retrain.features.tflite_runner
  (the runner and runtime of the bottlenecks and the quantisation check)."""
  with open(path, 'rb') as f:
    content = f.read()
  try:
    interpreter = tflite_runner.open_interpreter(
        model_content=content, num_threads=os.cpu_count())
  except (ValueError, RuntimeError) as e:
    raise LabelImageError(f'{path!r} is not a TFLite model ({e}).') from e
  inp = interpreter.get_input_details()[0]
  # The probabilities are the [batch, N] output; an output of rank 1 is
  # the novelty score [batch].
  outs = interpreter.get_output_details()
  ranks = [len(o['shape_signature']) for o in outs]
  out = ranks.index(2) if 2 in ranks else 0
  extra = [k for k, rank in enumerate(ranks) if rank == 1]
  shape = list(inp['shape_signature'])
  size = choose_size(tuple(d if d > 0 else None for d in shape[1:3]),
                     height, width, path)
  runner = tflite_runner.TFLiteRunner(interpreter, input_size=size)

  def predict(images):
    return runner.run(images)[out]

  if extra:
    def both(images):
      outputs = runner.run(images)
      return outputs[out], outputs[extra[0]]
    predict.with_novelty = both
  return predict, size


def embedded_tflite_metadata(path: str
                             ) -> Tuple[Optional[List[str]], Optional[dict]]:
  """(labels, metadata) packed in a .tflite file (a zip archive appended to
  the flatbuffer, as MediaPipe's metadata writer packs them), or None."""
  import zipfile
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
