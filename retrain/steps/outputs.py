"""The last steps: the exports and the results page."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
from absl import logging

from retrain.bottlenecks import precision as precision_lib
from retrain.bottlenecks import usable as usable_lib
from retrain.common import names
from retrain.common import phases as phases_lib
from retrain.config import Config
from retrain.data import split as split_lib
from retrain.export import formats as export_formats
from retrain.export import quantization_check
from retrain.export import saved_model as export_lib
from retrain.features import ensemble as ensemble_lib
from retrain.head import calibration as calibration_lib
from retrain.report import deployment as deployment_report
from retrain.report import heatmap
from retrain.report import results as results_lib
from retrain.steps import head as head_step


@dataclasses.dataclass
class Exported:
  """What `export` wrote.

  Attributes:
    saved_model_dir: the SavedModel folder, or None.
    deployment_report: <report_dir>/deployment.json.
  """
  saved_model_dir: Optional[str]
  deployment_report: str


def export(config: Config, prepared, found, split: split_lib.Split,
           tuned, confidence: calibration_lib.Confidence,
           intermediate=None) -> Exported:
  """Writes the labels file and every export asked for.

  Args:
    prepared: the retrain.steps.prepare.Prepared of the run; found: its
      retrain.steps.vectors.Vectors; tuned: the retrain.steps.head.Tuned
      whose module and head the exports hold; intermediate: the
      intermediate-graph hook of training, or None.

  With int8 bottlenecks (module quantised, prepared.float_module the float
  one the exports hold), the exports' held-out accuracy on float features
  is measured and reported beside the training figure
  (precision_lib.check_float_exports); not past the memory budget (the
  vectors are not in memory).

  Every export carries the calibrated head (confidence.head: the same
  predictions as trained.head) and the confidence metadata; a quantized
  TFLite model is first checked on the test set (the validation set when
  there is none).
  """
  module, labels, images = tuned.module, found.labels, found.images
  test = tuned.reported.test
  fine_tune_metadata = tuned.fine_tuned.metadata if tuned.fine_tuned else None
  float_module = (prepared.float_module if found.storage == 'memory'
                  else None)
  export_lib.write_labels(config.outputs.output_labels, labels)
  deploy_metadata = {names.META_CONFIDENCE: confidence.metadata()}
  if confidence.head.novelty is not None:
    deploy_metadata[names.META_NOVELTY] = (
        confidence.head.novelty.metadata())
  held_out = 'test' if len(split.test) else 'validation'
  rows = split.subset(held_out)
  gate = quantization_check.Gate(
      images.paths_of(rows), images.labels[rows], held_out,
      config.outputs.max_quantization_loss, config.outputs.keep_lossy_quantization,
      config.outputs.tflite_calibration_images)
  float_check = None
  if float_module is not None and precision_lib.is_quantized(module):
    float_check = check_float_exports(
        config, float_module, confidence.head, images, rows, held_out,
        test.accuracy if held_out == 'test' else None)
    phases_lib.release_memory()  # its float interpreters, before the exports
  other_formats = export_formats.export_other_formats(
      config.outputs, module, confidence.head,
      labels, images.paths_of(split.train), gate, deploy_metadata)
  if float_check is not None:
    other_formats['float_export_check'] = float_check
  if intermediate is not None:
    other_formats['intermediate_graphs'] = intermediate.written
  phases_lib.release_memory()  # the frozen graph's copies of the weights
  saved = None
  if config.outputs.saved_model_dir:
    saved = export_lib.export_saved_model(
        config.outputs.saved_model_dir, module, confidence.head, labels,
        config.outputs.final_tensor_name,
        extra_metadata={'modules': ensemble_lib.describe_modules(module),
                        'test_accuracy': test.accuracy,
                        'test_count': test.count,
                        'other_exports': other_formats,
                        'quantization_checks': [c.metadata()
                                                for c in gate.results],
                        **deploy_metadata, **(fine_tune_metadata or {})})
    logging.info('Exported the classifier to %s (labels in %s).', saved,
                 config.outputs.output_labels)
  deployment = deployment_report.write_report(
      config.outputs.report_dir, confidence, gate.results, other_formats)
  return Exported(saved, deployment)


def check_float_exports(config: Config, float_module, head,
                        images: usable_lib.UsableImages, rows, held_out: str,
                        int8_accuracy: Optional[float]) -> Optional[dict]:
  """precision_lib.check_float_exports on the held-out `rows` of `images`
  (int8_accuracy None: measured here on their int8 vectors)."""
  if int8_accuracy is None:
    int8_accuracy = float(np.mean(
        head.logits(images.vectors[rows]).argmax(axis=1) ==
        images.labels[rows])) if len(rows) else float('nan')
  digests = images.digests_of(rows)
  probe = precision_lib.Probe(
      paths=images.paths_of(rows),
      keyed=(digests, np.arange(len(rows), dtype=np.int64), []),
      bottleneck_dir=config.cache.bottleneck_dir,
      batch_size=config.cache.bottleneck_batch_size,
      max_pixels=config.data.max_image_pixels)
  return precision_lib.check_float_exports(
      float_module, head, probe, images.labels[rows], int8_accuracy,
      held_out, config.cache.bottleneck_runtime, config.module.module_cache_dir)


def _model_lines(config: Config, module, labels, stats, timings) -> dict:
  """The headline's model, size and speed lines of the results page."""
  members = ensemble_lib.describe_modules(module)
  model = (f'{" + ".join(m["handle"] for m in members)} '
           f'({module.output_dim}-d features) and a softmax head over '
           f'{len(labels)} classes ({config.head.head_solver})')
  sizes = []
  for what, path in (('SavedModel', config.outputs.saved_model_dir),
                     ('frozen graph', config.outputs.output_graph),
                     ('TFLite', config.outputs.tflite_output_file),
                     ('ONNX', config.outputs.onnx_output_file)):
    if path and os.path.exists(path):
      size = (sum(os.path.getsize(os.path.join(d, f))
                  for d, _, files in os.walk(path) for f in files)
              if os.path.isdir(path) else os.path.getsize(path))
      sizes.append(f'{what} {size / 2 ** 20:.1f} MB')
  speed = ''
  if stats.computed and timings.get('bottlenecks'):
    speed = (f'{stats.computed / timings["bottlenecks"]:.1f} photos/s '
             'decoded and through the feature module (this run, this '
             'machine)')
  return {'model': model, 'model_size': ', '.join(sizes), 'speed': speed}


