"""The last steps: the exports and the results page."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
from absl import logging

from retrain.bottlenecks import precision as precision_lib
from retrain.bottlenecks import usable as usable_lib
from retrain.common import atomic, names
from retrain.common import phases as phases_lib
from retrain.config import Config
from retrain.data import split as split_lib
from retrain.export import formats as export_formats
from retrain.export import (
  from_disk,
  int8_graph,
  int8_tflite,
  quantization_check,
)
from retrain.export import saved_model as export_lib
from retrain.features import ensemble as ensemble_lib
from retrain.features import modules as features
from retrain.head import calibration as calibration_lib
from retrain.head import math as head_math
from retrain.report import deployment as deployment_report
from retrain.report import heatmap
from retrain.report import results as results_lib
from retrain.steps import head


@dataclasses.dataclass
class Exported:
  """What `export` wrote.

  Attributes:
    saved_model_dir: the SavedModel folder, or None.
    deployment_report: <report_dir>/deployment.json.
    pending_exports: the plan file of the conversions left to
      retrain.export_job (convert_later), or None.
    export_check: with int8 bottlenecks, what the check of the exports
      found (check_int8_exports, or precision_lib.check_float_exports
      when a member exports float), or None.
  """
  saved_model_dir: Optional[str]
  deployment_report: str
  pending_exports: Optional[str] = None
  export_check: Optional[dict] = None


def export(config: Config, prepared, found, split: split_lib.Split,
           tuned, confidence: calibration_lib.Confidence,
           intermediate=None, convert_later: bool = False) -> Exported:
  """Writes the labels file and every export asked for.

  Args:
    prepared: the retrain.steps.prepare.Prepared of the run; found: its
      retrain.steps.vectors.Vectors; tuned: the retrain.steps.head.Tuned
      whose module and head the exports hold; intermediate: the
      intermediate-graph hook of training, or None.
    convert_later: leave the conversions to a fresh process (the plan in
      Exported.pending_exports), for a smaller peak of memory.

  The SavedModel is written first; the other formats are converted from
  it on disk (retrain.export.from_disk: the same files, in less memory),
  or from the model in memory when no SavedModel is asked for.

  With int8 bottlenecks the exports hold each int8 member as its
  translated graph (int8_graph.export_module), whose agreement with the
  int8 model is checked once per model (retrain.export.int8_check), and
  the written SavedModel's head is compared with the trained one
  (check_int8_exports); a member that cannot be translated exports its
  float module, and the exports' held-out accuracy is measured beside the
  training figure (precision_lib.check_float_exports). Not past the
  memory budget (the vectors are not in memory).

  Every export carries the calibrated head (confidence.head: the same
  predictions as trained.head) and the confidence metadata; a quantized
  TFLite model is first checked on the test set (the validation set when
  there is none).
  """
  labels, images, test = found.labels, found.images, tuned.reported.test
  fine_tune_metadata = tuned.fine_tuned.metadata if tuned.fine_tuned else None
  in_memory = found.storage == 'memory'
  module, served = int8_graph.export_module(
      tuned.module, prepared.float_module, config.module.module_cache_dir)
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
  if in_memory and served is not None:
    float_check = check_float_exports(
        config, served, confidence.head, images, rows, held_out,
        test.accuracy if held_out == 'test' else None)
    phases_lib.release_memory()  # its float interpreters, before the exports
  extras = {k: v for k, v in (
      ('float_export_check', float_check),
      ('intermediate_graphs',
       None if intermediate is None else intermediate.written))
      if v is not None}
  if not config.outputs.saved_model_dir:  # Nothing on disk to convert from.
    other_formats = export_formats.export_other_formats(
        config.outputs, module, confidence.head,
        labels, images.paths_of(split.train), gate, deploy_metadata)
    other_formats.update(extras)
    deployment = deployment_report.write_report(
        config.outputs.report_dir, confidence, gate.results, other_formats)
    return Exported(None, deployment, export_check=float_check)
  saved, deployment, plan = _saved_model_first(
      config, module, confidence, labels, images.paths_of(split.train), gate,
      extra_metadata={'modules': ensemble_lib.describe_modules(module),
                      'test_accuracy': test.accuracy,
                      'test_count': test.count,
                      **deploy_metadata, **(fine_tune_metadata or {})},
      written=extras)
  members = int8_graph.translation_checks(module) if served is None else []
  check = (check_int8_exports(saved, members, confidence.head) if members
           else float_check)
  if convert_later and from_disk.pending(plan):
    return Exported(saved, deployment, from_disk.write_plan(plan), check)
  from_disk.run_all(plan, config.outputs)
  return Exported(saved, deployment, export_check=check)


def _saved_model_first(config: Config, module, confidence, labels,
                       calibration_paths, gate, extra_metadata: dict,
                       written: dict):
  """Writes the checkpoint (if asked) and the SavedModel; returns (its
  folder, the deployment report, the plan of the other formats:
  from_disk.new_plan). written: what was written already."""
  written = dict(written)
  if config.outputs.checkpoint_path:
    written['checkpoint'] = os.path.abspath(export_formats.write_checkpoint(
        config.outputs.checkpoint_path, confidence.head))
    logging.info('Wrote the head checkpoint %s.',
                 config.outputs.checkpoint_path)
  deploy_metadata = {k: extra_metadata[k] for k in
                     (names.META_CONFIDENCE, names.META_NOVELTY)
                     if k in extra_metadata}
  plan = from_disk.new_plan(config.outputs, config.outputs.saved_model_dir,
                            calibration_paths, gate, deploy_metadata,
                            written)
  plan['int8_members'] = int8_tflite.int8_members(module)
  saved = export_lib.export_saved_model(
      config.outputs.saved_model_dir, module, confidence.head, labels,
      config.outputs.final_tensor_name,
      extra_metadata={**extra_metadata, 'other_exports': written,
                      'quantization_checks': []})
  logging.info('Exported the classifier to %s (labels in %s).', saved,
               config.outputs.output_labels)
  deployment = deployment_report.write_report(
      config.outputs.report_dir, confidence, gate.results, written)
  return saved, deployment, plan


def check_int8_exports(saved: str, members: list, head) -> dict:
  """What a run checks of the exports of its translated int8 members,
  without loading or running them: each member's translation check
  (`members`: what int8_graph.translation_checks returned; made once per
  int8 model) and that the
  SavedModel at `saved` holds `head` (its variables read from disk and
  compared exactly); logs one line, warns when the head differs.

  Returns:
    {'members': [{'handle', 'int8_model', 'probe_images',
    'max_output_steps', 'max_abs_difference', 'matches', 'measured'}] in
    member order, 'head_in_saved_model': bool, 'max_head_difference':
    float >= 0 or None (an array missing or of another shape)}.
  """
  stored = from_disk.saved_head_arrays(saved)
  novelty = {} if head.novelty is None else head.novelty.graph_arrays()
  difference = (max((_difference(stored['novelty'][k], v)
                     for k, v in novelty.items()), default=0.0)
                if set(novelty) == set(stored['novelty']) else float('inf'))
  difference = max(difference, _difference(stored['weights'], head.weights),
                   _difference(stored['biases'], head.biases))
  steps = max(m['max_output_steps'] for m in members)
  logging.info('Export check: the TensorFlow ops of the int8 members give '
               'their int8 models\' vectors to within %g output steps '
               '(checked once per model on fixed probe images); the '
               'SavedModel\'s head differs from the trained one by %g.',
               steps, difference)
  if difference:
    logging.warning('The SavedModel %s does not hold the trained head (its '
                    'arrays differ by up to %g).', saved, difference)
  return {'members': members, 'head_in_saved_model': difference == 0.0,
          'max_head_difference': difference}


def _difference(a, b) -> float:
  """The largest absolute difference of arrays a and b; inf when their
  shapes differ."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    return float('inf')
  return float(np.max(np.abs(a - b), initial=0.0))


