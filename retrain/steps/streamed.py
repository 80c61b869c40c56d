"""The storage past the memory budget: vectors stay in the cache, read in
chunks.

When the training vectors a run expects (training images plus their
distorted copies) exceed `Config.max_vectors_in_memory`, the bottleneck
step (retrain.steps.vectors) chooses this storage, and retrain.pipeline.run
trains and evaluates with the steps here instead of the in-memory ones. The
rest of the run is the same, with three differences:

- bottlenecks and distorted copies are computed into the cache as usual
  but not loaded (`load_vectors=False`);
- training and the test evaluation read from the cache in chunks
  (retrain.head.streaming), through a compact numpy index of the keys
  (bottleneck_cache.chunks) instead of the store's dict;
- calibration and the novelty score are fitted on a sample read from the
  cache (`calibrate`, `sampler`);
- what needs every vector at once is left out: TensorBoard summaries, the
  per-class report, projector and validation-image views
  (retrain.report.writer), intermediate graphs, fine-tuning and the
  results page. The log lines, the skipped-files report, trust.json, the
  run summary and every export are written as usual.

Memory: per image the file list and the digest memo of discovery (a few
hundred bytes; see docs/scale.md); for training and evaluation, compact
numpy state only (a 32-byte key, class id, shard and row: about 60 bytes
per vector with the index), plus two chunks of streaming.CHUNK_BYTES and
the validation sample.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional

import numpy as np
from absl import logging

import bottleneck_cache
from bottleneck_cache import chunks
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.config import Config
from retrain.errors import DatasetError
from retrain.features import ensemble as ensemble_lib
from retrain.head import evaluate as evaluate_lib
from retrain.head import streaming
from retrain.head import train as train_lib
from retrain.steps import head

# Copy keys made (as Python strings) per pass before they are compacted.
_KEY_BLOCK = 65536


def expected_training_vectors(config: Config, images: int) -> int:
  """Training vectors a run of `images` images will have, before decoding:
  the share the split leaves to train, times 1 + the distorted copies."""
  share = max(0.0, 100.0 - config.data.validation_percentage -
              config.data.testing_percentage) / 100.0
  copies = (config.distort.distorted_copies
            if config.distort.any() else 0)
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
  if config.scale.max_vectors_in_memory < 0:
    raise DatasetError(
        f'max_vectors_in_memory={config.scale.max_vectors_in_memory} must be 0 '
        '(never stream) or a number of vectors, e.g. 100000.', fields=('max_vectors_in_memory',))
  past = streaming.should_stream(expected_training_vectors(config, images),
                                 config.scale.max_vectors_in_memory)
  if past and len(ensemble_lib.members(module)) > 1:
    logging.warning('The training vectors exceed --max_vectors_in_memory=%d, '
                    'but an ensemble of modules cannot stream from the cache '
                    'yet; training holds them in memory. Use one module '
                    '(e.g. --tfhub_module efficientnet_lite0) to stream.',
                    config.scale.max_vectors_in_memory)
    return False
  if past and config.finetune.fine_tune:
    raise DatasetError(
        f'fine_tune holds the activations of every training image in '
        f'memory, but this run\'s {expected_training_vectors(config, images)} '
        f'training vectors are past max_vectors_in_memory='
        f'{config.scale.max_vectors_in_memory}, so it would stream from the cache: '
        'fine-tune on a smaller folder, or raise max_vectors_in_memory if '
        'the memory allows (about 20 KB per image from the last block).',
        fields=('fine_tune', 'max_vectors_in_memory'))
  return past


@dataclasses.dataclass
class CopyKeys:
  """The training images' distorted copies in the cache.

  Attributes:
    keys: their compact cache keys, 'S32' [m] (chunks.compact_keys).
    source: int64 [m], the row into split.train each copy was made from.
    stats: what the cache did (bottleneck_cache.Stats).
    directory: their namespace folder.
  """
  keys: np.ndarray
  source: np.ndarray
  stats: bottleneck_cache.Stats
  directory: str


def copy_keys(config: Config, module, runner, images, split
              ) -> Optional[CopyKeys]:
  """Computes the distorted copies of the training images into the cache
  (not loaded); None without distortions."""
  distortions = config.distort
  copies = distort_lib.training_copies(
      distort_lib.CopyRecipe(distortions, config.distort.distorted_copies,
                             config.head.random_seed),
      config.cache.bottleneck_dir, config.cache.bottleneck_batch_size, runner,
      images.paths_of(split.train), images.digests_of(split.train),
      load_vectors=False)
  if copies is None:
    return None
  directory = os.path.join(
      config.cache.bottleneck_dir, bottleneck_cache.namespace_id(
          distort_lib.cache_namespace(module, distortions,
                                      config.head.random_seed)))
  train_digests = images.digests_of(split.train)
  keys = [chunks.compact_keys([
      distort_lib.copy_key(train_digests[s], int(c)) for s, c in zip(
          copies.source[i:i + _KEY_BLOCK], copies.copy[i:i + _KEY_BLOCK],
          strict=True)])
          for i in range(0, len(copies.source), _KEY_BLOCK)]
  keys = np.concatenate(keys) if keys else chunks.compact_keys([])
  return CopyKeys(keys, copies.source, copies.stats, directory)


@dataclasses.dataclass
class Stream:
  """What training and evaluation read past the memory budget.

  Attributes:
    readers: a chunks.ChunkReader per subset, 'train' (distorted copies
      after the images), 'validation' and 'test'.
    labels: int64 class ids of each reader's rows, per subset.
  """
  readers: Dict[str, chunks.ChunkReader]
  labels: Dict[str, np.ndarray]
  # Rows of readers['train'] that are images (the copies follow them).
  originals: int = 0


def cache_index(config: Config, module, images,
                copies: Optional[CopyKeys]):
  """(chunks.VectorIndex of the module's namespace and the copies', 'S32'
  [n] the compact key of each image)."""
  # 32 bytes per image (chunks.compact_keys), not a Python string each.
  keys = chunks.compact_keys(images.digests)
  directories = [os.path.join(config.cache.bottleneck_dir,
                              bottleneck_cache.namespace_id(
                                  bottlenecks_lib.cache_namespace(module)))]
  if copies is not None:
    directories.append(copies.directory)
  return chunks.VectorIndex(directories), keys


def open_stream(config: Config, module, images, split,
                copies: Optional[CopyKeys]) -> Stream:
  """The chunk readers of the split's images (and copies), through a
  compact numpy index of the cache's keys (the keys themselves dropped)."""
  index, keys = cache_index(config, module, images, copies)
  train_keys, train_y = keys[split.train], images.labels[split.train]
  if copies is not None:
    train_keys = np.concatenate([train_keys, copies.keys])
    train_y = np.concatenate([train_y, train_y[copies.source]])
  readers = {name: chunks.ChunkReader(index, keys[split.subset(name)],
                                      compact=True)
             for name in ('validation', 'test')}
  readers['train'] = chunks.ChunkReader(index, train_keys, compact=True)
  # The readers hold shard and row numbers; the keys are no longer needed.
  del keys, train_keys
  index.drop_keys()
  return Stream(readers, {'train': train_y,
                          'validation': images.labels[split.validation],
                          'test': images.labels[split.test]},
                len(split.train))


