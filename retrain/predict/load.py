"""Loading a retrain export to classify with: a SavedModel folder, or a
frozen graph (.pb), TFLite (.tflite) or ONNX (.onnx) file, from the export
alone (its labels and metadata in or beside it, or embedded in it).

`load_model` returns a `Model` whose `predict` takes float32 images
[batch, H, W, 3] (in [0, 1] by default) and returns float32 probabilities
[batch, N], column j = labels[j]. One loader per format, each in its own
module: saved_model, frozen_graph, tflite, onnx_file. tools/label_image.py
and retrain.evaluate both use it. TensorFlow (or onnxruntime) is imported
only when a model is loaded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from retrain.common import names
from retrain.common.names import (
  INPUT_TENSOR_NAME,
  LABELS_FILE,
  LABELS_SUFFIX,
  METADATA_SUFFIX,
  OUTPUT_TENSOR_NAME,
)
from retrain.predict import frozen_graph, onnx_file, saved_model, tflite
from retrain.predict.common import LabelImageError, read_json

# The defaults of label_image's flags.
# retrain's models take pixels in [0, 1]: (pixel - 0) / 255 with pixels in
# [0, 255], the convention of TensorFlow's label_image flags.
DEFAULT_INPUT_MEAN = 0.0
DEFAULT_INPUT_STD = 255.0
DEFAULT_INPUT_LAYER = INPUT_TENSOR_NAME
DEFAULT_OUTPUT_LAYER = OUTPUT_TENSOR_NAME
DEFAULT_TOP_K = 5
# The default ensemble's activations grow with the batch: on 641 photos
# (2 cores) batches of 32 peaked at 2.09 GB of memory and took 4:02, of 8
# at 1.27 GB and 2:58, with the same predictions.
DEFAULT_BATCH_SIZE = 8


@dataclasses.dataclass
class Model:
  """A classifier ready to run.

  Attributes:
    kind: 'saved_model', 'frozen_graph', 'tflite' or 'onnx'.
    path: the export folder or model file.
    labels: class names; column j of the output is labels[j].
    input_size: (height, width) of the input images.
    predict: float32 [batch, H, W, 3] (in [0, 1] by default) ->
      float32 [batch, N] probabilities.
  """
  kind: str
  path: str
  labels: List[str]
  input_size: Tuple[int, int]
  predict: Callable[[np.ndarray], np.ndarray]
  # The rejection threshold stored in the export (0: none), in [0, 1].
  threshold: float = 0.0
  # () -> novelty float32 [batch] of the images of the last `predict` call
  # when the export computes a novelty score, else None; above
  # novelty_threshold (from the export's metadata) an image is not like
  # any class.
  last_novelty: Optional[Callable[[], np.ndarray]] = None
  novelty_threshold: float = float('inf')
  # A multi-label model's threshold of each label (column order), else None.
  label_thresholds: Optional[List[float]] = None


# --- Loading a model ------------------------------------------------------------


def _read_labels(path: str) -> List[str]:
  try:
    with open(path, encoding='utf-8') as f:
      return [line.rstrip('\n') for line in f if line.strip()]
  except OSError as e:
    raise LabelImageError(f'Cannot read the labels file {path!r} '
                          f'({e.strerror or e}): pass --labels with the '
                          'labels file written by retrain.') from e


def _sidecars(path: str) -> Tuple[Optional[dict], Optional[str]]:
  """(metadata, labels path) written beside a .pb or .tflite file.

  X.pb.metadata.json and X.pb.labels.txt (named after the whole file,
  retrain.common.names.METADATA_SUFFIX, LABELS_SUFFIX), or X.metadata.json and
  X.labels.txt as earlier exports named them; those are used only if the
  metadata names this model file (a .pb and a .tflite of one stem shared
  them, and the later one won).
  """
  stem = os.path.splitext(path)[0]
  for base in (path, stem):
    metadata = read_json(base + METADATA_SUFFIX)
    if base == stem and metadata is not None and metadata.get(
        names.META_MODEL_FILE, os.path.basename(path)
    ) != os.path.basename(path):
      continue
    labels = base + LABELS_SUFFIX
    labels = labels if os.path.isfile(labels) else None
    if metadata is not None or labels is not None:
      return metadata, labels
  return None, None


def _load_graph_file(graph: str, input_layer: str, output_layer: str,
                     height, width, trust: bool = False):
  """(kind, predict, size, metadata, labels from metadata, labels file) of a
  .pb, .tflite or .onnx file."""
  meta, default_labels = _sidecars(graph)
  meta_labels = (meta or {}).get(names.META_LABELS)
  if graph.lower().endswith('.tflite'):
    predict, size = tflite.load_tflite(graph, height, width)
    if meta is None or not meta_labels:  # No side files: the embedded.
      embedded_labels, embedded = tflite.read_embedded(graph)
      meta = meta or embedded
      meta_labels = meta_labels or embedded_labels
    return 'tflite', predict, size, meta, meta_labels, default_labels
  if graph.lower().endswith('.onnx'):
    predict, size, onnx_meta = onnx_file.load_onnx(graph, height, width)
    return ('onnx', predict, size, meta or onnx_meta,
            meta_labels or onnx_meta.get(names.META_LABELS), default_labels)
  predict, size = frozen_graph.load_frozen_graph(graph, input_layer, output_layer,
                                     height, width, trust)
  return 'frozen_graph', predict, size, meta, meta_labels, default_labels


def _stored_novelty_threshold(meta: Optional[dict]) -> float:
  """The novelty threshold in an export's metadata, inf when none."""
  value = ((meta or {}).get(names.META_NOVELTY) or {}).get(
      names.NOVELTY_THRESHOLD)
  return float(value) if value is not None else float('inf')


