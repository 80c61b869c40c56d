"""label_image: classify photos with a trained export, from the export alone.

The `label_image` command (also `python -m retrain.predict`, and
`python tools/label_image.py` from a clone, as in the retrain tutorial):

  label_image --image photos/       # the latest run in ./retrain_runs
  label_image --saved_model_dir retrain_runs/flowers/latest/saved_model a.jpg
  label_image --graph flowers.pb --image a.jpg --image 'b/*.png'
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

Multi-label models (retrain --multi_label) give every label its own
probability and store a threshold per label: every label at or above its
threshold is listed (the table's `labels:` line; JSON `labels`; the CSV's
and JSON's `prediction` joins them with ';', empty when none).

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

import csv
import io
import os
import re
import sys
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from retrain.common import names  # noqa: E402
from retrain.errors import RetrainError  # noqa: E402
from retrain.predict.classify import (  # noqa: E402,F401 (label_image's API)
  Decoding,
  Record,
  Timing,
  _load,
  classify_files,
  find_images,
)
from retrain.predict.load import (  # noqa: E402,F401 (label_image's API)
  DEFAULT_BATCH_SIZE,
  DEFAULT_INPUT_LAYER,
  DEFAULT_INPUT_MEAN,
  DEFAULT_INPUT_STD,
  DEFAULT_OUTPUT_LAYER,
  DEFAULT_TOP_K,
  LabelImageError,
  Model,
  choose_labels,
  load_model,
)

OUTPUT_FORMATS = ('table', 'json', 'csv')
# The flags of TensorFlow's label_image, with defaults right for what
# retrain exports: (absl DEFINE_<kind>, name, default, help).
CLASSIC_FLAGS = (
    ('string', 'input_layer', DEFAULT_INPUT_LAYER,
     'Input op of a frozen graph.'),
    ('string', 'output_layer', DEFAULT_OUTPUT_LAYER,
     'Output op of a frozen graph.'),
    ('integer', 'input_height', None, "Input height (default: the model's)."),
    ('integer', 'input_width', None, "Input width (default: the model's)."),
    ('float', 'input_mean', DEFAULT_INPUT_MEAN, 'Subtracted from pixels in '
     '[0, 255]; the default suits retrain models.'),
    ('float', 'input_std', DEFAULT_INPUT_STD, 'Divides pixels after the '
     'mean; the default gives the [0, 1] retrain models take.'),
)


def latest_saved_model(runs_dir: str) -> str:
  """The SavedModel of the latest finished run in `runs_dir` (retrain's
  run folders), logged so the user knows which model answers.

  Raises:
    LabelImageError: there is no finished run there.
  """
  from retrain.common import runs
  run_dir = runs.find_latest(runs_dir)
  path = run_dir and os.path.join(run_dir, names.SAVED_MODEL_IN_RUN)
  if not path or not os.path.isdir(path):
    raise LabelImageError(
        f'No model given and no finished retrain run in '
        f'{os.path.abspath(runs_dir)}: pass --saved_model_dir (an export '
        'folder) or --graph (a .pb, .tflite or .onnx file), or run this '
        'in the folder where retrain ran.')
  logging.info('Using the latest run\'s model: %s (pass --saved_model_dir '
               'or --graph to choose another).', os.path.relpath(path))
  return path


# --- Output -----------------------------------------------------------------------


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
  from retrain.common import safe_text, strict_json
  if output_format == 'json':
    items = []
    for r in records:
      if r.error is not None:
        items.append({'image': r.image, 'error': r.error})
      else:
        items.append({'image': r.image, 'prediction': r.prediction,
                      'reason': r.reason,
                      'novelty': None if r.novelty is None else round(
                          r.novelty, 6),
                      'predictions': [
                          {'label': l, 'probability': round(p, 6)}
                          for l, p in r.top]})
        if r.labels is not None:
          items[-1]['labels'] = [label for label, _ in r.labels]
    return strict_json.dumps(items, indent=1) + '\n'
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
        cells += [r.reason or '', '' if r.novelty is None else
                  f'{r.novelty:.6f}', r.prediction]
      writer.writerow(safe_text.csv_row(cells))
    return out.getvalue()
  if output_format != 'table':
    raise LabelImageError(f'Unknown output format {output_format!r}; use one '
                          f'of {", ".join(OUTPUT_FORMATS)}.')
  width = max([len(l) for r in records for l, _ in r.top] + [5])
  lines = []
  for r in records:
    lines.append(safe_text.terminal(r.image))
    if r.error is not None:
      lines.append(f'  ERROR: {safe_text.terminal(r.error)}')
    if r.novel:
      lines.append(f'  unknown: {names.REASON_NOVEL} (novelty {r.novelty:.3f} is '
                   'above the export\'s threshold)')
    if r.unknown:
      lines.append(f'  unknown (top probability {r.top[0][1]:.4f} is below '
                   'the confidence threshold)')
    if r.labels is not None:
      lines.append('  labels: ' + (', '.join(label for label, _ in r.labels)
                                   or '(none at or above its threshold)'))
    for label, p in r.top:
      lines.append(f'  {safe_text.terminal(label):<{width}}  {p:8.4f}')
  return '\n'.join(lines) + '\n'


def summarize(records: Sequence[Record]) -> str:
  """One line: how many images went to each label (most first), how many
  were unknown and how many failed, e.g. 'Predictions for 641 images:
  roses 130, daisy 120, unknown 12; 2 could not be classified.'."""
  counts = {}
  for r in records:
    if r.error is None:
      counts[r.prediction] = counts.get(r.prediction, 0) + 1
  unknown = counts.pop(names.UNKNOWN, 0)
  parts = [f'{label} {n}' for label, n in
           sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
  parts.append(f'{names.UNKNOWN} {unknown}')
  failed = sum(r.error is not None for r in records)
  n = len(records)
  return (f'Predictions for {n} image{"" if n == 1 else "s"}: '
          f'{", ".join(parts)}' +
          (f'; {failed} could not be classified.' if failed else '.'))


# --- Command line -----------------------------------------------------------------


def _define_flags():
  from absl import flags

  from retrain.image_header import MAX_IMAGE_PIXELS

  flags.DEFINE_string(
      'saved_model_dir', None,
      'Export folder written by retrain (default: the latest run in '
      f'./{names.RUNS_DIR} when neither this nor --graph is given).')
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
  flags.DEFINE_bool('trust_module', False, 'Load a model even if its graph '
                    'can read or write files or run code (as in retrain).')
  # --- Crops to annotated boxes (retrain/data/annotations/, docs/boxes.md) ---
  flags.DEFINE_string('boxes', None, 'A VOC XML or CSV file of boxes: '
                      'classify the crop of each box (one result per box) '
                      'instead of whole images.')
  flags.DEFINE_float('crop_margin', names.CROP_MARGIN,
                     'With --boxes: percent of context added around each '
                     'box, as --crop_margin was when training.')
  flags.DEFINE_integer('batch_size', DEFAULT_BATCH_SIZE,
                       'Images per model call.')
  flags.DEFINE_enum('output_format', 'table', list(OUTPUT_FORMATS),
                    'How results are written.')
  flags.DEFINE_string('output_file', None, 'Write results here instead of '
                      'to stdout.')
  flags.DEFINE_bool('benchmark', False, 'Print images per second.')
  flags.DEFINE_string('explain', None, 'Write a heat map (occlusion through '
                      'the model, overlaid on the photo) of each classified '
                      'image\'s top class as a PNG into this folder.')
  for kind, name, default, text in CLASSIC_FLAGS:
    getattr(flags, f'DEFINE_{kind}')(name, default, text)


def main(argv) -> int:
  from absl import flags

  from retrain.common import cli
  cli.quiet_logging(None)  # Before TensorFlow loads (-v 1 shows its lines).
  f = flags.FLAGS
  specs = list(f.image) + list(argv[1:])
  if not specs and not f.boxes:
    logging.error('No images given: pass --image FILE_OR_FOLDER (repeatable) '
                  'or list them after the flags.')
    return 2
  saved_model_dir = f.saved_model_dir
  try:
    if not saved_model_dir and not f.graph:
      saved_model_dir = latest_saved_model(names.RUNS_DIR)
    model = load_model(saved_model_dir, f.graph, f.labels, f.input_layer,
                       f.output_layer, f.input_height, f.input_width,
                       trust=f.trust_module)
    if f.boxes:  # --- crops to annotated boxes (docs/boxes.md) ---
      paths, problems, crops = _box_crops(f.boxes, f.crop_margin, specs)
    else:
      (paths, problems), crops = find_images(specs), None
    timing = Timing()
    records = problems + _classify(model, paths, crops, timing, f)
    text = format_records(records, f.output_format)
    if f.explain:
      _explain(model, records[len(problems):], paths, crops, f)
  except RetrainError as e:
    logging.error('%s', e)
    return 1
  _write_results(text, records, f)
  if f.benchmark and timing.images:
    print(f'Benchmark: {names.plural(timing.images, "image")} in '
          f'{timing.total:.2f} s = '
          f'{timing.images / timing.total:.1f} images/s end to end '
          f'(decoding included); model alone '
          f'{timing.images / max(timing.model, 1e-9):.1f} images/s '
          f'({model.kind}, batch {f.batch_size}).',
          # Never mixed into JSON or CSV on stdout.
          file=(sys.stdout if f.output_file or f.output_format == 'table'
                else sys.stderr))
  failed = sum(r.error is not None for r in records)
  if failed:
    logging.error('%d of %d image%s could not be classified.', failed,
                  len(records), '' if len(records) == 1 else 's')
    return 1
  return 0


def _decoding(f) -> Decoding:
  """How the flags say image files become the model's input."""
  return Decoding(f.input_mean, f.input_std, f.max_image_pixels)


def _classify(model: Model, paths: Sequence[str], crops, timing: Timing,
              f) -> list:
  """The records of paths (or of their crops) as the flags ask, after the
  log line of what classifies them and, with --benchmark, a warm-up."""
  logging.info('Classifying %d image%s with %s (%s, %dx%d, %d classes).',
               len(paths), '' if len(paths) == 1 else 's', model.path,
               model.kind, model.input_size[0], model.input_size[1],
               len(model.labels))
  if f.benchmark and paths:  # Keep one-off start-up out of the figures.
    _load(paths[0], model.input_size, _decoding(f))
    model.predict(np.zeros([min(f.batch_size, len(paths)),
                            model.input_size[0], model.input_size[1], 3],
                           np.float32))
  if f.min_confidence is not None and not 0 <= f.min_confidence <= 1:
    raise LabelImageError(f'--min_confidence={f.min_confidence} must be in '
                          '[0, 1] (0 disables).')
  if model.threshold and f.min_confidence is None:
    logging.info('Images below the stored confidence threshold %.4f are '
                 'reported as unknown (--min_confidence 0 disables).',
                 model.threshold)
  return classify_files(model, paths, f.top_k, f.batch_size, _decoding(f),
                        timing, f.min_confidence, crops)


def _write_results(text: str, records: Sequence[Record], f) -> None:
  """The results to --output_file or stdout; the summary, and with a file,
  each failure, to the log."""
  if f.output_file:
    with open(f.output_file, 'w', encoding='utf-8', newline='') as out:
      out.write(text)
    logging.info('Wrote %d results to %s.', len(records), f.output_file)
  else:
    sys.stdout.write(text)
  if len(records) > 1:
    logging.info('%s', summarize(records))
  if f.output_file:
    # The results on stdout already show each failing path with its reason;
    # only when they went to a file does the console need them.
    for r in records:
      if r.error is not None:
        logging.warning('Could not classify %s: %s', r.image, r.error)


USAGE = """label_image: classify photos with a model exported by retrain.

Prints the most likely labels of each image (files, folders, globs), reading
only the export: the labels and input size come from the model's own files.

Example:
  label_image --graph out/flowers.pb --image photo.jpg --image more_photos/

Without --saved_model_dir or --graph it uses the latest run of retrain in
./retrain_runs (and says which). The documentation (docs/ in the source
repository, docs/flags.md for every flag) says more.
"""

# What --help shows first: the flags most uses need.
FIRST_FLAGS = ('image', 'saved_model_dir', 'graph', 'min_confidence', 'top_k',
               'output_format', 'output_file')


def _explain(model: Model, records: Sequence[Record], paths: Sequence[str],
             crops, f) -> None:
  """--explain DIR: for each classified image, DIR/<name>.png: the photo
  as the model saw it (its input size) with the occlusion heat map of its
  top class over it (retrain.predict.explain)."""
  from retrain.predict import explain
  try:
    os.makedirs(f.explain, exist_ok=True)
  except OSError as e:
    raise LabelImageError(f'--explain {f.explain!r}: cannot make the folder '
                          f'({e.strerror or e}); pass a writable one.') from e
  used = set()
  for k, (record, path) in enumerate(zip(records, paths, strict=True)):
    if record.error is not None:
      continue
    image = _load(path, model.input_size, _decoding(f),
                  None if crops is None else crops[k].box)
    if not isinstance(image, np.ndarray):
      continue
    top = model.labels.index(record.top[0][0])
    heat = explain.occlusion(image[None], model.predict, [top])[0]
    shown = (image * f.input_std + f.input_mean) / 255.0
    stem = re.sub(r'[^\w.-]+', '_', os.path.splitext(
        os.path.basename(record.image))[0]) or 'image'
    name, n = f'{stem}.png', 1
    while name in used:
      n += 1
      name = f'{stem}_{n}.png'
    used.add(name)
    target = os.path.join(f.explain, name)
    with open(target + '.tmp', 'wb') as out:
      out.write(explain.encode(explain.overlay(shown, heat)))
    os.replace(target + '.tmp', target)
  logging.info('Wrote the heat maps of %s to %s.',
               names.plural(len(used), 'image'), f.explain)


def _box_crops(annotation: str, margin: float, specs: Sequence[str]):
  """--boxes FILE: (paths, problem records, crops), one per box of FILE
  (VOC XML, or CSV whose paths are relative to the one folder given as
  --image, else to the CSV's folder); crops are
  retrain.data.annotations.crop.InferenceCrop."""
  from retrain.data.annotations import crop
  if len(specs) > 1:
    raise LabelImageError(
        f'--boxes takes at most one --image (the folder the CSV\'s paths are '
        f'relative to); got {len(specs)}.')
  crops, skipped = crop.crops_for_inference(
      annotation, margin, names.MIN_BOX_SIZE, specs[0] if specs else '')
  return ([c.image for c in crops],
          [Record(name, error=reason) for name, reason in skipped], crops)


def run():
  """Entry point of the `label_image` console script."""
  from retrain.common import cli
  _define_flags()
  cli.run(main, 'label_image', USAGE, [__name__], first_flags=FIRST_FLAGS)


if __name__ == '__main__':
  run()
