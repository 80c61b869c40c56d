"""The whole run: discover -> split -> bottlenecks -> train -> evaluate -> export.

`run(config)` takes a `retrain.config.Config` and returns a `RunResult` that
tests (and other programs) can inspect; it reads no flags.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, Optional

import numpy as np
from absl import logging

import bottleneck_cache
from retrain import bottlenecks as bottlenecks_lib
from retrain import discover
from retrain import distort as distort_lib
from retrain import evaluate as evaluate_lib
from retrain import export as export_lib
from retrain import features
from retrain import split as split_lib
from retrain import summaries as summaries_lib
from retrain import train as train_lib
from retrain.config import Config
from retrain.errors import DatasetError
from retrain.errors import NotSupportedYetError


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
    distorted_stats: what the cache did for distorted copies, or None when
      no distortion was asked for.
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
  distorted_stats: Optional[bottleneck_cache.Stats] = None


_NOT_YET = {
    'output_graph': 'frozen graph export',
    'intermediate_output_graphs_dir': 'intermediate graph export',
    'intermediate_store_frequency': 'intermediate graph export',
    'checkpoint_path': 'checkpoint export',
}


def check_supported(config: Config) -> None:
  """Refuses retrain.py options that this version does not implement yet."""
  for name, feature in _NOT_YET.items():
    if getattr(config, name):
      raise NotSupportedYetError(
          f'--{name} ({feature}) is not supported yet; run without it.')


def check_config(config: Config) -> None:
  """Checks values before any slow work starts."""
  check_supported(config)
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
  distort_lib.check_settings(distort_lib.Distortions.from_config(config),
                             config.distorted_copies)


def _log_counts(labels, y, split) -> None:
  for i, name in enumerate(labels):
    logging.info('Class %-20s train %5d  validation %4d  test %4d', name,
                 int(np.sum(y[split.train] == i)),
                 int(np.sum(y[split.validation] == i)),
                 int(np.sum(y[split.test] == i)))


def run(config: Config) -> RunResult:
  """Runs retraining end to end; see the module docstring."""
  timings = {}
  started = time.monotonic()
  check_config(config)

  dataset = discover.discover_images(config.image_dir)
  labels = list(dataset.labels)
  logging.info('Found %d images in %d classes under %s.', len(dataset.images),
               len(labels), dataset.image_dir)

  module = features.load_module(config.tfhub_module, config.image_size,
                                config.module_cache_dir)
  timings['startup_and_module'] = time.monotonic() - started

  phase = time.monotonic()
  store = bottleneck_cache.BottleneckStore(
      config.bottleneck_dir, bottlenecks_lib.cache_namespace(module))
  paths = [image.path for image in dataset.images]
  computed = bottlenecks_lib.compute_bottlenecks(
      paths, module, store, config.bottleneck_batch_size)
  timings['bottlenecks'] = time.monotonic() - phase
  stats = computed.stats
  logging.info('Bottlenecks: %d reused from the cache, %d computed, %d images '
               'skipped.', stats.reused, stats.computed, len(computed.failures))

  # Only usable images from here on; vectors[k] belongs to usable[k].
  usable = np.flatnonzero(computed.ok)
  y_all = np.array([dataset.images[i].label for i in usable], dtype=np.int64)
  present = sorted(set(y_all.tolist()))
  if len(present) < 2:
    raise DatasetError(
        f'Only {len(present)} class has usable images after skipping '
        f'{len(computed.failures)} unreadable files; at least two are needed.')
  split = split_lib.split_images(
      [dataset.images[i].rel_path for i in usable], y_all,
      config.validation_percentage, config.testing_percentage)
  _log_counts(labels, y_all, split)
  vectors = computed.vectors

  # Distorted copies of the training images only (validation and test stay
  # as they are); training samples originals and copies alike.
  phase = time.monotonic()
  train_x, train_y = vectors[split.train], y_all[split.train]
  copies = distort_lib.training_copies(
      config, module, [dataset.images[usable[i]].path for i in split.train],
      [computed.keys[usable[i]] for i in split.train])
  if copies is not None:
    train_x = np.concatenate([train_x, copies.vectors])
    train_y = np.concatenate([train_y, train_y[copies.source]])
    timings['distorted_copies'] = time.monotonic() - phase

  phase = time.monotonic()
  writers = summaries_lib.Writers(config.summaries_dir)

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
        seed=config.random_seed, writers=writers, on_eval=log_point)
  finally:
    writers.close()
  timings['training'] = time.monotonic() - phase

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
  timings['evaluation'] = time.monotonic() - phase

  phase = time.monotonic()
  export_lib.write_labels(config.output_labels, labels)
  saved = None
  if config.saved_model_dir:
    saved = export_lib.export_saved_model(
        config.saved_model_dir, module, trained.head, labels,
        config.final_tensor_name,
        extra_metadata={'test_accuracy': test.accuracy,
                        'test_count': test.count})
    logging.info('Exported the classifier to %s (labels in %s).', saved,
                 config.output_labels)
  timings['export'] = time.monotonic() - phase
  timings['total'] = time.monotonic() - started

  if computed.failures:
    logging.warning('%d images were skipped because they could not be used; '
                    'see the warnings above.', len(computed.failures))
  return RunResult(
      labels=labels,
      counts={name: int(len(split.subset(name))) for name in split_lib.SUBSETS},
      test_accuracy=test.accuracy, test_count=test.count,
      bottleneck_stats=stats, skipped=computed.failures,
      history=trained.history, misclassified=misclassified,
      saved_model_dir=saved, timings=timings,
      distorted_stats=copies.stats if copies is not None else None)
