"""Benchmark: each export format's size, speed and agreement on real photos.

  python bench/export_formats.py [--image_dir ../shared/datasets/flowers_sample]
                                 [--out /tmp/bench_export_formats]

Trains on the photos with the bundled efficientnet_lite0 module (500 steps),
writes the SavedModel, the frozen graph, a TFLite model of each
quantization (each quantized one checked against the float model on the
test set, as the pipeline does) and an ONNX model (when tf2onnx is
installed), then runs every format on every photo, each in its own runtime
(TensorFlow, the TFLite interpreter, MediaPipe Tasks' ImageClassifier for
the TFLite files with embedded metadata, ONNX Runtime) and prints its
size, images per second (model only, batch 32 where the runtime takes
batches, photos decoded beforehand; the bytes signature also decodes;
MediaPipe takes one uint8 image per call), top-1 agreement with the
SavedModel's float signature on all photos and top-1 accuracy on the test
split. Then the calibration: temperature, expected calibration error (ECE)
before and after on validation and test, and the rejection threshold with
its precision and coverage on test. The int8 TFLite model must agree on at
least 97 %.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from retrain import (
  images,  # noqa: E402
  pipeline,  # noqa: E402
)
from retrain.common import names  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.data import discover  # noqa: E402
from retrain.data import split as split_lib  # noqa: E402
from retrain.export import formats as export_formats  # noqa: E402
from retrain.export import (
  quantization_check,  # noqa: E402
  tflite_metadata,  # noqa: E402
)
from retrain.features import modules as features  # noqa: E402
from retrain.head import calibration  # noqa: E402
from tools import label_image  # noqa: E402

HERE = pathlib.Path(__file__).resolve()
# The shared data sets live beside the checkout (or beside a worktree's
# parent folder).
FLOWERS = next((p / 'shared' / 'datasets' / 'flowers_sample'
                for p in HERE.parents
                if (p / 'shared' / 'datasets' / 'flowers_sample').is_dir()),
               HERE.parents[2] / 'shared' / 'datasets' / 'flowers_sample')
BATCH = 32


def size_mb(path):
  path = pathlib.Path(path)
  if path.is_dir():
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 1e6
  return path.stat().st_size / 1e6


def timed(predict, batch):
  """(probabilities [n, N], images/s), after one warm-up call."""
  predict(batch[:BATCH])
  started = time.monotonic()
  probs = np.concatenate([predict(batch[i:i + BATCH])
                          for i in range(0, len(batch), BATCH)])
  return probs, len(batch) / (time.monotonic() - started)


def _has(package):
  try:
    __import__(package)
  except ImportError:
    return False
  return True


def mediapipe_run(path, batch, classes):
  """(probabilities [n, N], images/s) from MediaPipe Tasks' ImageClassifier.

  MediaPipe takes uint8 images; the photos are already at the model's size,
  so it only normalises them with the embedded (x - 0) / 255.
  """
  import mediapipe as mp
  from mediapipe.tasks.python import vision
  from mediapipe.tasks.python.core.base_options import BaseOptions
  options = vision.ImageClassifierOptions(
      base_options=BaseOptions(model_asset_path=path), max_results=classes,
      score_threshold=1e-12)
  pixels = np.round(batch * 255).astype(np.uint8)
  probs = np.zeros((len(batch), classes), np.float32)
  with vision.ImageClassifier.create_from_options(options) as classifier:

    def classify(k):
      image = mp.Image(image_format=mp.ImageFormat.SRGB,
                       data=np.ascontiguousarray(pixels[k]))
      for c in classifier.classify(image).classifications[0].categories:
        probs[k, c.index] = c.score

    classify(0)  # Warm-up.
    started = time.monotonic()
    for k in range(len(batch)):
      classify(k)
    rate = len(batch) / (time.monotonic() - started)
  return probs, rate


def print_calibration(cal, reference, truth, split):
  """Calibration figures: validation (from the run) and test (here)."""
  if cal.get('skipped_reason'):
    print(f'\nCalibration skipped: {cal["skipped_reason"]}')
    return
  t = cal['temperature']
  test = split.test
  calibrated = reference[test]
  # The exports are calibrated; T * log p undoes it (softmax is shift-free).
  uncalibrated = calibration.softmax(t * np.log(np.maximum(calibrated,
                                                           1e-30)))
  ece = calibration.expected_calibration_error
  accepted = calibrated.max(1) >= cal['threshold']
  precision = np.mean(calibrated[accepted].argmax(1) == truth[test][accepted])
  print(f'\nCalibration: temperature {t:.3f}; ECE on validation '
        f'(N={cal["validation_count"]}) {cal["ece_before"]:.4f} before, '
        f'{cal["ece_after"]:.4f} after; on test (N={len(test)}) '
        f'{ece(uncalibrated, truth[test]):.4f} before, '
        f'{ece(calibrated, truth[test]):.4f} after.')
  print(f'Rejection threshold {cal["threshold"]:.4f} for precision '
        f'{100 * cal["target_precision"]:.0f} %: validation precision '
        f'{100 * cal["precision"]:.1f} % at coverage '
        f'{100 * cal["coverage"]:.1f} %; test precision '
        f'{100 * precision:.1f} % at coverage {100 * accepted.mean():.1f} %.')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_dir', default=str(FLOWERS))
  parser.add_argument('--out', default='/tmp/bench_export_formats')
  parser.add_argument('--module_cache_dir', default=None)
  parser.add_argument('--steps', type=int, default=500)
  args = parser.parse_args()
  if not os.path.isdir(args.image_dir):
    sys.exit(f'{args.image_dir} is absent: pass --image_dir with a folder of '
             'class sub-folders.')
  out = pathlib.Path(args.out)
  config = DEFAULTS.replace(image_dir=args.image_dir,
      module_cache_dir=args.module_cache_dir,
      bottleneck_dir=str(out / 'bottlenecks'), summaries_dir=str(out / 'logs'),
      output_labels=str(out / 'labels.txt'),
      saved_model_dir=str(out / 'saved_model'), report_dir=str(out / 'report'),
      output_graph=str(out / 'output_graph.pb'),
      checkpoint_path=str(out / 'checkpoint' / 'head'),
      onnx_output_file=str(out / 'model.onnx') if _has('tf2onnx') else '',
      how_many_training_steps=args.steps)
  started = time.monotonic()
  result = pipeline.run(config)
  print(f'Trained in {time.monotonic() - started:.0f} s: test accuracy '
        f'{100 * result.test_accuracy:.1f} % (N={result.test_count}).')

  module = features.load_module(config.module.tfhub_module, None,
                                config.module.module_cache_dir)
  head = export_formats.read_checkpoint(config.outputs.checkpoint_path)
  dataset = discover.discover_images(config.data.image_dir)
  paths = [image.path for image in dataset.images]
  # int8 calibration on training images only, as the pipeline does.
  split = split_lib.split_images(
      [image.rel_path for image in dataset.images],
      np.array([image.label for image in dataset.images]),
      config.data.validation_percentage, config.data.testing_percentage)
  train_paths = [paths[i] for i in split.train]
  truth = np.array([image.label for image in dataset.images])
  deployment = json.loads(pathlib.Path(result.deployment_report).read_text())
  confidence = {'confidence': deployment['calibration']}
  gate = quantization_check.Gate([paths[i] for i in split.test],
                                 truth[split.test], keep_lossy=True)
  tflite = {}
  for quantization in names.QUANTIZATIONS:
    path = str(out / f'model_{quantization}.tflite')
    tick = time.monotonic()
    export_formats.write_tflite(path, module, head, result.labels,
                                quantization, train_paths, gate=gate,
                                extra_metadata=confidence)
    tflite[quantization] = path
    print(f'TFLite {quantization}: converted in {time.monotonic() - tick:.1f} '
          's')

  batch = np.stack([images.load_image(p, module.input_size).numpy()
                    for p in paths])
  saved = label_image.load_model(saved_model_dir=config.outputs.saved_model_dir)
  reference, reference_rate = timed(saved.predict, batch)
  rows = [('SavedModel serving_default', size_mb(config.outputs.saved_model_dir),
           reference_rate, reference)]

  loaded = tf.saved_model.load(config.outputs.saved_model_dir)
  serve_bytes = loaded.signatures['serving_bytes']
  contents = np.array([pathlib.Path(p).read_bytes() for p in paths],
                      dtype=object)
  by_bytes, bytes_rate = timed(
      lambda c: serve_bytes(image_bytes=tf.constant(list(c)))[
          'probabilities'].numpy(), contents)
  rows.append(('SavedModel serving_bytes (decodes)',
               size_mb(config.outputs.saved_model_dir), bytes_rate, by_bytes))
  frozen = label_image.load_model(graph=config.outputs.output_graph)
  rows.append(('frozen graph (.pb)', size_mb(config.outputs.output_graph),
               *timed(frozen.predict, batch)[::-1]))
  for quantization, path in tflite.items():
    model = label_image.load_model(graph=path)
    rows.append((f'TFLite {quantization}', size_mb(path),
                 *timed(model.predict, batch)[::-1]))
  if tflite_metadata.writer_available()[0]:
    # MediaPipe gets uint8 pixels: the SavedModel on the same rounded
    # photos tells rounding apart from the runtime.
    rounded = saved.predict(np.round(batch * 255).astype(np.float32) / 255)
    print(f'SavedModel on uint8-rounded photos (what MediaPipe gets): max '
          f'|dp| {np.abs(rounded - reference).max():.5f} vs the float '
          'photos.')
    for quantization in ('none', 'int8'):
      probs, rate = mediapipe_run(tflite[quantization], batch,
                                  len(result.labels))
      rows.append((f'MediaPipe ImageClassifier ({quantization})',
                   size_mb(tflite[quantization]), rate, probs))
      if quantization == 'none':
        print(f'MediaPipe (none) vs the SavedModel on the same uint8 '
              f'photos: max |dp| {np.abs(probs - rounded).max():.5f}.')
  if config.outputs.onnx_output_file:
    onnx = label_image.load_model(graph=config.outputs.onnx_output_file)
    rows.append(('ONNX Runtime', size_mb(config.outputs.onnx_output_file),
                 *timed(onnx.predict, batch)[::-1]))

  top1 = reference.argmax(1)
  test = split.test
  print(f'\n{len(paths)} photos, {len(result.labels)} classes, '
        f'batch {BATCH}, {os.cpu_count()} CPU cores\n')
  print(f'{"format":36} {"size MB":>8} {"images/s":>9} {"x SavedModel":>13} '
        f'{"top-1 agree":>12} {"max |dp|":>9} {"test acc":>9}')
  for name, size, rate, probs in rows:
    agree = np.mean(probs.argmax(1) == top1)
    accuracy = np.mean(probs[test].argmax(1) == truth[test])
    print(f'{name:36} {size:8.1f} {rate:9.1f} {rate / reference_rate:13.2f} '
          f'{100 * agree:11.1f}% {np.abs(probs - reference).max():9.5f} '
          f'{100 * accuracy:8.1f}%')
  print('\nQuantization checks (test set, against the float model):')
  for check in gate.results:
    print(f'  {check.summary()}')
  print_calibration(deployment['calibration'], reference, truth, split)
  int8 = next(r for r in rows if r[0] == 'TFLite int8')
  agree = np.mean(int8[3].argmax(1) == top1)
  print(f'\nint8 TFLite top-1 agreement {100 * agree:.1f} % (bar: 97 %): '
        f'{"PASS" if agree >= 0.97 else "FAIL"}')
  return 0 if agree >= 0.97 else 1


if __name__ == '__main__':
  sys.exit(main())