def calibrate(config: Config, trained: train_lib.TrainResult,
              stream: Stream, test: Optional[evaluate_lib.Evaluation] = None):
  """head.calibrate on a random sample of the validation set
  (streaming.sample_capacity), read from the cache; the test ECE before
  and after from `test`."""
  validation, val_y = stream.readers['validation'], stream.labels['validation']
  rows = np.arange(len(val_y))
  cap = streaming.sample_capacity(config.scale.max_vectors_in_memory,
                                  validation.dim)
  if len(rows) > cap:
    rows = np.sort(np.random.default_rng(config.head.random_seed).choice(
        len(rows), cap, replace=False))
  return head.calibrate(config, trained, validation.read(rows), val_y[rows],
                        test=test)


def train(config: Config, stream: Stream,
          num_classes: int) -> train_lib.TrainResult:
  """Streaming SGD with the run's settings, logged as the pipeline logs."""
  settings = head.train_settings(config)
  if config.head.head_solver != 'sgd':
    # The converging solver needs every vector on each iteration.
    logging.info('--head_solver %s: past the memory budget the head is '
                 'trained with SGD, streaming (docs/scale.md).',
                 config.head.head_solver)
  log = train_lib.EvalLog(train_lib.eval_steps(settings.steps,
                                               settings.eval_step_interval))
  stats = streaming.StreamStats()
  trained = streaming.train_head_streaming(
      streaming.Labelled(stream.readers['train'], stream.labels['train']),
      streaming.Labelled(stream.readers['validation'],
                         stream.labels['validation']),
      num_classes, settings, config.scale.max_vectors_in_memory, on_eval=log,
      stats=stats)
  log.finish()
  logging.info('Streamed %d chunks (%d vectors read; %.1f s waiting for '
               'reads).', stats.chunks, stats.vectors_read, stats.wait_seconds)
  return trained


def evaluate(config: Config, trained: train_lib.TrainResult,
             stream: Stream) -> evaluate_lib.Evaluation:
  """The test accuracy, read from the cache in chunks."""
  return streaming.evaluate_streaming(
      trained.head, stream.readers['test'], stream.labels['test'],
      config.scale.max_vectors_in_memory, config.head.test_batch_size,
      seed=config.head.random_seed)


def sampler(config: Config, stream: Stream):
  """trust_checks' `read` past the memory budget: the original images of
  the named subsets, at most streaming.sample_capacity of them (drawn at
  random, in order), read from the cache."""

  def read(names):
    counts = [stream.originals if name == 'train' else
              len(stream.labels[name]) for name in names]
    cap = streaming.sample_capacity(config.scale.max_vectors_in_memory,
                                    stream.readers['train'].dim)
    picked = np.arange(sum(counts))
    if len(picked) > cap:
      picked = np.sort(np.random.default_rng(config.head.random_seed).choice(
          len(picked), cap, replace=False))
    xs, ys, start = [], [], 0
    for name, count in zip(names, counts, strict=True):
      rows = picked[(picked >= start) & (picked < start + count)] - start
      start += count
      xs.append(stream.readers[name].read(rows))
      ys.append(stream.labels[name][rows])
    return np.concatenate(xs), np.concatenate(ys)

  return read
