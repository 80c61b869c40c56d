"""Loading a TFLite model (.tflite) to classify with, and the labels and
metadata packed in it."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Callable, List, Optional, Tuple

from absl import logging

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


def read_embedded(path: str) -> Tuple[Optional[List[str]], Optional[dict]]:
  """(labels, metadata) packed in the .tflite file at `path`, each None when
  absent.

  retrain.export.tflite_metadata.embed packs them as the model's associated
  files, a zip archive appended to the flatbuffer (as MediaPipe's metadata
  writer does): labels.txt (row j is class id j; blank lines skipped) and
  retrain_metadata.json (a JSON object). A part that cannot be read (not
  UTF-8, not a JSON object) is left out with a warning naming the file, and
  the other part is still returned; a file without the archive gives
  (None, None).
  """
  try:
    with zipfile.ZipFile(path) as archive:
      packed = set(archive.namelist())
      labels = (archive.read(LABELS_FILE) if LABELS_FILE in packed else None)
      meta = (archive.read(METADATA_FILE) if METADATA_FILE in packed
              else None)
  except (zipfile.BadZipFile, OSError):
    return None, None
  if labels is not None:
    try:
      labels = [line for line in labels.decode('utf-8').splitlines()
                if line.strip()] or None
    except UnicodeDecodeError:
      logging.warning('The %s embedded in %s is not UTF-8 text; ignoring '
                      'it.', LABELS_FILE, path)
      labels = None
  if meta is not None:
    try:
      meta = json.loads(meta.decode('utf-8'))
    except ValueError:
      meta = None
    if not isinstance(meta, dict):
      logging.warning('The %s embedded in %s is not a JSON object; ignoring '
                      'it.', METADATA_FILE, path)
      meta = None
  return labels, meta
