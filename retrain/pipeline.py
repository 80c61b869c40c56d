"""The whole run: discover -> split -> bottlenecks -> train -> evaluate -> export.

`run(config)` takes a `retrain.config.Config` and returns a `RunResult` that
tests (and other programs) can inspect; it reads no flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from typing import Dict, List, Optional

import numpy as np
from absl import logging

import bottleneck_cache
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.config import Config
from retrain.data import duplicates
from retrain.data import sources as layouts
from retrain.data import split as split_lib
from retrain.errors import DatasetError
from retrain.export import formats as export_formats
from retrain.export import saved_model as export_lib
from retrain.features import modules as features
from retrain.features import tflite_runtime
from retrain.finetune import run as finetune_lib
from retrain.head import evaluate as evaluate_lib
from retrain.head import options as train_options_lib
from retrain.head import summaries as summaries_lib
from retrain.head import train as train_lib
from retrain.report import skipped as skipped_report
from retrain.report import writer as explain_lib

RUN_SUMMARY_FILE = 'run_summary.json'


@dataclasses.dataclass
class RunResult:
  """What a run produced.

  Attributes:
    labels: class names, class id i is labels[i].
    counts: images per subset actually used, {'train': n, ...}.
    test_accuracy: in [0, 1], nan when the test set is empty.
    test_count: images evaluated for test_accuracy.
    bottleneck_stats: what the cache did (reused / computed / failed).
    skipped: (path, reason) for each image that could not be used.
    history: the evaluation points of training.
    misclassified: lines describing each wrong test prediction.
    saved_model_dir: the export folder, or None.
    timings: seconds per phase.
    peak_rss_mib: peak resident memory of the process after each phase.
    explained: per-class metrics, report files and projector size
      (retrain/explain.py).
    distorted_stats: what the cache did for distorted copies, or None when
      no distortion was asked for.
    fine_tuned: the retrain.finetune.run.FineTuned of --fine_tune (the
      in-memory network, history, test before/after), else None.
  """
  labels: List[str]
  counts: Dict[str, int]
  test_accuracy: float
  test_count: int
  bottleneck_stats: bottleneck_cache.Stats
  skipped: list
  history: list
  misclassified: List[str]
  saved_model_dir: Optional[str]
  timings: Dict[str, float]
  explained: Optional[explain_lib.Explained] = None
  distorted_stats: Optional[bottleneck_cache.Stats] = None
  peak_rss_mib: Optional[Dict[str, float]] = None
  fine_tuned: Optional[finetune_lib.FineTuned] = None


def check_config(config: Config) -> None:
  """Checks values before any slow work starts."""
  layouts.check_layout_config(config)
  split_lib.check_percentages(config.validation_percentage,
                              config.testing_percentage)
  for name in ('how_many_training_steps', 'train_batch_size',
               'eval_step_interval', 'bottleneck_batch_size'):
    if getattr(config, name) < 1:
      raise DatasetError(f'--{name}={getattr(config, name)} must be at least '
                         '1.')
  if config.learning_rate <= 0:
    raise DatasetError(f'--learning_rate={config.learning_rate} must be '
                       'positive.')
  export_lib.check_export_dir(config.saved_model_dir)
  export_formats.check_config(config)
  train_options_lib.check(train_options_lib.TrainOptions.from_config(config))
  if config.projector_max_images < 0:
    raise DatasetError(f'--projector_max_images={config.projector_max_images}'
                       ' must be 0 (no projector) or more.')
  distort_lib.check_settings(distort_lib.Distortions.from_config(config),
                             config.distorted_copies)
  finetune_lib.check_config(config)  # Fine-tuning (issue 16).


def _log_counts(labels, y, split) -> None:
  for i, name in enumerate(labels):
    logging.info('Class %-20s train %5d  validation %4d  test %4d', name,
                 int(np.sum(y[split.train] == i)),
                 int(np.sum(y[split.validation] == i)),
                 int(np.sum(y[split.test] == i)))


def _peak_rss_mib() -> float:
  """The process's peak resident memory so far, in MiB (Linux, macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (1 << 20) if sys.platform == 'darwin' else peak / 1024.0