def _stored_label_thresholds(meta: Optional[dict], count: int
                             ) -> Optional[List[float]]:
  """A multi-label export's per-label thresholds (label order), else None.

  Raises:
    LabelImageError: the metadata's thresholds do not match the labels.
  """
  multi = (meta or {}).get(names.META_MULTI_LABEL)
  if not multi:
    return None
  thresholds = [float(v) for v in
                multi.get(names.MULTI_LABEL_THRESHOLDS) or []]
  if len(thresholds) != count:
    raise LabelImageError(
        f'The export\'s metadata has {len(thresholds)} label thresholds for '
        f'{count} labels: pass the --labels file of this model.')
  return thresholds


def _stored_threshold(meta: Optional[dict]) -> float:
  """The rejection threshold in an export's metadata, 0 when none."""
  confidence = (meta or {}).get(names.META_CONFIDENCE) or {}
  return float(confidence.get(names.CONFIDENCE_THRESHOLD) or 0.0)


def choose_labels(path: str, labels: Optional[str],
                  meta_labels: Optional[Sequence[str]],
                  default_labels: Optional[str]) -> List[str]:
  """The class names of an export: row j is class id j.

  An explicit --labels file wins (a deliberate renaming). Otherwise the
  export's metadata (JSON, which holds any label exactly), checked against
  the labels file beside it; the labels file alone only for exports that
  have no metadata.
  """
  if labels:
    return _read_labels(labels)
  file_names = (_read_labels(default_labels)
                if default_labels and os.path.isfile(default_labels) else None)
  if meta_labels:
    stored = [str(name) for name in meta_labels]
    if file_names is not None and file_names != stored:
      logging.warning('The labels file %s disagrees with the metadata of %s '
                      '(%d vs %d classes); using the metadata\'s labels.',
                      default_labels, path, len(file_names), len(stored))
    return stored
  if file_names is not None:
    return file_names
  raise LabelImageError(f'No labels found for {path}: pass --labels with '
                        'the labels file retrain wrote (--output_labels).')


def load_model(saved_model_dir: Optional[str] = None,
               graph: Optional[str] = None, labels: Optional[str] = None,
               input_layer: str = DEFAULT_INPUT_LAYER,
               output_layer: str = DEFAULT_OUTPUT_LAYER,
               input_height: Optional[int] = None,
               input_width: Optional[int] = None,
               trust: bool = False) -> Model:
  """Loads a retrain export: a SavedModel folder, or a .pb / .tflite / .onnx
  file.

  Args:
    saved_model_dir: an export folder written by retrain.
    graph: a frozen GraphDef (.pb), TFLite (.tflite) or ONNX (.onnx) file;
      used when saved_model_dir is not given.
    labels: a labels file (one per line, row j is class id j); default: the
      one in or beside the export.
    input_layer, output_layer: op names in a frozen graph.
    input_height, input_width: only for models that accept any size.
    trust: run a SavedModel or frozen graph even if its graph could read
      or write files (--trust_module); by default such a graph is refused.

  Raises:
    LabelImageError: the model or its labels cannot be found or used.
  """
  if saved_model_dir:
    if not os.path.isdir(saved_model_dir):
      raise LabelImageError(f'--saved_model_dir {saved_model_dir!r} is not a '
                            'folder: pass the folder retrain exported to.')
    predict, size, meta = saved_model.load_saved_model(
        saved_model_dir, input_height, input_width, trust)
    kind, path = 'saved_model', saved_model_dir
    default_labels = os.path.join(saved_model_dir, LABELS_FILE)
    meta_labels = meta[names.META_LABELS]
  elif graph:
    if not os.path.isfile(graph):
      raise LabelImageError(f'--graph {graph!r} does not exist: pass the .pb '
                            'or .tflite file retrain wrote.')
    path = graph
    kind, predict, size, meta, meta_labels, default_labels = (
        _load_graph_file(graph, input_layer, output_layer, input_height,
                         input_width, trust))
  else:
    raise LabelImageError('No model given: pass --saved_model_dir (the '
                          'export folder) or --graph (a .pb or .tflite '
                          'file).')
  class_names = choose_labels(path, labels, meta_labels, default_labels)
  probe = predict(np.zeros([1, size[0], size[1], 3], np.float32))
  if probe.ndim != 2 or probe.shape[1] != len(class_names):
    raise LabelImageError(
        f'{path} returns {list(probe.shape)} but the labels have '
        f'{len(class_names)} classes: pass the --labels of this model (and, '
        'for a .pb, the right --output_layer).')
  predict, last_novelty = _keeping_novelty(predict)
  return Model(kind, path, class_names, size, predict,
               _stored_threshold(meta), last_novelty,
               _stored_novelty_threshold(meta),
               _stored_label_thresholds(meta, len(class_names)))


def _keeping_novelty(predict: Callable) -> Tuple[Callable, Optional[Callable]]:
  """(predict, last_novelty): a loader's predict that also computes the
  novelty (its `with_novelty`) keeps the last batch's for last_novelty,
  so one model run gives both; (predict, None) for an export without."""
  both = getattr(predict, 'with_novelty', None)
  if both is None:
    return predict, None
  state = {}

  def keeping(images):
    probabilities, state['novelty'] = both(images)
    return probabilities

  keeping.keep_alive = predict  # what the loaded model needs alive
  return keeping, lambda: state['novelty']


