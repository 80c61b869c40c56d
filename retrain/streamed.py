"""The run past the memory budget: vectors stay in the cache, read in chunks.

`pipeline.run` hands over here, right after loading the module, when the
training vectors a run expects (training images plus their distorted
copies) exceed `Config.max_vectors_in_memory`. The steps are the pipeline's,
with three differences:

- bottlenecks (and distorted copies) are computed into the cache as usual
  but not loaded: `compute_bottlenecks(..., load_vectors=False)`;
- training and the test evaluation read from the cache in chunks
  (retrain.head.streaming), with a compact numpy index of the keys
  (bottleneck_cache.chunks) instead of the store's dict;
- what needs every vector at once is left out: TensorBoard summaries and
  the per-class report, projector and validation-image views
  (retrain.report.writer), intermediate graphs. The log lines, the
  skipped-files report, the run summary and every export are written as
  usual.

Memory: per image the file list, its content key and the digest memo (a few
hundred bytes; see docs/scale.md), plus two chunks of half the budget each.
"""

from __future__ import annotations

import os
import time
from typing import Dict

import numpy as np
from absl import logging

import bottleneck_cache
from bottleneck_cache import chunks
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.config import Config
from retrain.data import duplicates
from retrain.data import sources as layouts
from retrain.data import split as split_lib
from retrain.errors import DatasetError
from retrain.head import evaluate as evaluate_lib
from retrain.head import options as train_options_lib
from retrain.head import streaming
from retrain.report import skipped as skipped_report


def expected_training_vectors(config: Config, images: int) -> int:
  """Training vectors a run of `images` images will have, before decoding:
  the share the split leaves to train, times 1 + the distorted copies."""
  share = max(0.0, 100.0 - config.validation_percentage -
              config.testing_percentage) / 100.0
  copies = (config.distorted_copies if distort_lib.Distortions.from_config(
      config).any() else 0)
  return int(images * share * (1 + copies))


def needed(config: Config, images: int) -> bool:
  """True when the run should stream (see the module docstring).

  Raises:
    DatasetError: a negative --max_vectors_in_memory.
  """
  if config.max_vectors_in_memory < 0:
    raise DatasetError(
        f'--max_vectors_in_memory={config.max_vectors_in_memory} must be 0 '
        '(never stream) or a number of vectors, e.g. 100000.')
  return streaming.should_stream(expected_training_vectors(config, images),
                                 config.max_vectors_in_memory)


