"""A multi-label run (--multi_label): the pipeline's steps with the labels
of retrain/data/multilabel.py, the sigmoid head of
retrain/head/multilabel.py and its metrics (retrain/report/multilabel.py).

discover -> hash -> module -> bottlenecks -> split -> distorted copies ->
fit (each label's L2 and threshold chosen by k-fold on training +
validation; the test set is never seen) -> test metrics -> exports whose
output is one probability per label, with the thresholds in their metadata.
`pipeline.run` hands a run over here when config.multi_label is set.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from retrain import pipeline, streamed
from retrain.bottlenecks import usable as usable_lib
from retrain.common import atomic, leftovers
from retrain.common import phases as phases_lib
from retrain.config import Config, subset
from retrain.data import boxes as boxes_lib
from retrain.data import leakage
from retrain.data import multilabel as data_lib
from retrain.data import sources as layouts
from retrain.errors import DatasetError
from retrain.export import formats as export_formats
from retrain.export import saved_model as export_lib
from retrain.features import ensemble as ensemble_lib
from retrain.head import multilabel as head_lib
from retrain.head import solver as solver_lib
from retrain.report import multilabel as report_lib
from retrain.report import tensorboard as tb

REPORT_FILE = 'multilabel_head.json'


def check_options(config: Config) -> None:
  """Refuses what a multi-label run does not do, naming the flag."""
  refused = (('fine_tune', '--fine_tune trains a softmax head with the '
              'network; multi-label heads are fitted on the cached vectors '
              'only: drop --fine_tune'),
             ('crop_to_boxes', '--crop_to_boxes makes one single-label '
              'example per box; with --multi_label a photo\'s labels are '
              'its objects\' names: drop one of the two'))
  for name, why in refused:
    if getattr(config, name):
      raise DatasetError(f'--multi_label with --{name}: {why}.',
                         fields=('multi_label', name))
  if config.head_solver == 'sgd':
    logging.warning('--multi_label fits its sigmoid heads with L-BFGS: '
                    '--head_solver sgd and the SGD training flags are not '
                    'used.')
  if config.tflite_quantization != 'none':
    raise DatasetError(
        f'--multi_label with --tflite_quantization '
        f'{config.tflite_quantization}: the quantised model\'s check compares '
        'top-1 accuracy, which a multi-label model does not have; export '
        'the float TFLite model (--tflite_quantization none).',
        fields=('multi_label', 'tflite_quantization'))


def run(config: Config) -> pipeline.RunResult:
  """Runs a multi-label retraining end to end (see the module docstring)."""
  phases = phases_lib.Phases()
  with phases('startup', since_start=True):
    pipeline.check_config(config)
    check_options(config)
    leftovers.heal([config.saved_model_dir, config.output_labels,
                    config.output_graph, config.tflite_output_file,
                    config.report_dir])
    found = data_lib.load(subset(layouts.LayoutOptions, config),
                          subset(boxes_lib.BoxOptions, config),
                          config.bottleneck_dir)
    layout, labels = found.layout, list(found.layout.dataset.labels)
  with phases('hashing'):
    keyed = pipeline.hash_images(config, layout.dataset)
  with phases('module'):
    module = pipeline.load_module(config)
    runner = pipeline.module_runner(config, module)
  if streamed.needed(config, len(layout.dataset.images), module):
    logging.warning('The training vectors exceed --max_vectors_in_memory=%d, '
                    'but a multi-label run does not stream from the cache: '
                    'it holds them in memory.', config.max_vectors_in_memory)
  with phases('bottlenecks'):
    computed = pipeline.bottlenecks(config, layout.dataset, module, runner,
                                    keyed=keyed)
  skipped, _ = pipeline.report_skipped(config, layout, computed)
  images = usable_lib.usable_images(layout.dataset, computed)
  targets = found.targets[images.index]
  split = make_split(config, layout, images, targets)
  with phases('distorted_copies') as phase:
    train_x, _, copies = pipeline.training_set(config, runner, images, split)
    if copies is None:
      phase.skip()
  with phases('training'):
    fitted = train(config, labels, images, split, targets, train_x, copies)
  with phases('evaluation'):
    test = evaluate(config, labels, fitted, images, split, targets)
  with phases('export'):
    saved = export(config, module, labels, fitted, test, images, split)
  phases.total()
  result = pipeline.RunResult(
      labels=labels,
      counts={name: int(len(split.subset(name))) for name in
              ('train', 'validation', 'test')},
      test_accuracy=test.exact_match, test_count=test.count,
      bottleneck_stats=computed.stats, skipped=skipped, history=[],
      misclassified=[], saved_model_dir=saved, timings=phases.timings,
      distorted_stats=copies.stats if copies is not None else None,
      peak_rss_mib=phases.peak_rss, multi_label=test)
  pipeline.write_run_summary(config, result)
  return result


def make_split(config: Config, layout, images: usable_lib.UsableImages,
               targets: np.ndarray):
  """The split of the photos (each photo one row, stratified by its rarest
  label), logged per label; leakage reported as in a single-label run."""
  split = layouts.make_split(layout, images.index, images.labels,
                             config.validation_percentage,
                             config.testing_percentage)
  for j, name in enumerate(layout.dataset.labels):
    logging.info('Label %-20s train %5d  validation %4d  test %4d', name,
                 *(int(targets[split.subset(s), j].sum()) for s in (
                     'train', 'validation', 'test')))
  leakage.report_leakage(
      leakage.find_leakage(images.digests, split, images.paths),
      config.report_dir)
  return split


def train(config: Config, labels: Sequence[str],
          images: usable_lib.UsableImages, split, targets: np.ndarray,
          train_x: np.ndarray, copies) -> head_lib.MultiLabelResult:
  """Fits the head on training (copies included) + validation; writes
  <report_dir>/multilabel_head.json."""
  train_rows, val_rows = split.train, split.validation
  source = copies.source if copies is not None else np.zeros(0, np.int64)
  x = np.concatenate([train_x, images.vectors[val_rows]])
  t = np.concatenate([targets[train_rows], targets[train_rows][source],
                      targets[val_rows]])
  strata = np.concatenate([images.labels[train_rows],
                           images.labels[train_rows][source],
                           images.labels[val_rows]])
  n_train = len(train_rows)
  groups = np.concatenate([np.arange(n_train), source,
                           n_train + np.arange(len(val_rows))])
  original = np.concatenate([np.ones(n_train, bool),
                             np.zeros(len(source), bool),
                             np.ones(len(val_rows), bool)])
  fitted = head_lib.fit_multilabel(
      x, t, strata, solver_lib.SolverOptions.from_config(config), groups,
      original)
  if fitted.out_of_fold is not None:
    held = report_lib.compute(t[original], fitted.out_of_fold,
                              fitted.thresholds, labels)
    logging.info('Out-of-fold (training + validation, N=%d): %s.',
                 held.count, report_lib.summary_line(held))
    report_lib.write_reports(config.report_dir, 'out_of_fold', held,
                             fitted.thresholds)
  os.makedirs(config.report_dir, exist_ok=True)
  atomic.write_text(os.path.join(config.report_dir, REPORT_FILE),
                    json.dumps(fitted.summary(labels), indent=2) + '\n')
  return fitted


def evaluate(config: Config, labels: Sequence[str],
             fitted: head_lib.MultiLabelResult,
             images: usable_lib.UsableImages, split, targets: np.ndarray
             ) -> report_lib.MultiLabelMetrics:
  """Per-label metrics of the test photos: the log, report files and
  TensorBoard (scalars, per-label PR curves, the table as text)."""
  rows = split.test
  probabilities = head_lib.probabilities(fitted.head, images.vectors[rows])
  test = report_lib.compute(targets[rows], probabilities, fitted.thresholds,
                            labels)
  lines = report_lib.format_metrics(test, fitted.thresholds)
  logging.info('Per-label metrics, test set (N=%d):\n%s', test.count,
               '\n'.join(lines))
  if not len(rows):
    logging.info('The test set is empty: no test report.')
    return test
  files = report_lib.write_reports(config.report_dir, 'test', test,
                                   fitted.thresholds)
  logging.info('Wrote the per-label metrics to %s.', ', '.join(files))
  writer = tf.summary.create_file_writer(os.path.join(config.summaries_dir,
                                                      'test'))
  try:
    tb.write_scalars(writer, dict(
        {'mean_ap': test.mean_ap, 'exact_match': test.exact_match,
         'f1_macro': test.macro['f1'], 'f1_micro': test.micro_f1},
        **{f'ap/{name}': test.ap[j] for j, name in enumerate(labels)}), 0)
    tb.write_pr_curves(writer, targets[rows], probabilities, labels, 0)
    tb.write_text(writer, 'multilabel_metrics',
                  '```\n' + '\n'.join(lines) + '\n```', step=0)
  finally:
    writer.close()
  return test


def metadata(labels: Sequence[str], fitted: head_lib.MultiLabelResult
             ) -> dict:
  """What every export stores of the multi-label head (label order)."""
  return {'multi_label': {
      'activation': 'sigmoid',
      'thresholds': [float(v) for v in fitted.thresholds],
      'l2': [float(v) for v in fitted.l2],
      'labels': list(labels),
      'rule': 'label j is predicted when probabilities[j] >= thresholds[j]',
      'chosen_on': f'{fitted.selection} out-of-fold predictions of the '
                   'training and validation photos'}}


def export(config: Config, module, labels: Sequence[str],
           fitted: head_lib.MultiLabelResult,
           test: report_lib.MultiLabelMetrics, images, split):
  """The labels file and every export asked for; returns the SavedModel
  folder or None."""
  export_lib.write_labels(config.output_labels, labels)
  extra = metadata(labels, fitted)
  other = export_formats.export_other_formats(
      subset(export_formats.ExportOptions, config), module, fitted.head,
      labels, images.paths_of(split.train), None, extra)
  phases_lib.release_memory()
  if not config.saved_model_dir:
    return None
  saved = export_lib.export_saved_model(
      config.saved_model_dir, module, fitted.head, labels,
      config.final_tensor_name,
      extra_metadata=dict(extra, modules=ensemble_lib.describe_modules(module),
                          test_mean_ap=test.mean_ap,
                          test_exact_match=test.exact_match,
                          test_count=test.count, other_exports=other))
  logging.info('Exported the multi-label classifier to %s (labels in %s).',
               saved, config.output_labels)
  return saved
