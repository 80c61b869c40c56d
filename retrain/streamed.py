"""The run past the memory budget: vectors stay in the cache, read in chunks.

`pipeline.run` hands over here, right after loading the module, when the
training vectors a run expects (training images plus their distorted
copies) exceed `Config.max_vectors_in_memory`. The steps are the pipeline's
own (`pipeline.bottlenecks`, `report_skipped`, `make_split`, `export`), with
three differences:

- bottlenecks and distorted copies are computed into the cache as usual
  but not loaded (`load_vectors=False`);
- training and the test evaluation read from the cache in chunks
  (retrain.head.streaming), through a compact numpy index of the keys
  (bottleneck_cache.chunks) instead of the store's dict;
- what needs every vector at once is left out: TensorBoard summaries, the
  per-class report, projector and validation-image views
  (retrain.report.writer), intermediate graphs. The log lines, the
  skipped-files report, the run summary and every export are written as
  usual.

Memory: per image the file list and the digest memo of discovery (a few
hundred bytes; see docs/scale.md); for training and evaluation, compact
numpy state only (a 32-byte key, class id, shard and row: about 60 bytes
per vector with the index), plus two chunks of streaming.CHUNK_BYTES and
the validation sample.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

import bottleneck_cache
from bottleneck_cache import chunks
from retrain.bottlenecks import distort as distort_lib
from retrain.bottlenecks import usable as usable_lib
from retrain.config import Config, subset
from retrain.data import split as split_lib
from retrain.errors import DatasetError
from retrain.head import streaming
from retrain.head import train as train_lib

# Copy keys made (as Python strings) per pass before they are compacted.
_KEY_BLOCK = 65536


def expected_training_vectors(config: Config, images: int) -> int:
  """Training vectors a run of `images` images will have, before decoding:
  the share the split leaves to train, times 1 + the distorted copies."""
  share = max(0.0, 100.0 - config.validation_percentage -
              config.testing_percentage) / 100.0
  copies = (config.distorted_copies
            if subset(distort_lib.Distortions, config).any() else 0)
  return int(images * share * (1 + copies))


def needed(config: Config, images: int, module=None) -> bool:
  """True when the run should stream (see the module docstring).

  An ensemble (several modules, their vectors concatenated from several
  namespaces) is not streamed yet: it keeps the in-memory path, with a
  warning.

  Raises:
    DatasetError: a negative --max_vectors_in_memory, or fine_tune on a
      run that would stream (fine-tuning holds its activations in memory).
  """
  if config.max_vectors_in_memory < 0:
    raise DatasetError(
        f'max_vectors_in_memory={config.max_vectors_in_memory} must be 0 '
        '(never stream) or a number of vectors, e.g. 100000.', fields=('max_vectors_in_memory',))
  past = streaming.should_stream(expected_training_vectors(config, images),
                                 config.max_vectors_in_memory)
  if past and getattr(module, 'members', None):
    logging.warning('The training vectors exceed --max_vectors_in_memory=%d, '
                    'but an ensemble of modules cannot stream from the cache '
                    'yet; training holds them in memory. Use one module '
                    '(e.g. --tfhub_module efficientnet_lite0) to stream.',
                    config.max_vectors_in_memory)
    return False
  if past and config.fine_tune:
    raise DatasetError(
        f'fine_tune holds the activations of every training image in '
        f'memory, but this run\'s {expected_training_vectors(config, images)} '
        f'training vectors are past max_vectors_in_memory='
        f'{config.max_vectors_in_memory}, so it would stream from the cache: '
        'fine-tune on a smaller folder, or raise max_vectors_in_memory if '
        'the memory allows (about 20 KB per image from the last block).',
        fields=('fine_tune', 'max_vectors_in_memory'))
  return past


def _copy_keys(config: Config, module, runner, images, split, directories):
  """Computes the distorted copies of the training images into the cache;
  returns (their compact keys 'S32' [m], source rows into split.train [m],
  stats),
  or None without distortions. Appends their namespace to directories."""
  distortions = subset(distort_lib.Distortions, config)
  copies = distort_lib.training_copies(
      distortions, config.distorted_copies, config.random_seed,
      config.bottleneck_dir, config.bottleneck_batch_size, runner,
      images.paths_of(split.train), images.digests_of(split.train),
      load_vectors=False)
  if copies is None:
    return None
  directories.append(os.path.join(
      config.bottleneck_dir, bottleneck_cache.namespace_id(
          distort_lib.cache_namespace(module, distortions,
                                      config.random_seed))))
  train_digests = images.digests_of(split.train)
  keys = [chunks.compact_keys([
      distort_lib.copy_key(train_digests[s], int(c)) for s, c in zip(
          copies.source[i:i + _KEY_BLOCK], copies.copy[i:i + _KEY_BLOCK],
          strict=True)])
          for i in range(0, len(copies.source), _KEY_BLOCK)]
  keys = np.concatenate(keys) if keys else chunks.compact_keys([])
  return keys, copies.source, copies.stats


def _calibrate(config: Config, trained: train_lib.TrainResult,
               validation: chunks.ChunkReader, val_y: np.ndarray):
  """pipeline.calibrate on a random sample of the validation set
  (streaming.sample_capacity), read from the cache."""
  from retrain import pipeline  # pylint: disable=g-import-not-at-top
  rows = np.arange(len(val_y))
  cap = streaming.sample_capacity(config.max_vectors_in_memory,
                                 validation.dim)
  if len(rows) > cap:
    rows = np.sort(np.random.default_rng(config.random_seed).choice(
        len(rows), cap, replace=False))
  return pipeline.calibrate(config, trained, validation.read(rows),
                            val_y[rows])


def _train(config: Config, train: chunks.ChunkReader, train_y: np.ndarray,
           num_classes: int, validation: chunks.ChunkReader,
           val_y: np.ndarray) -> train_lib.TrainResult:
  """Streaming SGD with the run's settings, logged as the pipeline logs."""
  from retrain import pipeline  # pylint: disable=g-import-not-at-top
  settings = pipeline.train_settings(config)
  if config.head_solver != 'sgd':
    # The converging solver needs every vector on each iteration.
    logging.info('--head_solver %s: past the memory budget the head is '
                 'trained with SGD, streaming (docs/scale.md).',
                 config.head_solver)
  log = train_lib.EvalLog(train_lib.eval_steps(settings.steps,
                                               settings.eval_step_interval))
  stats = streaming.StreamStats()
  trained = streaming.train_head_streaming(
      train, train_y, num_classes, validation, val_y, settings,
      config.max_vectors_in_memory, on_eval=log, stats=stats)
  log.finish()
  logging.info('Streamed %d chunks (%d vectors read; %.1f s waiting for '
               'reads).', stats.chunks, stats.vectors_read, stats.wait_seconds)
  return trained