def check_float_exports(config: Config, float_module, head,
                        images: usable_lib.UsableImages, rows, held_out: str,
                        int8_accuracy: Optional[float]) -> Optional[dict]:
  """precision_lib.check_float_exports on the held-out `rows` of `images`
  (int8_accuracy None: measured here on their int8 vectors)."""
  if int8_accuracy is None:
    int8_accuracy = head_math.accuracy(head.logits(images.vectors[rows]),
                                       images.labels[rows])
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
  speed = ''
  if stats.computed and timings.get('bottlenecks'):
    speed = (f'{stats.computed / timings["bottlenecks"]:.1f} photos/s '
             'decoded and through the feature module (this run, this '
             'machine)')
  return {'model': model, 'model_size': model_sizes(config), 'speed': speed}


def model_sizes(config: Config) -> str:
  """The results page's size line: 'SavedModel 49.0 MB, TFLite ...' of
  the exports written so far."""
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
  return ', '.join(sizes)


def refresh_model_sizes(config: Config) -> None:
  """Rewrites the size line of the results page (report.html and
  report.json in report_dir) written before the last conversions
  (retrain.export_job) with the sizes of every export."""
  import html
  import json
  folder = config.outputs.report_dir
  paths = [os.path.join(folder, results_lib.REPORT_JSON),
           os.path.join(folder, results_lib.REPORT_HTML)]
  if not all(os.path.isfile(p) for p in paths):
    return
  with open(paths[0], encoding='utf-8') as f:
    report = json.load(f)
  old, new = report.get('model_size'), model_sizes(config)
  if not old or old == new:
    return
  with open(paths[1], encoding='utf-8') as f:
    page = f.read()
  atomic.write_text(paths[1], page.replace(html.escape(old), html.escape(new),
                                           1))
  atomic.write_json(paths[0], {**report, 'model_size': new})


