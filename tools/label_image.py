"""label_image: classify photos with a trained export, from the export alone.

  label_image --saved_model_dir /tmp/retrain_saved_model --image photos/
  label_image --graph /tmp/output_graph.pb --image a.jpg --image 'b/*.png'
  label_image --graph model.tflite --image photos/ --output_format csv
  label_image --graph model.onnx --image photos/ --min_confidence 0.8

It reads only what the export holds: the SavedModel with its labels.txt and
retrain_metadata.json, or a frozen graph (.pb) or TFLite file (.tflite) with
the X.pb.labels.txt / X.pb.metadata.json written beside it (or --labels);
a .tflite file without them is read from the metadata embedded in it, an
ONNX file (.onnx, run with onnxruntime) from its metadata_props. No
training flag and no training data are needed: the input size and value
range come from the model.

Confidence: an image whose top probability is below --min_confidence
(default: the rejection threshold stored in the export, chosen on the
validation set for a target precision; 0 disables) is reported as
`unknown`, its top classes still listed. This flags low confidence; it
cannot recognise a class the model was never shown.

Images (files, folders searched recursively, globs; as --image or as
arguments) are decoded by `retrain.images.load_image`, the same code that
made the training bottlenecks, and classified in batches. A file that
cannot be read or decoded is reported with its reason and the rest go on;
the exit status is 1 if any failed.

The classic flags of TensorFlow's label_image work, with defaults right for
what retrain exports: --input_layer Placeholder, --output_layer
final_result, --input_mean 0 and --input_std 255 (our models take pixels in
[0, 1], i.e. (pixel - 0) / 255), --input_height / --input_width from the
model. Commands from the retrain tutorial therefore run unchanged.

Also importable: load_model, find_images, classify_files, format_records.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import glob
import io
import json
import os
import re
import sys
import time
import warnings
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

if __package__ in (None, ''):  # `python tools/label_image.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from retrain.errors import ImageError, RetrainError  # noqa: E402

# This tool's own defaults (it reads nothing of retrain but the image
# decoding and the errors); tests/test_structure.py checks that they agree
# with retrain's: where retrain writes its SavedModel by default, and the
# frozen graph's input and output op names.
DEFAULT_SAVED_MODEL_DIR = '/tmp/retrain_saved_model'
# retrain's models take pixels in [0, 1]: (pixel - 0) / 255 with pixels in
# [0, 255], the convention of TensorFlow's label_image flags.
DEFAULT_INPUT_MEAN = 0.0
DEFAULT_INPUT_STD = 255.0
DEFAULT_INPUT_LAYER = 'Placeholder'
DEFAULT_OUTPUT_LAYER = 'final_result'
DEFAULT_TOP_K = 5
# 32 images keep a 2-core CPU busy without holding much memory
# (32 x 224 x 224 x 3 float32 = 19 MB).
DEFAULT_BATCH_SIZE = 32
# --crop_margin with --boxes: retrain's default (retrain/config.py).
DEFAULT_CROP_MARGIN = 5.0
# The smallest box side cropped, as retrain's --min_box_size default.
DEFAULT_MIN_BOX_SIZE = 8
OUTPUT_FORMATS = ('table', 'json', 'csv')
# The prediction of an image below the confidence threshold.
UNKNOWN = 'unknown'
# Why a prediction is `unknown`: the export's novelty score is above its
# threshold (the photo is unlike every class), or the top probability is
# below the confidence threshold.
REASON_NOVEL = 'not like any class'
REASON_LOW_CONFIDENCE = 'low confidence'
# The novelty output of every export (retrain.export.saved_model).
NOVELTY_OUTPUT = 'novelty'
# Where exports keep their metadata inside the model file (retrain's
# export/tflite_metadata.py and export/onnx_format.py; a test checks they
# agree): the TFLite file's packed associated files, the ONNX model's
# metadata_props key.
EMBEDDED_LABELS_FILE = 'labels.txt'
EMBEDDED_METADATA_FILE = 'retrain_metadata.json'
ONNX_METADATA_KEY = 'retrain_metadata'


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


@dataclasses.dataclass
class Record:
  """The result for one image: top (label, probability) pairs or an error."""
  image: str
  top: List[Tuple[str, float]] = dataclasses.field(default_factory=list)
  error: Optional[str] = None
  # The top probability is below the confidence threshold (then `top`
  # still lists the classes).
  unknown: bool = False
  # The export's novelty score of the image (None: the export has none),
  # and whether it is above the stored novelty threshold.
  novelty: Optional[float] = None
  novel: bool = False


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


def _load_saved_model(path: str, height, width) -> Tuple[Callable, tuple]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  meta = _read_json(os.path.join(path, 'retrain_metadata.json'))
  if meta is None:
    raise LabelImageError(
        f'{path!r} is not a retrain export (no retrain_metadata.json): pass '
        'the --saved_model_dir that retrain wrote, or use --graph for a .pb '
        'or .tflite file.')
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
                       height, width) -> Tuple[Callable, tuple]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
                     height, width):
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
                                     height, width)
  return 'frozen_graph', predict, size, meta, meta_labels, default_labels


def _stored_novelty_threshold(meta: Optional[dict]) -> float:
  """The novelty threshold in an export's metadata, inf when none."""
  value = ((meta or {}).get('novelty') or {}).get('threshold')
  return float(value) if value is not None else float('inf')


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
               input_width: Optional[int] = None) -> Model:
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

  Raises:
    LabelImageError: the model or its labels cannot be found or used.
  """
  if saved_model_dir:
    if not os.path.isdir(saved_model_dir):
      raise LabelImageError(f'--saved_model_dir {saved_model_dir!r} is not a '
                            'folder: pass the folder retrain exported to.')
    predict, size, meta_labels = _load_saved_model(
        saved_model_dir, input_height, input_width)
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
                         input_width))
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
               last_novelty, _stored_novelty_threshold(meta))


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


# --- Finding the images -----------------------------------------------------------


def find_images(specs: Sequence[str],
                extensions: Optional[Sequence[str]] = None
                ) -> Tuple[List[str], List[Record]]:
  """Files from files, folders (recursive) and glob patterns.

  Args:
    extensions: the endings taken in folders (None: the ones training takes,
      retrain.images.IMAGE_EXTENSIONS).

  Returns:
    (paths in the order given, folders sorted; Records with an error for
    specs that match nothing).
  """
  from retrain import images  # pylint: disable=g-import-not-at-top
  from retrain.common import walk as walk_lib  # pylint: disable=g-import-not-at-top
  extensions = tuple(extensions or images.IMAGE_EXTENSIONS)
  paths, problems, seen = [], [], set()

  def add(path):
    if path not in seen:
      seen.add(path)
      paths.append(path)

  def add_folder(folder):
    # retrain's discovery walk: regular files only, each real folder once
    # (a link loop or a link to / cannot make it endless).
    parent = os.path.dirname(os.path.abspath(folder))
    walk = walk_lib.Walk(parent)
    for rel in walk_lib.list_images(
        os.path.abspath(folder), parent, extensions, walk):
      add(os.path.join(parent, *rel.split('/')))
    problems.extend(Record(p, error=r) for p, r in walk.skipped)

  for spec in specs:
    if os.path.isdir(spec):
      before = len(paths)
      add_folder(spec)
      if len(paths) == before:
        problems.append(Record(spec, error='folder holds no images (accepted '
                               f'endings: {" ".join(extensions)})'))
    elif os.path.exists(spec):
      add(spec)  # A file named on purpose is tried whatever its ending.
    elif glob.has_magic(spec):
      matches = sorted(glob.glob(spec, recursive=True))
      for match in matches:
        if os.path.isdir(match):
          add_folder(match)
        else:
          add(match)
      if not matches:
        problems.append(Record(spec, error='pattern matches no file'))
    else:
      problems.append(Record(spec, error='no such file or folder'))
  return paths, problems


# --- Classifying ------------------------------------------------------------------


def _reason(error: Exception) -> str:
  """A one-line reason from a TF error, without its op and device noise.

  No path in it: the record of the image already names it.
  """
  if isinstance(error, ImageError):
    return error.reason
  message = (getattr(error, 'message', None) or str(error)).strip()
  message = re.sub(r'\{\{[^}]*\}\}\s*', '', message)
  message = re.sub(r'\s*\[Op:[^\]]*\].*$', '', message, flags=re.S)
  message = message.splitlines()[0].strip() if message else ''
  return message or type(error).__name__


def _load(path: str, size, input_mean: float, input_std: float,
          max_pixels: Optional[int] = None, box=None):
  """float32 [H, W, 3] ready for the model, or the reason it failed.

  Images over `max_pixels` (default: retrain's) or truncated are refused
  from their header; the decoding threads share one pixel budget
  (retrain.images), so they never hold one worst-case image each.
  box: None, or the crop (top, left, bottom, right) in [0, 1] (--boxes).
  """
  from retrain import image_header, images  # pylint: disable=g-import-not-at-top
  try:
    image = images.load_image(path, size, max_pixels or
                              image_header.MAX_IMAGE_PIXELS, box=box).numpy()
  except Exception as e:  # pylint: disable=broad-except
    return _reason(e)
  if (input_mean, input_std) != (DEFAULT_INPUT_MEAN, DEFAULT_INPUT_STD):
    image = (image * 255.0 - input_mean) / input_std
  return image


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


@dataclasses.dataclass
class Timing:
  """Where classify_files spent its time (seconds)."""
  images: int = 0
  total: float = 0.0
  model: float = 0.0


def classify_files(model: Model, paths: Sequence[str],
                   top_k: int = DEFAULT_TOP_K,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   input_mean: float = DEFAULT_INPUT_MEAN,
                   input_std: float = DEFAULT_INPUT_STD,
                   timing: Optional[Timing] = None,
                   max_pixels: Optional[int] = None,
                   min_confidence: Optional[float] = None,
                   boxes: Optional[Sequence] = None,
                   names: Optional[Sequence[str]] = None) -> List[Record]:
  """Classifies image files in batches; one Record per path, in order.

  Files are decoded on a thread pool while the model runs on the previous
  batch. A file that cannot be read or decoded gets a Record with its error.
  A Record whose top probability is below `min_confidence` (None: the
  model's stored threshold; 0: never) has unknown=True.
  With `boxes` (one crop per path, see _load) each crop is classified, and
  `names` (one per path) name the records.
  """
  if min_confidence is None:
    min_confidence = model.threshold
  # A live bar with rate and time left on a terminal, else a log line every
  # 10 s (the same progress as retrain's long phases).
  from retrain.common.progress import Progress  # pylint: disable=g-import-not-at-top
  timing = timing if timing is not None else Timing()
  started = time.monotonic()
  top_k = max(1, min(top_k, len(model.labels)))
  records = []
  progress = Progress('Classified', len(paths), interval=10.0)
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:

    def submit(k):
      return [pool.submit(_load, p, model.input_size, input_mean, input_std,
                          max_pixels, box)
              for p, box in zip(chunks[k], box_chunks[k], strict=True)]

    chunks = list(_chunks(list(paths), max(1, batch_size)))
    box_chunks = list(_chunks(list(boxes) if boxes is not None else
                              [None] * len(paths), max(1, batch_size)))
    name_chunks = list(_chunks(list(names) if names is not None else
                               list(paths), max(1, batch_size)))
    pending = submit(0) if chunks else []
    for k, _ in enumerate(chunks):
      loaded = [f.result() for f in pending]
      pending = submit(k + 1) if k + 1 < len(chunks) else []
      good = [i for i, x in enumerate(loaded) if isinstance(x, np.ndarray)]
      probs = np.zeros([0, len(model.labels)], np.float32)
      novelty = [None] * len(good)
      if good:
        tick = time.monotonic()
        batch = np.stack([loaded[i] for i in good])
        probs = model.predict(batch)
        if model.last_novelty is not None:
          novelty = model.last_novelty()
        timing.model += time.monotonic() - tick
      row = dict(zip(good, probs))
      scores = dict(zip(good, novelty))
      for i, path in enumerate(name_chunks[k]):
        if i in row:
          order = np.argsort(-row[i], kind='stable')[:top_k]
          score = None if scores[i] is None else float(scores[i])
          records.append(Record(path, [(model.labels[j], float(row[i][j]))
                                       for j in order],
                                unknown=bool(row[i].max() < min_confidence),
                                novelty=score, novel=bool(
                                    score is not None and
                                    score > model.novelty_threshold)))
        else:
          records.append(Record(path, error=loaded[i]))
      progress.update(len(chunks[k]))
  timing.images += len(paths)
  timing.total += time.monotonic() - started
  return records


# --- Output -----------------------------------------------------------------------


def _prediction(record: Record) -> str:
  return UNKNOWN if record.unknown or record.novel else record.top[0][0]


def _unknown_reason(record: Record) -> Optional[str]:
  """Why the prediction is unknown (the novelty first), else None."""
  if record.novel:
    return REASON_NOVEL
  return REASON_LOW_CONFIDENCE if record.unknown else None


def format_records(records: Sequence[Record], output_format: str = 'table'
                   ) -> str:
  """Records as a readable table, a JSON array, or CSV (one row per image).

  JSON: [{"image": path, "prediction": top label or "unknown",
  "reason": null, "not like any class" or "low confidence", "novelty":
  score or null, "predictions": [{"label": l, "probability": p}, ...]} or
  {"image": path, "error": reason}]. CSV columns: image, error, label_1,
  probability_1, ..., label_k, probability_k, reason, novelty, prediction
  (top label or "unknown").
  """
  if output_format == 'json':
    items = []
    for r in records:
      if r.error is not None:
        items.append({'image': r.image, 'error': r.error})
      else:
        items.append({'image': r.image, 'prediction': _prediction(r),
                      'reason': _unknown_reason(r),
                      'novelty': None if r.novelty is None else round(
                          r.novelty, 6),
                      'predictions': [
                          {'label': l, 'probability': round(p, 6)}
                          for l, p in r.top]})
    return json.dumps(items, indent=1) + '\n'
  if output_format == 'csv':
    k = max((len(r.top) for r in records), default=0)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(['image', 'error'] + [
        f'{name}_{i}' for i in range(1, k + 1)
        for name in ('label', 'probability')] + ['reason', 'novelty',
                                                  'prediction'])
    for r in records:
      cells = [r.image, r.error or '']
      for label, p in r.top:
        cells += [label, f'{p:.6f}']
      if r.error is None:
        cells += [_unknown_reason(r) or '', '' if r.novelty is None else
                  f'{r.novelty:.6f}', _prediction(r)]
      writer.writerow(cells)
    return out.getvalue()
  if output_format != 'table':
    raise LabelImageError(f'Unknown output format {output_format!r}; use one '
                          f'of {", ".join(OUTPUT_FORMATS)}.')
  width = max([len(l) for r in records for l, _ in r.top] + [5])
  lines = []
  for r in records:
    lines.append(r.image)
    if r.error is not None:
      lines.append(f'  ERROR: {r.error}')
    if r.novel:
      lines.append(f'  unknown: {REASON_NOVEL} (novelty {r.novelty:.3f} is '
                   'above the export\'s threshold)')
    if r.unknown:
      lines.append(f'  unknown (top probability {r.top[0][1]:.4f} is below '
                   'the confidence threshold)')
    for label, p in r.top:
      lines.append(f'  {label:<{width}}  {p:8.4f}')
  return '\n'.join(lines) + '\n'


# --- Command line -----------------------------------------------------------------


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  from retrain.image_header import MAX_IMAGE_PIXELS  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string(
      'saved_model_dir', None,
      'Export folder written by retrain (default: '
      f'{DEFAULT_SAVED_MODEL_DIR} when neither this nor --graph is given).')
  flags.DEFINE_string('graph', None, 'A frozen graph (.pb), TFLite '
                      '(.tflite) or ONNX (.onnx) file written by retrain.')
  flags.DEFINE_float('min_confidence', None, 'Images whose top probability '
                     'is below this are reported as unknown (top classes '
                     'still listed). Default: the threshold stored in the '
                     'export; 0 disables.')
  flags.DEFINE_string('labels', None, 'Labels file (default: the one in or '
                      'beside the model).')
  flags.DEFINE_multi_string('image', [], 'Image file, folder (searched '
                            'recursively) or glob; repeat for more. Images '
                            'may also be given as arguments.')
  flags.DEFINE_integer('top_k', DEFAULT_TOP_K, 'Labels shown per image.')
  flags.DEFINE_integer('max_image_pixels', MAX_IMAGE_PIXELS,
                       'Images whose decoded size would exceed this many '
                       'pixels are refused (as in retrain).')
  # --- Crops to annotated boxes (retrain/data/boxes.py, docs/boxes.md) ---
  flags.DEFINE_string('boxes', None, 'A VOC XML or CSV file of boxes: '
                      'classify the crop of each box (one result per box) '
                      'instead of whole images.')
  flags.DEFINE_float('crop_margin', DEFAULT_CROP_MARGIN,
                     'With --boxes: percent of context added around each '
                     'box, as --crop_margin was when training.')
  # --- end ---
  flags.DEFINE_integer('batch_size', DEFAULT_BATCH_SIZE,
                       'Images per model call.')
  flags.DEFINE_enum('output_format', 'table', list(OUTPUT_FORMATS),
                    'How results are written.')
  flags.DEFINE_string('output_file', None, 'Write results here instead of '
                      'to stdout.')
  flags.DEFINE_bool('benchmark', False, 'Print images per second.')
  flags.DEFINE_string('input_layer', DEFAULT_INPUT_LAYER,
                      'Input op of a frozen graph.')
  flags.DEFINE_string('output_layer', DEFAULT_OUTPUT_LAYER,
                      'Output op of a frozen graph.')
  flags.DEFINE_integer('input_height', None, 'Input height (default: the '
                       "model's).")
  flags.DEFINE_integer('input_width', None, 'Input width (default: the '
                       "model's).")
  flags.DEFINE_float('input_mean', DEFAULT_INPUT_MEAN, 'Subtracted from '
                     'pixels in [0, 255]; the default suits retrain models.')
  flags.DEFINE_float('input_std', DEFAULT_INPUT_STD, 'Divides pixels after '
                     'the mean; the default gives the [0, 1] retrain models '
                     'take.')


def main(argv) -> int:
  from absl import flags  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  specs = list(f.image) + list(argv[1:])
  if not specs and not f.boxes:
    logging.error('No images given: pass --image FILE_OR_FOLDER (repeatable) '
                  'or list them after the flags.')
    return 2
  saved_model_dir = f.saved_model_dir
  if not saved_model_dir and not f.graph:
    saved_model_dir = DEFAULT_SAVED_MODEL_DIR
  try:
    model = load_model(saved_model_dir, f.graph, f.labels, f.input_layer,
                       f.output_layer, f.input_height, f.input_width)
    crops = names = None
    if f.boxes:  # --- crops to annotated boxes (docs/boxes.md) ---
      paths, problems, crops, names = _box_crops(f.boxes, f.crop_margin,
                                                 specs)
    else:
      paths, problems = find_images(specs)
    logging.info('Classifying %d image%s with %s (%s, %dx%d, %d classes).',
                 len(paths), '' if len(paths) == 1 else 's', model.path,
                 model.kind, model.input_size[0], model.input_size[1],
                 len(model.labels))
    if f.benchmark and paths:  # Keep one-off start-up out of the figures.
      _load(paths[0], model.input_size, f.input_mean, f.input_std)
      model.predict(np.zeros([min(f.batch_size, len(paths)),
                              model.input_size[0], model.input_size[1], 3],
                             np.float32))
    timing = Timing()
    if f.min_confidence is not None and not 0 <= f.min_confidence <= 1:
      raise LabelImageError(f'--min_confidence={f.min_confidence} must be in '
                            '[0, 1] (0 disables).')
    if model.threshold and f.min_confidence is None:
      logging.info('Images below the stored confidence threshold %.4f are '
                   'reported as unknown (--min_confidence 0 disables).',
                   model.threshold)
    records = problems + classify_files(model, paths, f.top_k, f.batch_size,
                                        f.input_mean, f.input_std, timing,
                                        f.max_image_pixels, f.min_confidence,
                                        boxes=crops, names=names)
    text = format_records(records, f.output_format)
  except RetrainError as e:
    logging.error('%s', e)
    return 1
  if f.output_file:
    with open(f.output_file, 'w', encoding='utf-8', newline='') as out:
      out.write(text)
    logging.info('Wrote %d results to %s.', len(records), f.output_file)
  else:
    sys.stdout.write(text)
  failed = [r for r in records if r.error is not None]
  if f.output_file:
    # The results on stdout already show each failing path with its reason;
    # only when they went to a file does the console need them.
    for r in failed:
      logging.warning('Could not classify %s: %s', r.image, r.error)
  if f.benchmark and timing.images:
    print(f'Benchmark: {timing.images} images in {timing.total:.2f} s = '
          f'{timing.images / timing.total:.1f} images/s end to end '
          f'(decoding included); model alone '
          f'{timing.images / max(timing.model, 1e-9):.1f} images/s '
          f'({model.kind}, batch {f.batch_size}).',
          # Never mixed into JSON or CSV on stdout.
          file=(sys.stdout if f.output_file or f.output_format == 'table'
                else sys.stderr))
  if failed:
    logging.error('%d of %d image%s could not be classified.', len(failed),
                  len(records), '' if len(records) == 1 else 's')
    return 1
  return 0


USAGE = """label_image: classify photos with a model exported by retrain.

Prints the most likely labels of each image (files, folders, globs), reading
only the export: the labels and input size come from the model's own files.

Example:
  label_image --graph out/flowers.pb --image photo.jpg --image more_photos/

Every flag is explained in docs/flags.md.
"""


def _box_crops(annotation: str, margin: float, specs: Sequence[str]):
  """--boxes FILE: (paths, problem records, crops, names), one per box of
  FILE (VOC XML, or CSV whose paths are relative to the one folder given
  as --image, else to the CSV's folder)."""
  from retrain.data import boxes as boxes_lib  # pylint: disable=g-import-not-at-top
  if len(specs) > 1:
    raise LabelImageError(
        f'--boxes takes at most one --image (the folder the CSV\'s paths are '
        f'relative to); got {len(specs)}.')
  crops, skipped = boxes_lib.crops_for_inference(
      annotation, margin, DEFAULT_MIN_BOX_SIZE, specs[0] if specs else '')
  return ([c.image for c in crops],
          [Record(name, error=reason) for name, reason in skipped],
          [c.box for c in crops], [c.name for c in crops])


def run():
  """Entry point of the `label_image` console script."""
  from retrain.common import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main, 'label_image', USAGE, [__name__])


if __name__ == '__main__':
  run()
