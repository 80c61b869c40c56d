"""The multi-label head (--multi_label): the labels of
retrain/data/multilabel.py, the sigmoid head of retrain/head/multilabel.py
and its metrics (retrain/report/multilabel.py).

retrain.pipeline.run runs a multi-label run through the same steps as any
other (prepare -> vectors); from the split on, these steps: the split
stratified by each photo's rarest label -> fit (each label's L2 and
threshold chosen by k-fold on training + validation; the test set is never
seen) -> test metrics -> exports whose output is one probability per label,
with the thresholds in their metadata.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from bottleneck_cache import chunks
from retrain.bottlenecks import usable as usable_lib
from retrain.common import atomic, names
from retrain.common import phases as phases_lib
from retrain.config import Config
from retrain.data import leakage, sources
from retrain.errors import DatasetError
from retrain.export import formats as export_formats
from retrain.export import int8_graph
from retrain.export import saved_model as export_lib
from retrain.features import ensemble as ensemble_lib
from retrain.head import multilabel as head_lib
from retrain.head import solver as solver_lib
from retrain.head import streaming
from retrain.report import multilabel as report_lib
from retrain.report import page_multilabel as page_lib
from retrain.report import tensorboard as tb
from retrain.steps import streamed

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
    if config.get(name):
      raise DatasetError(f'--multi_label with --{name}: {why}.',
                         fields=('multi_label', name))
  if config.head.head_solver == 'sgd':
    logging.warning('--multi_label fits its sigmoid heads with L-BFGS: '
                    '--head_solver sgd and the SGD training flags are not '
                    'used.')
  if config.outputs.tflite_quantization != 'none':
    raise DatasetError(
        f'--multi_label with --tflite_quantization '
        f'{config.outputs.tflite_quantization}: the quantised model\'s check compares '
        'top-1 accuracy, which a multi-label model does not have; export '
        'the float TFLite model (--tflite_quantization none).',
        fields=('multi_label', 'tflite_quantization'))


def make_split(config: Config, layout, images: usable_lib.UsableImages,
               targets: np.ndarray):
  """The split of the photos (each photo one row, stratified by its rarest
  label), logged per label; leakage reported as in a single-label run."""
  split = sources.make_split(layout, images.index, images.labels,
                             config.data.validation_percentage,
                             config.data.testing_percentage)
  for j, name in enumerate(layout.dataset.labels):
    logging.info('Label %-20s train %5d  validation %4d  test %4d', name,
                 *(int(targets[split.subset(s), j].sum()) for s in (
                     'train', 'validation', 'test')))
  leakage.report_leakage(
      leakage.find_leakage(images.digests, split, images.paths),
      config.outputs.report_dir)
  return split


def train(config: Config, labels: Sequence[str],
          images: usable_lib.UsableImages, split, targets: np.ndarray,
          train_x, copies) -> head_lib.MultiLabelResult:
  """Fits the head on training (copies included) + validation; writes
  <report_dir>/multilabel_head.json. train_x: float32 [n, D] the training
  vectors (copies after the images), or head_lib.Rows of training, copies
  and validation (`cached_rows`: read from the cache in chunks)."""
  train_rows, val_rows = split.train, split.validation
  source = copies.source if copies is not None else np.zeros(0, np.int64)
  x = (train_x if isinstance(train_x, head_lib.Rows) else
       np.concatenate([train_x, images.vectors[val_rows]]))
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
    report_lib.write_reports(config.outputs.report_dir, 'out_of_fold', held,
                             fitted.thresholds)
  os.makedirs(config.outputs.report_dir, exist_ok=True)
  atomic.write_text(os.path.join(config.outputs.report_dir, REPORT_FILE),
                    json.dumps(fitted.summary(labels), indent=2) + '\n')
  return fitted


def cached_rows(config: Config, module, images: usable_lib.UsableImages,
                split, copies: Optional[streamed.CopyKeys]
                ) -> Tuple[head_lib.Rows, head_lib.Rows]:
  """Past the memory budget: (the fit's rows: training images, their
  distorted copies, validation images; the test images) as
  head_lib.StreamedRows, read from the bottleneck cache a chunk of
  streaming.chunk_capacity vectors at a time."""
  index, keys = streamed.cache_index(config, module, images, copies)
  parts = [keys[split.train], keys[split.validation]]
  if copies is not None:
    parts.insert(1, copies.keys)
  fit = chunks.ChunkReader(index, np.concatenate(parts), compact=True)
  test = chunks.ChunkReader(index, keys[split.test], compact=True)
  del keys, parts
  index.drop_keys()
  capacity = streaming.chunk_capacity(config.scale.max_vectors_in_memory,
                                      index.dim)
  logging.info('The multi-label head reads its %d vectors from the cache, '
               '%d at a time.', len(fit), capacity)
  return (head_lib.StreamedRows(fit, np.arange(len(fit)), capacity),
          head_lib.StreamedRows(test, np.arange(len(test)), capacity))


def evaluate(config: Config, labels: Sequence[str],
             fitted: head_lib.MultiLabelResult,
             images: usable_lib.UsableImages, split, targets: np.ndarray,
             test_rows: Optional[head_lib.Rows] = None
             ) -> report_lib.MultiLabelMetrics:
  """Per-label metrics of the test photos: the log, report files and
  TensorBoard (scalars, per-label PR curves, the table as text).
  test_rows: the test vectors read from the cache (`cached_rows`); None:
  images.vectors."""
  rows = split.test
  probabilities = head_lib.probabilities(
      fitted.head, images.vectors[rows] if test_rows is None else test_rows)
  test = report_lib.compute(targets[rows], probabilities, fitted.thresholds,
                            labels)
  lines = report_lib.format_metrics(test, fitted.thresholds)
  logging.info('Per-label metrics, test set (N=%d):\n%s', test.count,
               '\n'.join(lines))
  if not len(rows):
    logging.info('The test set is empty: no test report.')
    return test
  files = report_lib.write_reports(config.outputs.report_dir, 'test', test,
                                   fitted.thresholds)
  logging.info('Wrote the per-label metrics to %s.', ', '.join(files))
  writer = tf.summary.create_file_writer(os.path.join(config.outputs.summaries_dir,
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
  return {names.META_MULTI_LABEL: {
      'activation': 'sigmoid',
      names.MULTI_LABEL_THRESHOLDS: [float(v) for v in fitted.thresholds],
      'l2': [float(v) for v in fitted.l2],
      names.MULTI_LABEL_LABELS: list(labels),
      'rule': 'label j is predicted when probabilities[j] >= thresholds[j]',
      'chosen_on': f'{fitted.selection} out-of-fold predictions of the '
                   'training and validation photos'}}


def export(config: Config, module, labels: Sequence[str],
           fitted: head_lib.MultiLabelResult,
           test: report_lib.MultiLabelMetrics, images, split):
  """The labels file and every export asked for; returns the SavedModel
  folder or None."""
  # Each int8 member as its translated graph (a member that cannot be
  # translated keeps its float obj: `module` serves as the float one).
  module, _ = int8_graph.export_module(module, module,
                                       config.module.module_cache_dir)
  export_lib.write_labels(config.outputs.output_labels, labels)
  extra = metadata(labels, fitted)
  other = export_formats.export_other_formats(
      config.outputs, module, fitted.head,
      labels, images.paths_of(split.train), None, extra)
  phases_lib.release_memory()
  if not config.outputs.saved_model_dir:
    return None
  saved = export_lib.export_saved_model(
      config.outputs.saved_model_dir, module, fitted.head, labels,
      config.outputs.final_tensor_name,
      extra_metadata=dict(extra, modules=ensemble_lib.describe_modules(module),
                          test_mean_ap=test.mean_ap,
                          test_exact_match=test.exact_match,
                          test_count=test.count, other_exports=other))
  logging.info('Exported the multi-label classifier to %s (labels in %s).',
               saved, config.outputs.output_labels)
  return saved


def results_page(config: Config, test, fitted) -> str:
  """<report_dir>/report.html and report.json of a multi-label run: each
  label's threshold, precision, recall, F1 and AP on the test set, mean AP
  and exact match (retrain/report/page_multilabel.py); returns the page's
  path."""
  source = os.path.normpath(config.data.image_dir or config.data.image_labels_csv)
  return page_lib.write_run(
      config.outputs.report_dir, test, fitted.thresholds, set='test',
      title=f'Results: {os.path.basename(source)}',
      settings={k: str(v) for k, v in config.flat().items()})
