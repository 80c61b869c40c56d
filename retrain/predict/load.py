"""Loading a retrain export to classify with: a SavedModel folder, or a
frozen graph (.pb), TFLite (.tflite) or ONNX (.onnx) file, from the export
alone (its labels and metadata in or beside it, or embedded in it).

`load_model` returns a `Model` whose `predict` takes float32 images
[batch, H, W, 3] (in [0, 1] by default) and returns float32 probabilities
[batch, N], column j = labels[j]. One loader per format (`_load_saved_model`,
`_load_frozen_graph`, `_load_tflite`, `_load_onnx`). tools/label_image.py
and retrain.evaluate both use it. TensorFlow (or onnxruntime) is imported
only when a model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from retrain.errors import RetrainError

# The defaults of label_image's flags; tests/test_structure.py checks that
# the layer names agree with retrain's exports.
# retrain's models take pixels in [0, 1]: (pixel - 0) / 255 with pixels in
# [0, 255], the convention of TensorFlow's label_image flags.
DEFAULT_INPUT_MEAN = 0.0
DEFAULT_INPUT_STD = 255.0
DEFAULT_INPUT_LAYER = 'Placeholder'
DEFAULT_OUTPUT_LAYER = 'final_result'
DEFAULT_TOP_K = 5
# The default ensemble's activations grow with the batch: on 641 photos
# (2 cores) batches of 32 peaked at 2.09 GB of memory and took 4:02, of 8
# at 1.27 GB and 2:58, with the same predictions.
DEFAULT_BATCH_SIZE = 8
# Where exports keep their metadata inside the model file (retrain's
# export/tflite_metadata.py and export/onnx_format.py; a test checks they
# agree): the TFLite file's packed associated files, the ONNX model's
# metadata_props key.
EMBEDDED_LABELS_FILE = 'labels.txt'
EMBEDDED_METADATA_FILE = 'retrain_metadata.json'
ONNX_METADATA_KEY = 'retrain_metadata'
# The novelty output of every export (retrain.export.saved_model).
NOVELTY_OUTPUT = 'novelty'


class LabelImageError(RetrainError, ValueError):
  """The model or the images cannot be used as given."""


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


def _read_json(path: str) -> Optional[dict]:
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _sidecars(path: str) -> Tuple[Optional[dict], Optional[str]]:
  """(metadata, labels path) written beside a .pb or .tflite file.

  X.pb.metadata.json and X.pb.labels.txt (named after the whole file, see
  retrain.export.formats.sidecar_paths), or X.metadata.json and
  X.labels.txt as earlier exports named them; those are used only if the
  metadata names this model file (a .pb and a .tflite of one stem shared
  them, and the later one won).
  """
  stem = os.path.splitext(path)[0]
  for base in (path, stem):
    metadata = _read_json(base + '.metadata.json')
    if base == stem and metadata is not None and metadata.get(
        'model_file', os.path.basename(path)) != os.path.basename(path):
      continue
    labels = base + '.labels.txt'
    labels = labels if os.path.isfile(labels) else None
    if metadata is not None or labels is not None:
      return metadata, labels
  return None, None


def _choose_size(model_size, height: Optional[int], width: Optional[int],
                 path: str) -> Tuple[int, int]:
  """The input size: the model's own when fixed, else the flags'."""
  fixed = tuple(model_size) if model_size and None not in model_size else None
  asked = (height or (fixed or (None, None))[0],
           width or (fixed or (None, None))[1])
  if fixed and asked != fixed:
    raise LabelImageError(
        f'{path} takes {fixed[0]}x{fixed[1]} images, not '
        f'{asked[0]}x{asked[1]}: drop --input_height/--input_width.')
  if None in asked:
    raise LabelImageError(f'{path} accepts any image size: pass '
                          '--input_height and --input_width.')
  return int(asked[0]), int(asked[1])


def _check_model(path: str, trust: bool) -> None:
  """Refuses a graph that can act (retrain/features/module_safety.py)
  unless trust is set (--trust_module)."""
  from retrain.features import module_safety  # pylint: disable=g-import-not-at-top
  module_safety.check_model(path, trust)


def _load_saved_model(path: str, height, width,
                      trust: bool = False) -> Tuple[Callable, tuple]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  meta = _read_json(os.path.join(path, 'retrain_metadata.json'))
  if meta is None:
    raise LabelImageError(
        f'{path!r} is not a retrain export (no retrain_metadata.json): pass '
        'the --saved_model_dir that retrain wrote, or use --graph for a .pb '
        'or .tflite file.')
  _check_model(path, trust)
  loaded = tf.saved_model.load(path)
  serve = loaded.signatures['serving_default']
  size = _choose_size((meta['input_height'], meta['input_width']), height,
                      width, path)

  def predict(images):
    return serve(images=tf.constant(images))['probabilities'].numpy()

  if NOVELTY_OUTPUT in serve.structured_outputs:
    def both(images):
      out = serve(images=tf.constant(images))
      return out['probabilities'].numpy(), out[NOVELTY_OUTPUT].numpy()
    predict.with_novelty = both
  predict.keep_alive = loaded  # The signature needs its object alive.
  return predict, size, meta['labels']


def _load_frozen_graph(path: str, input_layer: str, output_layer: str,
                       height, width, trust: bool = False
                       ) -> Tuple[Callable, tuple]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _check_model(path, trust)
  graph_def = tf.compat.v1.GraphDef()
  with open(path, 'rb') as f:
    try:
      graph_def.ParseFromString(f.read())
    except Exception as e:  # pylint: disable=broad-except
      raise LabelImageError(f'{path!r} is not a frozen GraphDef ({e}).') from e
  input_name = input_layer.split(':')[0]
  output_name = output_layer.split(':')[0]
  nodes = {node.name: node for node in graph_def.node}
  for flag, name in (('input_layer', input_name),
                     ('output_layer', output_name)):
    if name not in nodes:
      placeholders = [n.name for n in graph_def.node if n.op == 'Placeholder']
      raise LabelImageError(
          f'{path} has no op named {name!r} (--{flag}). Its placeholders: '
          f'{", ".join(placeholders) or "none"}; its last op: '
          f'{graph_def.node[-1].name}.')
  dims = [d.size for d in nodes[input_name].attr['shape'].shape.dim]
  model_size = (tuple(d if d > 0 else None for d in dims[1:3])
                if len(dims) == 4 else None)
  size = _choose_size(model_size, height, width, path)

  def imports():
    tf.compat.v1.import_graph_def(graph_def, name='')

  wrapped = tf.compat.v1.wrap_function(imports, [])
  run = wrapped.prune(f'{input_name}:0', f'{output_name}:0')

  def predict(images):
    return run(tf.constant(images)).numpy()

  if NOVELTY_OUTPUT in nodes:
    run_both = wrapped.prune(f'{input_name}:0', [f'{output_name}:0',
                                                 f'{NOVELTY_OUTPUT}:0'])

    def both(images):
      probs, novelty = run_both(tf.constant(images))
      return probs.numpy(), novelty.numpy()
    predict.with_novelty = both
  return predict, size


def _tflite_interpreter(content: bytes):
  try:  # The LiteRT package, if installed, is TFLite's successor.
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    Interpreter = tf.lite.Interpreter  # pylint: disable=invalid-name
  with warnings.catch_warnings():
    # tf.lite.Interpreter warns that it moves to LiteRT; it works in TF 2.21.
    warnings.simplefilter('ignore')
    return Interpreter(model_content=content, num_threads=os.cpu_count())


def _load_tflite(path: str, height, width) -> Tuple[Callable, tuple]:
  with open(path, 'rb') as f:
    content = f.read()
  try:
    interpreter = _tflite_interpreter(content)
  except (ValueError, RuntimeError) as e:
    raise LabelImageError(f'{path!r} is not a TFLite model ({e}).') from e
  inp = interpreter.get_input_details()[0]
  # The probabilities are the [batch, N] output; an output of rank 1 is
  # the novelty score [batch].
  outs = interpreter.get_output_details()
  out = next((o for o in outs if len(o['shape_signature']) == 2), outs[0])
  extra = [o for o in outs if len(o['shape_signature']) == 1]
  shape = list(inp['shape_signature'])
  size = _choose_size(tuple(d if d > 0 else None for d in shape[1:3]),
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


def _load_onnx(path: str, height, width) -> Tuple[Callable, tuple, dict]:
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise LabelImageError(f'{path} is an ONNX model: pip install onnxruntime '
                          '(or "retrain[onnx]") to run it.') from e
  try:
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
  except Exception as e:  # pylint: disable=broad-except
    raise LabelImageError(f'{path!r} is not an ONNX model ({e}).') from e
  inp = session.get_inputs()[0]
  size = _choose_size(tuple(d if isinstance(d, int) and d > 0 else None
                            for d in inp.shape[1:3]), height, width, path)

  outputs = [o.name for o in session.get_outputs()]
  first = 'probabilities' if 'probabilities' in outputs else outputs[0]

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
    meta = {'labels': json.loads(props['labels'])} if 'labels' in props else {}
  return predict, size, meta


def _embedded_tflite_metadata(path: str
                              ) -> Tuple[Optional[List[str]], Optional[dict]]:
  """(labels, metadata) packed in a .tflite file (a zip archive appended to
  the flatbuffer, as MediaPipe's metadata writer packs them), or None."""
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    with zipfile.ZipFile(path) as archive:
      names = set(archive.namelist())
      labels = (archive.read(EMBEDDED_LABELS_FILE).decode('utf-8')
                if EMBEDDED_LABELS_FILE in names else None)
      meta = (json.loads(archive.read(EMBEDDED_METADATA_FILE))
              if EMBEDDED_METADATA_FILE in names else None)
  except (zipfile.BadZipFile, OSError, ValueError):
    return None, None
  return ([l for l in labels.splitlines() if l.strip()] if labels else None,
          meta)


def _load_graph_file(graph: str, input_layer: str, output_layer: str,
                     height, width, trust: bool = False):
  """(kind, predict, size, metadata, labels from metadata, labels file) of a
  .pb, .tflite or .onnx file."""
  meta, default_labels = _sidecars(graph)
  meta_labels = (meta or {}).get('labels')
  if graph.lower().endswith('.tflite'):
    predict, size = _load_tflite(graph, height, width)
    if meta is None or not meta_labels:  # No side files: the embedded.
      embedded_labels, embedded = _embedded_tflite_metadata(graph)
      meta = meta or embedded
      meta_labels = meta_labels or embedded_labels
    return 'tflite', predict, size, meta, meta_labels, default_labels
  if graph.lower().endswith('.onnx'):
    predict, size, onnx_meta = _load_onnx(graph, height, width)
    return ('onnx', predict, size, meta or onnx_meta,
            meta_labels or onnx_meta.get('labels'), default_labels)
  predict, size = _load_frozen_graph(graph, input_layer, output_layer,
                                     height, width, trust)
  return 'frozen_graph', predict, size, meta, meta_labels, default_labels


def _stored_novelty_threshold(meta: Optional[dict]) -> float:
  """The novelty threshold in an export's metadata, inf when none."""
  value = ((meta or {}).get('novelty') or {}).get('threshold')
  return float(value) if value is not None else float('inf')


def _stored_label_thresholds(meta: Optional[dict], count: int
                             ) -> Optional[List[float]]:
  """A multi-label export's per-label thresholds (label order), else None.

  Raises:
    LabelImageError: the metadata's thresholds do not match the labels.
  """
  multi = (meta or {}).get('multi_label')
  if not multi:
    return None
  thresholds = [float(v) for v in multi.get('thresholds') or []]
  if len(thresholds) != count:
    raise LabelImageError(
        f'The export\'s metadata has {len(thresholds)} label thresholds for '
        f'{count} labels: pass the --labels file of this model.')
  return thresholds


def _stored_threshold(meta: Optional[dict]) -> float:
  """The rejection threshold in an export's metadata, 0 when none."""
  confidence = (meta or {}).get('confidence') or {}
  return float(confidence.get('threshold') or 0.0)


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
    names = [str(name) for name in meta_labels]
    if file_names is not None and file_names != names:
      logging.warning('The labels file %s disagrees with the metadata of %s '
                      '(%d vs %d classes); using the metadata\'s labels.',
                      default_labels, path, len(file_names), len(names))
    return names
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
    predict, size, meta_labels = _load_saved_model(
        saved_model_dir, input_height, input_width, trust)
    kind, path = 'saved_model', saved_model_dir
    default_labels = os.path.join(saved_model_dir, 'labels.txt')
    meta = _read_json(os.path.join(saved_model_dir, 'retrain_metadata.json'))
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
  names = choose_labels(path, labels, meta_labels, default_labels)
  probe = predict(np.zeros([1, size[0], size[1], 3], np.float32))
  if probe.ndim != 2 or probe.shape[1] != len(names):
    raise LabelImageError(
        f'{path} returns {list(probe.shape)} but the labels have '
        f'{len(names)} classes: pass the --labels of this model (and, for a '
        '.pb, the right --output_layer).')
  predict, last_novelty = _keeping_novelty(predict)
  return Model(kind, path, names, size, predict, _stored_threshold(meta),
               last_novelty, _stored_novelty_threshold(meta),
               _stored_label_thresholds(meta, len(names)))


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