@dataclasses.dataclass
class StartedPage:
  """The results page begun by start_results_page.

  Attributes:
    report: the page's report dict (results_lib.build).
    heat_maps: the future of (the heat maps' explainer or None, what
      results_lib.grid_heat_maps drew with it).
  """
  report: dict
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
    held = head.validation_predictions(trained, images, split)
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

  def draw():
    # The explainer too is made on the thread: it reads the members'
    # weights or int8 models.
    explainer = None if crops is not None else heatmap.explainer(
        module, trained.head, fine_tuned=tuned is not None,
        occlusion_module=_in_chunks(module))
    return explainer, results_lib.grid_heat_maps(explainer, report)

  pool = concurrent.futures.ThreadPoolExecutor(1)
  future = pool.submit(draw)
  pool.shutdown(wait=False)
  return StartedPage(report, future)


# Images a heat map's occlusion runs through the network at once: each
# photo's 26 occluded copies in one batch held +600 MB of activations on
# the fine-tuned default ensemble (260x260), more than the whole export.
HEAT_MAP_BATCH = 4


def _in_chunks(module):
  """`module` whose `call` runs at most HEAT_MAP_BATCH images at a time
  (the same vectors, float32 [batch, D])."""
  if not dataclasses.is_dataclass(module):
    return module

  def chunked(images):
    call = module.call  # read when called: a float module loads on first use
    return np.concatenate([np.asarray(call(images[i:i + HEAT_MAP_BATCH]),
                                      np.float32)
                           for i in range(0, len(images), HEAT_MAP_BATCH)])

  return features.derive(module, call=chunked)


def results_page(config: Config, started: StartedPage, module, labels, stats,
                 phases) -> Optional[str]:
  """Writes <report_dir>/report.html and report.json from what
  start_results_page began; returns the page's path."""
  import time
  report = started.report
  explainer, heat = started.heat_maps.result()
  report.update(seconds=time.monotonic() - phases.launched,
                **_model_lines(config, module, labels, stats, phases.timings))
  written = results_lib.write(config.outputs.report_dir, report, explainer,
                              heat=heat)
  logging.info('Results page: %s', written[0])
  return written[0]