@dataclasses.dataclass
class StartedPage:
  """The results page begun by start_results_page.

  Attributes:
    report: the page's report dict (results_lib.build).
    explainer: the heat maps' explainer, or None.
    heat_maps: the future of results_lib.grid_heat_maps.
  """
  report: dict
  explainer: Optional[object]
  heat_maps: object


def start_results_page(config: Config, prepared, found,
                       split: split_lib.Split, tuned) -> StartedPage:
  """The results page's report dict of the test set (the validation set
  when there is no test set) and its heat maps, started on a thread so
  that they are drawn while the export runs. prepared, found, tuned: as
  for `export`.
  Heat maps: retrain/report/heatmap.py (none for box crops)."""
  import concurrent.futures
  layout, crops, module = prepared.layout, prepared.crops, tuned.module
  labels, images, trained = found.labels, found.images, tuned.trained
  test, tuned = tuned.reported.test, tuned.fine_tuned
  rows = (np.asarray(tuned.test_rows) if tuned is not None else split.test)
  name, truth, probs = 'test', test.labels, test.probabilities
  files = [images.paths[rows[r]] for r in test.rows]
  if not test.count and len(split.validation):
    # What the run reports as validation: held out of the head's training.
    held = head_step.validation_predictions(trained, images, split)
    name, rows, probs = 'validation', held.rows, held.probabilities
    truth = images.labels[rows]
    files = images.paths_of(rows)
  report = results_lib.build(
      labels, [labels[y] for y in truth], probs, files, set=name,
      title=f'Results: {os.path.basename(os.path.normpath(config.data.image_dir))}',
      validation=(f'{len(split.validation)} validation and '
                  f'{len(split.test)} test photos held out of training; '
                  f'split: {layout.description}, validation '
                  f'{config.data.validation_percentage}%, test '
                  f'{config.data.testing_percentage}% of each class by a stable '
                  'hash of the file name unless the layout gives the split'),
      history=[dataclasses.asdict(p) for p in trained.history],
      settings={k: str(v) for k, v in config.flat().items()})
  explainer = None if crops is not None else heatmap.explainer(
      module, trained.head, fine_tuned=tuned is not None)
  pool = concurrent.futures.ThreadPoolExecutor(1)
  future = pool.submit(results_lib.grid_heat_maps, explainer, report)
  pool.shutdown(wait=False)
  return StartedPage(report, explainer, future)


def results_page(config: Config, started: StartedPage, module, labels, stats,
                 phases) -> Optional[str]:
  """Writes <report_dir>/report.html and report.json from what
  start_results_page began; returns the page's path."""
  import time
  report, explainer = started.report, started.explainer
  heat = started.heat_maps.result()
  report.update(seconds=time.monotonic() - phases.started,
                **_model_lines(config, module, labels, stats, phases.timings))
  written = results_lib.write(config.outputs.report_dir, report, explainer,
                              heat=heat)
  logging.info('Results page: %s', written[0])
  return written[0]