def run(config: Config) -> RunResult:
  """Runs retraining end to end; see the module docstring."""
  timings = {}
  peak_rss = {}
  started = time.monotonic()
  check_config(config)

  layout = layouts.load_layout(config)
  dataset = layout.dataset
  labels = list(dataset.labels)
  logging.info('Found %d images in %d classes: %s.', len(dataset.images),
               len(labels), layout.description)

  module = features.load_module(config.tfhub_module, config.image_size,
                                config.module_cache_dir)
  timings['startup_and_module'] = time.monotonic() - started
  peak_rss['startup_and_module'] = _peak_rss_mib()

  # The module as the bottlenecks (plain and distorted) run it.
  runner = tflite_runtime.deferred(module, config.bottleneck_runtime,
                                   config.module_cache_dir)
  phase = time.monotonic()
  store = bottleneck_cache.BottleneckStore(
      config.bottleneck_dir, bottlenecks_lib.cache_namespace(module))
  paths = [image.path for image in dataset.images]
  computed = bottlenecks_lib.compute_bottlenecks(
      paths, runner, store, config.bottleneck_batch_size)
  timings['bottlenecks'] = time.monotonic() - phase
  peak_rss['bottlenecks'] = _peak_rss_mib()
  stats = computed.stats
  logging.info('Bottlenecks: %d reused from the cache, %d computed, %d images '
               'skipped.', stats.reused, stats.computed, len(computed.failures))

  skipped = list(layout.skipped) + list(computed.failures)
  reports = skipped_report.write_skipped_report(config.report_dir, skipped)
  if skipped and reports:
    logging.info('The %d skipped files and why are listed in %s.',
                 len(skipped), ' and '.join(reports))
  # Only usable images: two empty files in two classes are no conflict.
  duplicates.warn_conflicting_duplicates(duplicates.conflicting_duplicates(
      [d if ok else None for d, ok in zip(computed.digests, computed.ok)],
      [image.label for image in dataset.images],
      [image.path for image in dataset.images]))

  # Only usable images from here on; vectors[k] belongs to usable[k].
  usable = np.flatnonzero(computed.ok)
  y_all = np.array([dataset.images[i].label for i in usable], dtype=np.int64)
  present = sorted(set(y_all.tolist()))
  if len(present) < 2:
    raise DatasetError(
        f'Only {len(present)} class has usable images after skipping '
        f'{len(computed.failures)} unreadable files; at least two are needed.')
  split = layouts.make_split(layout, usable, y_all,
                             config.validation_percentage,
                             config.testing_percentage)
  _log_counts(labels, y_all, split)
  finetune_lib.check_split(config, labels, y_all, split.validation)
  vectors = computed.vectors

  # Distorted copies of the training images only (validation and test stay
  # as they are); training samples originals and copies alike.
  phase = time.monotonic()
  train_x, train_y = vectors[split.train], y_all[split.train]
  copies = distort_lib.training_copies(
      config, runner, [dataset.images[usable[i]].path for i in split.train],
      [computed.digests[usable[i]] for i in split.train])
  if copies is not None:
    train_x = np.concatenate([train_x, copies.vectors])
    train_y = np.concatenate([train_y, train_y[copies.source]])
    timings['distorted_copies'] = time.monotonic() - phase
    peak_rss['distorted_copies'] = _peak_rss_mib()

  phase = time.monotonic()
  writers = summaries_lib.Writers(config.summaries_dir)
  intermediate = export_formats.intermediate_hook(config, module, labels)
  explain_lib.write_run_config(writers.train, config, module, labels, y_all,
                               split, computed.failures)

  def log_point(p: train_lib.EvalPoint):
    text = (f'Step {p.step}: train accuracy = {100 * p.train_accuracy:.1f}%, '
            f'cross entropy = {p.cross_entropy:.4f}')
    if p.validation_accuracy is not None:
      text += (f', validation accuracy = {100 * p.validation_accuracy:.1f}% '
               f'(N={p.validation_count})')
    logging.info(text)

  try:
    trained = train_lib.train_head(
        train_x, train_y, len(labels),
        vectors[split.validation], y_all[split.validation],
        steps=config.how_many_training_steps,
        learning_rate=config.learning_rate,
        batch_size=config.train_batch_size,
        eval_step_interval=config.eval_step_interval,
        validation_batch_size=config.validation_batch_size,
        seed=config.random_seed, writers=writers, on_eval=log_point,
        head_every=config.intermediate_store_frequency,
        on_head=intermediate,
        options=train_options_lib.TrainOptions.from_config(config),
        on_eval_head=explain_lib.ValidationImages(
            writers.validation, vectors[split.validation],
            y_all[split.validation], labels,
            train_lib.eval_steps(config.how_many_training_steps,
                                 config.eval_step_interval)))
  finally:
    writers.close()
  timings['training'] = time.monotonic() - phase
  peak_rss['training'] = _peak_rss_mib()

  phase = time.monotonic()
  test = evaluate_lib.evaluate(trained.head, vectors[split.test],
                               y_all[split.test], config.test_batch_size,
                               seed=config.random_seed)
  logging.info('Final test accuracy = %.1f%% (N=%d)', 100 * test.accuracy,
               test.count)
  test_paths = [dataset.images[usable[i]].path for i in split.test]
  misclassified = evaluate_lib.format_misclassified(test, test_paths, labels)
  if config.print_misclassified_test_images:
    logging.info('=== MISCLASSIFIED TEST IMAGES ===')
    for line in misclassified:
      logging.info(line)
  explained = explain_lib.finish(
      config, labels, trained.head, vectors, y_all, split,
      [dataset.images[i].path for i in usable],
      [dataset.images[i].rel_path for i in usable], test,
      trained.history[-1].step if trained.history else 0, trained.best_step)
  timings['evaluation'] = time.monotonic() - phase
  peak_rss['evaluation'] = _peak_rss_mib()

  # --- Fine-tuning (issue 16; retrain/finetune/) ------------------------------
  # From here on `module` and `trained.head` are the fine-tuned network, so
  # every export below is of it; `test` is its test result.
  tuned = None
  if config.fine_tune:
    phase = time.monotonic()
    tuned = finetune_lib.fine_tune(
        config, module, trained.head, labels,
        [dataset.images[i].path for i in usable],
        [computed.digests[i] for i in usable], y_all, split)
    module = tuned.module
    trained = dataclasses.replace(trained, head=tuned.head)
    test = dataclasses.replace(test, accuracy=tuned.test_after)
    timings['fine_tune'] = time.monotonic() - phase
    peak_rss['fine_tune'] = _peak_rss_mib()
  # --- End of fine-tuning -------------------------------------------------------

  phase = time.monotonic()
  export_lib.write_labels(config.output_labels, labels)
  other_formats = export_formats.export_other_formats(
      config, module, trained.head, labels,
      [dataset.images[usable[i]].path for i in split.train])
  if intermediate is not None:
    other_formats['intermediate_graphs'] = intermediate.written
  saved = None
  if config.saved_model_dir:
    saved = export_lib.export_saved_model(
        config.saved_model_dir, module, trained.head, labels,
        config.final_tensor_name,
        extra_metadata={'test_accuracy': test.accuracy,
                        'test_count': test.count,
                        'other_exports': other_formats,
                        **(tuned.metadata if tuned else {})})
    logging.info('Exported the classifier to %s (labels in %s).', saved,
                 config.output_labels)
  timings['export'] = time.monotonic() - phase
  peak_rss['export'] = _peak_rss_mib()
  timings['total'] = time.monotonic() - started

  if skipped:
    logging.warning('%d images were skipped because they could not be used; '
                    'see the warnings above and %s.', len(skipped),
                    reports[0] if reports else 'the log')
  result = RunResult(
      labels=labels,
      counts={name: int(len(split.subset(name))) for name in split_lib.SUBSETS},
      test_accuracy=test.accuracy, test_count=test.count,
      bottleneck_stats=stats, skipped=skipped,
      history=trained.history, misclassified=misclassified,
      saved_model_dir=saved, timings=timings, explained=explained,
      distorted_stats=copies.stats if copies is not None else None,
      peak_rss_mib=peak_rss, fine_tuned=tuned)
  write_run_summary(config, result)
  return result


def write_run_summary(config: Config, result: RunResult) -> str:
  """Writes <report_dir>/run_summary.json (config, counts, accuracy, timings)."""
  os.makedirs(config.report_dir, exist_ok=True)
  path = os.path.join(config.report_dir, RUN_SUMMARY_FILE)
  summary = {
      'config': dataclasses.asdict(config),
      'labels': result.labels,
      'counts': result.counts,
      'test_accuracy': result.test_accuracy,
      'test_count': result.test_count,
      'bottlenecks': dataclasses.asdict(result.bottleneck_stats),
      'skipped': len(result.skipped),
      'timings_seconds': result.timings,
      'peak_rss_mib_after_phase': result.peak_rss_mib,
      'saved_model_dir': result.saved_model_dir,
  }
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2)
  os.replace(tmp, path)
  return path