def run(config: Config, layout, module, runner, phases, keyed=None):
  """The rest of pipeline.run, streaming; returns a pipeline.RunResult.

  Args:
    config: the run's Config; layout: from pipeline.discover.
    module: the loaded FeatureModule (identity and export); runner: the
      module as bottlenecks run it (tflite_runtime.deferred).
    phases: the run's retrain.common.phases.Phases (timings, memory).
    keyed: the images' cache keys, from pipeline.hash_images (None: hashed
      here).
  """
  from retrain import pipeline  # pylint: disable=g-import-not-at-top
  budget = config.max_vectors_in_memory
  logging.info('About %d training vectors exceed --max_vectors_in_memory=%d: '
               'training and evaluation read them from the cache in chunks '
               '(no TensorBoard summaries or per-class reports on this path; '
               'see docs/scale.md).',
               expected_training_vectors(config, len(layout.dataset.images)),
               budget)
  with phases('bottlenecks'):
    computed = pipeline.bottlenecks(config, layout.dataset, module, runner,
                                    load_vectors=False, keyed=keyed)
  skipped, reports = pipeline.report_skipped(config, layout, computed)
  images = usable_lib.usable_images(layout.dataset, computed)
  labels = list(layout.dataset.labels)
  split = pipeline.make_split(config, layout, images)
  # 32 bytes per image (chunks.compact_keys), not a Python string each.
  keys = chunks.compact_keys(images.digests)
  directories = [os.path.join(config.bottleneck_dir,
                              bottleneck_cache.namespace_id(
                                  pipeline.bottlenecks_lib.cache_namespace(
                                      module)))]
  train_keys, train_y = keys[split.train], images.labels[split.train]
  with phases('distorted_copies') as phase:
    copies = _copy_keys(config, module, runner, images, split, directories)
    if copies is None:
      phase.skip()
    else:
      train_keys = np.concatenate([train_keys, copies[0]])
      train_y = np.concatenate([train_y, train_y[copies[1]]])

  with phases('training'):
    index = chunks.VectorIndex(directories)
    readers = {name: chunks.ChunkReader(index, keys[split.subset(name)],
                                        compact=True)
               for name in ('validation', 'test')}
    readers['train'] = chunks.ChunkReader(index, train_keys, compact=True)
    # The readers hold shard and row numbers; the keys are no longer needed.
    del keys, train_keys
    index.drop_keys()
    trained = _train(config, readers['train'], train_y, len(labels),
                     readers['validation'], images.labels[split.validation])

  with phases('evaluation'):
    test = streaming.evaluate_streaming(
        trained.head, readers['test'], images.labels[split.test], budget,
        config.test_batch_size, seed=config.random_seed)
    misclassified = pipeline.report_test(config, labels, test, images, split)
    confidence = _calibrate(config, trained, readers['validation'],
                            images.labels[split.validation])
  with phases('export'):
    saved, deployment = pipeline.export(config, module, labels, trained, test,
                                        images, split, None, confidence)
  phases.total()
  pipeline.warn_skipped(skipped, reports)
  result = pipeline.RunResult(
      labels=labels,
      counts={name: int(len(split.subset(name))) for name in split_lib.SUBSETS},
      test_accuracy=test.accuracy, test_count=test.count,
      bottleneck_stats=computed.stats, skipped=skipped,
      history=trained.history, misclassified=misclassified,
      saved_model_dir=saved, timings=phases.timings,
      distorted_stats=copies[2] if copies is not None else None,
      peak_rss_mib=phases.peak_rss, deployment_report=deployment)
  pipeline.write_run_summary(config, result)
  return result
