"""Computing bottleneck vectors for images, through the on-disk cache.

The expensive step of a run: every image is decoded, resized and passed
through the module once; the vectors then live in `bottleneck_cache` so a
re-run only computes images it has not seen. Images stream through a
tf.data pipeline that decodes in parallel and overlaps decoding with the
module, so memory stays flat however many images there are.

A file that cannot be read or decoded is reported with its reason and left
out; the run goes on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

import bottleneck_cache
from retrain import images as images_lib
from retrain.features import FeatureModule
from retrain.progress import Progress

# Content hashing is I/O bound and hashlib releases the GIL.
_HASH_THREADS = 8


@dataclasses.dataclass
class Bottlenecks:
  """Vectors for a list of images.

  Attributes:
    vectors: float32 [n_ok, D], row i for the i-th image whose `ok` is True.
    ok: bool [n], False for images that could not be used.
    failures: (path, reason) for each image that could not be used.
    stats: what the cache did (reused, computed, failed).
    keys: [n] each image's content key (file_digest), None if unreadable.
  """
  vectors: np.ndarray
  ok: np.ndarray
  failures: list
  stats: bottleneck_cache.Stats
  keys: Optional[list] = None


def cache_namespace(module: FeatureModule) -> dict:
  """The cache namespace of plain (undistorted) vectors of a module."""
  return dict(module.identity(), kind='bottleneck', preprocessing='v1')


def _hash_files(paths: Sequence[str]) -> list:
  """SHA-256 of each file, or an OSError for files that cannot be read."""
  def digest(path):
    try:
      return bottleneck_cache.file_digest(path)
    except OSError as e:
      return e
  with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
    return list(pool.map(digest, paths))


def _decode_error(path: str, size) -> str:
  """Why one file fails to decode (called only for the rare failures)."""
  try:
    images_lib.load_image(path, size)
  except Exception as e:  # pylint: disable=broad-except
    message = getattr(e, 'message', None) or str(e)
    return message.strip().splitlines()[0] if message.strip() else type(e).__name__
  return 'could not be decoded'


def make_compute_fn(paths: Sequence[str], module: FeatureModule,
                    batch_size: int):
  """A `bottleneck_cache.ComputeFn` that runs `module` on images `paths`."""
  size = module.input_size

  def compute(missing: Sequence[int]):
    missing = np.asarray(missing, dtype=np.int64)
    files = tf.constant([paths[i] for i in missing])

    def load(index, path):
      return index, images_lib.decode_and_resize(tf.io.read_file(path), size)

    dataset = (
        tf.data.Dataset.from_tensor_slices((missing, files))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # A file that fails to decode is dropped here; the indices that come
        # out tell which, and its reason is found afterwards.
        .ignore_errors()
        .batch(batch_size)
        .prefetch(2))
    for indices, batch in dataset:
      yield indices.numpy(), module.call(batch).numpy()

  return compute


def compute_bottlenecks(paths: Sequence[str], module: FeatureModule,
                        store: bottleneck_cache.BottleneckStore,
                        batch_size: int,
                        progress_interval: float = 5.0) -> Bottlenecks:
  """Vectors of `paths`, from the cache where possible.

  Args:
    paths: image files.
    module: the feature module; vectors have length module.output_dim.
    store: the cache namespace for this module (see cache_namespace).
    batch_size: images per module call.
    progress_interval: seconds between progress lines.
  """
  digests = _hash_files(paths)
  failures = []
  readable = []
  for i, d in enumerate(digests):
    if isinstance(d, OSError):
      failures.append((paths[i], f'cannot be read: {d.strerror or d}'))
    else:
      readable.append(i)
  keys = [digests[i] for i in readable]
  missing_count = len({k for k in keys if k not in store})
  if missing_count:
    logging.info(
        'Computing bottlenecks for %d images (%d found in the cache %s). This '
        'is the slow part, done once: later runs read them from the cache.',
        missing_count, len(set(keys)) - missing_count, store.directory)
  progress = Progress('Bottlenecks', missing_count, interval=progress_interval)
  compute = make_compute_fn([paths[i] for i in readable], module, batch_size)
  vectors, ok_readable, stats = store.get_or_compute(
      keys, compute, on_batch=progress.update)
  if missing_count:
    progress.finish()

  ok = np.zeros(len(paths), dtype=bool)
  ok[np.asarray(readable, dtype=np.int64)[ok_readable]] = True
  for i in np.asarray(readable, dtype=np.int64)[~ok_readable]:
    failures.append((paths[i], _decode_error(paths[i], module.input_size)))
  for path, reason in failures:
    logging.warning('Skipping %s: %s', path, reason)
  return Bottlenecks(vectors=vectors, ok=ok, failures=failures, stats=stats,
                     keys=[d if isinstance(d, str) else None for d in digests])