def run(config: Config, layout, module, runner, timings: Dict[str, float],
        peak_rss: Dict[str, float], started: float):
  """The rest of pipeline.run, streaming; returns a pipeline.RunResult.

  Args:
    config: the run's Config; layout: from sources.load_layout.
    module: the loaded FeatureModule (identity and export); runner: the
      module as bottlenecks run it (tflite_runtime.deferred).
    timings, peak_rss: the pipeline's records so far, added to.
    started: time.monotonic() at the start of the run.
  """
  from retrain import pipeline  # pylint: disable=g-import-not-at-top
  dataset = layout.dataset
  labels = list(dataset.labels)
  budget = config.max_vectors_in_memory
  logging.info('About %d training vectors exceed --max_vectors_in_memory=%d: '
               'training and evaluation read them from the cache in chunks '
               '(no TensorBoard summaries or per-class reports on this path; '
               'see docs/scale.md).',
               expected_training_vectors(config, len(dataset.images)), budget)

  phase = time.monotonic()
  store = bottleneck_cache.BottleneckStore(
      config.bottleneck_dir, bottlenecks_lib.cache_namespace(module))
  paths = [image.path for image in dataset.images]
  computed = bottlenecks_lib.compute_bottlenecks(
      paths, runner, store, config.bottleneck_batch_size, load_vectors=False)
  directories = [store.directory]
  del store  # its dict index costs a few hundred bytes per vector
  timings['bottlenecks'] = time.monotonic() - phase
  peak_rss['bottlenecks'] = pipeline._peak_rss_mib()  # pylint: disable=protected-access
  stats = computed.stats
  logging.info('Bottlenecks: %d reused from the cache, %d computed, %d images '
               'skipped.', stats.reused, stats.computed, len(computed.failures))
  skipped = list(layout.skipped) + list(computed.failures)
  reports = skipped_report.write_skipped_report(config.report_dir, skipped)
  duplicates.warn_conflicting_duplicates(duplicates.conflicting_duplicates(
      [d if ok else None for d, ok in zip(computed.digests, computed.ok,
                                          strict=True)],
      [image.label for image in dataset.images], paths))

  usable = np.flatnonzero(computed.ok)
  y_all = np.array([dataset.images[i].label for i in usable], dtype=np.int64)
  if len(set(y_all.tolist())) < 2:
    raise DatasetError(
        f'Only {len(set(y_all.tolist()))} class has usable images after '
        f'skipping {len(computed.failures)} unreadable files; at least two '
        'are needed.')
  split = layouts.make_split(layout, usable, y_all,
                             config.validation_percentage,
                             config.testing_percentage)
  pipeline._log_counts(labels, y_all, split)  # pylint: disable=protected-access
  keys = np.array([computed.digests[i].encode() for i in usable])

  phase = time.monotonic()
  train_keys, train_y = keys[split.train], y_all[split.train]
  copies = distort_lib.training_copies(
      config, runner, [paths[usable[i]] for i in split.train],
      [k.decode() for k in train_keys], load_vectors=False)
  if copies is not None:
    directories.append(os.path.join(
        config.bottleneck_dir, bottleneck_cache.namespace_id(
            distort_lib.cache_namespace(
                module, distort_lib.Distortions.from_config(config),
                config.random_seed))))
    copy_keys = np.array([distort_lib.copy_key(train_keys[s].decode(),
                                               int(c)).encode()
                          for s, c in zip(copies.source, copies.copy,
                                          strict=True)])
    train_keys = np.concatenate([train_keys, copy_keys])
    train_y = np.concatenate([train_y, train_y[copies.source]])
    timings['distorted_copies'] = time.monotonic() - phase
    peak_rss['distorted_copies'] = pipeline._peak_rss_mib()  # pylint: disable=protected-access

  phase = time.monotonic()
  index = chunks.VectorIndex(directories)
  readers = {name: chunks.ChunkReader(index, keys[split.subset(name)])
             for name in ('validation', 'test')}
  stream_stats = streaming.StreamStats()
  trained = streaming.train_head_streaming(
      chunks.ChunkReader(index, train_keys), train_y, len(labels),
      readers['validation'], y_all[split.validation],
      steps=config.how_many_training_steps,
      learning_rate=config.learning_rate, batch_size=config.train_batch_size,
      eval_step_interval=config.eval_step_interval,
      validation_batch_size=config.validation_batch_size,
      seed=config.random_seed, max_vectors_in_memory=budget,
      options=train_options_lib.TrainOptions.from_config(config),
      on_eval=pipeline.log_eval_point, stats=stream_stats)
  logging.info('Streamed %d chunks (%d vectors read; %.1f s spent waiting '
               'for reads).', stream_stats.chunks, stream_stats.vectors_read,
               stream_stats.wait_seconds)
  timings['training'] = time.monotonic() - phase
  peak_rss['training'] = pipeline._peak_rss_mib()  # pylint: disable=protected-access

  phase = time.monotonic()
  test = streaming.evaluate_streaming(
      trained.head, readers['test'], y_all[split.test], budget,
      config.test_batch_size, seed=config.random_seed)
  logging.info('Final test accuracy = %.1f%% (N=%d)', 100 * test.accuracy,
               test.count)
  test_paths = [paths[usable[i]] for i in split.test]
  misclassified = evaluate_lib.format_misclassified(test, test_paths, labels)
  if config.print_misclassified_test_images:
    logging.info('=== MISCLASSIFIED TEST IMAGES ===')
    for line in misclassified:
      logging.info(line)
  timings['evaluation'] = time.monotonic() - phase
  peak_rss['evaluation'] = pipeline._peak_rss_mib()  # pylint: disable=protected-access

  phase = time.monotonic()
  saved = pipeline.export_classifier(
      config, module, trained.head, labels,
      [paths[usable[i]] for i in split.train], test)
  timings['export'] = time.monotonic() - phase
  peak_rss['export'] = pipeline._peak_rss_mib()  # pylint: disable=protected-access
  timings['total'] = time.monotonic() - started
  if skipped:
    logging.warning('%d images were skipped because they could not be used; '
                    'see the warnings above and %s.', len(skipped),
                    reports[0] if reports else 'the log')
  result = pipeline.RunResult(
      labels=labels,
      counts={name: int(len(split.subset(name))) for name in split_lib.SUBSETS},
      test_accuracy=test.accuracy, test_count=test.count,
      bottleneck_stats=stats, skipped=skipped, history=trained.history,
      misclassified=misclassified, saved_model_dir=saved, timings=timings,
      distorted_stats=copies.stats if copies is not None else None,
      peak_rss_mib=peak_rss)
  pipeline.write_run_summary(config, result)
  return result
