"""Activations at a block boundary, computed once and cached like bottlenecks.

The bottom of the network (`LiteNetwork.bottom`) runs on every image, and
on every distorted copy of a training image, through the same batched,
parallel tf.data pipeline as the bottleneck vectors
(`retrain.bottlenecks.compute.make_compute_fn` and
`retrain.bottlenecks.distort.make_compute_fn`), and the results go into the
bottleneck cache in their own namespaces:

  plain:     module identity, kind 'activations', block, activation shape,
             storage dtype
  distorted: the same plus the distortion settings and --random_seed

with the same keys as the bottlenecks (image content hash, and
`<hash>:<copy>` for copies). So a re-run with the same settings computes
nothing, and changing the block, the module or any distortion setting
selects another namespace. The store's crash safety (whole shards renamed
into place) holds as for bottlenecks.

Activations are stored as float16: half the disk and memory of float32
(7x7x192 is 18 KB per image, 14x14x112 43 KB), and well inside float16's
range after ReLU6 and the projection convs (docs/fine_tuning.md has the
measured accuracy). They are read back in chunks into one float16 array,
so the float32 copy of the whole set never exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
import uuid
from typing import Sequence, Tuple

import h5py
import numpy as np
from absl import logging

import bottleneck_cache
from bottleneck_cache import store as store_lib
from bottleneck_cache import temporaries
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.common.progress import Progress
from retrain.errors import DISK_FULL_ERRNOS, OutputError
from retrain.features.modules import FeatureModule

# Bump when the bottom network's graph changes what an activation is.
_VERSION = 'v1'
STORAGE_DTYPE = np.float16
# Images per get_or_compute call: bounds the float32 arrays the store
# hands back (512 x 14 x 14 x 112 x 4 bytes = 45 MB).
_CHUNK = 512


class Float16Store(bottleneck_cache.BottleneckStore):
  """A BottleneckStore whose shards hold float16 (read back as float32).

  The base class merges all shards into one in memory whenever a
  get_or_compute call leaves many; for activations (tens of KB per item)
  that would hold the whole namespace as float32 and rewrite it after every
  chunk, so here `merge` does nothing and `compact` merges once, chunk by
  chunk, when a computation is done.
  """

  WRITES_CHECKS = False  # its own float16 layout; NaN/inf still found

  def merge(self) -> None:
    pass

  def _encode(self, keys: list, vectors: np.ndarray) -> bytes:
    """A shard's bytes, built in memory as the base class builds them (a
    full disk is then a plain OSError when written, the temporary removed
    and CacheFullError raised by the base class), float16 vectors."""
    buffer = io.BytesIO()
    self._fill(buffer, keys, vectors.shape[1],
               lambda ds: ds.__setitem__(slice(None), vectors))
    return buffer.getvalue()

  @staticmethod
  def _fill(target, keys: list, dim: int, fill) -> None:
    with h5py.File(target, 'w') as f:
      f.create_dataset('keys', data=np.array([k.encode('utf-8')
                                              for k in keys]))
      fill(f.create_dataset('vectors', (len(keys), dim), STORAGE_DTYPE))

  def _write(self, keys: list, dim: int, fill) -> str:
    """A new shard of `keys`, its float16 vectors written by fill(dataset)
    straight to disk (compact: too large to build in memory); renamed into
    place only when complete, removed on failure (a full disk:
    CacheFullError)."""
    token = f'{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    name = f'{store_lib.SHARD_PREFIX}{token}{store_lib.SHARD_SUFFIX}'
    # Named with its owner, as the base class names its temporaries, so
    # that a later run removes it only once its writer is gone.
    tmp = os.path.join(self.directory,
                       f'{store_lib.TMP_PREFIX}{temporaries.owner_tag()}')
    try:
      self._fill(tmp, keys, dim, fill)
      os.replace(tmp, os.path.join(self.directory, name))
    except OSError as e:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      if e.errno in DISK_FULL_ERRNOS or 'No space' in str(e):
        raise store_lib.CacheFullError(self.directory, len(keys) * dim * 2,
                                       detail=' to compact activations'
                                       ) from e
      raise
    return name

  def compact(self) -> None:
    """Rewrites all shards as one, reading _CHUNK items at a time."""
    if len(self._shards) <= store_lib.MERGE_THRESHOLD:
      return
    keys = list(self._index)

    def fill(dataset):
      for start in range(0, len(keys), _CHUNK):
        dataset[start:start + _CHUNK] = self.get(keys[start:start + _CHUNK])

    name = self._write(keys, self._dim, fill)
    old, self._shards = self._shards, [name]
    self._index = {key: (name, row) for row, key in enumerate(keys)}
    for shard in old:
      try:
        os.remove(os.path.join(self.directory, shard))
      except FileNotFoundError:
        pass  # Another process compacted it first.


def namespace(module: FeatureModule, block: int,
              shape: Tuple[int, int, int]) -> dict:
  """The cache namespace of plain activations entering `block`."""
  return dict(bottlenecks_lib.cache_namespace(module), kind='activations',
              block=int(block), activation_shape=list(shape),
              storage_dtype=np.dtype(STORAGE_DTYPE).name,
              activations_version=_VERSION)


def distorted_namespace(module: FeatureModule, block: int,
                        shape: Tuple[int, int, int],
                        distortions,
                        seed: int) -> dict:
  """The namespace of activations of distorted copies."""
  return dict(namespace(module, block, shape), kind='distorted_activations',
              distortions=distortions.describe(), random_seed=int(seed),
              distortion_version=distort_lib._VERSION)  # noqa: SLF001 the cache key of the distortions it reproduces


def bottom_module(module: FeatureModule, bottom, shape: Tuple[int, int, int],
                  input_size: Tuple[int, int]) -> FeatureModule:
  """`module` with `call` running `bottom` and flattening its output.

  Args:
    bottom: float32 [b, H, W, 3] -> float32 [b, h, w, c] (a tf.function).
  """
  import tensorflow as tf

  dim = int(np.prod(shape))

  @tf.function(input_signature=[tf.TensorSpec([None, *input_size, 3],
                                              tf.float32)])
  def call(images):
    return tf.reshape(bottom(images), [-1, dim])

  # TF runs one call over both cores; two calls at once would fight.
  return dataclasses.replace(module, call=call, output_dim=dim, prepare=None,
                             parallel_calls=1)


@dataclasses.dataclass
class Activations:
  """Activations of a list of items.

  Attributes:
    values: float16 [n_ok, h, w, c], row i for the i-th item whose ok is set.
    ok: bool [n].
    stats: what the cache did.
  """
  values: np.ndarray
  ok: np.ndarray
  stats: bottleneck_cache.Stats


def _get_or_compute(keys: Sequence[str], store, make_compute, shape,
                    what: str) -> Activations:
  """Chunked store.get_or_compute into one float16 array.

  make_compute(chunk indices) -> a ComputeFn over the chunk's items.
  """
  missing = len({k for k in keys if k not in store})
  if missing:
    logging.info('Computing %s for %d items (%d in the cache %s); done once, '
                 'later runs with the same settings read them from there.',
                 what, missing, len(set(keys)) - missing, store.directory)
  progress = Progress(what.capitalize(), missing)
  values = np.empty((len(keys), *shape), STORAGE_DTYPE)
  ok = np.zeros(len(keys), bool)
  stats = bottleneck_cache.Stats()
  for start in range(0, len(keys), _CHUNK):
    chunk = np.arange(start, min(start + _CHUNK, len(keys)))
    try:
      got, got_ok, s = store.get_or_compute(
          [keys[i] for i in chunk], make_compute(chunk),
          on_batch=progress.update)
    except bottleneck_cache.CacheError as e:  # a full disk: nothing half-kept
      raise OutputError(f'bottleneck_dir: {e}', fields=('bottleneck_dir',)
                        ) from e
    ok[chunk] = got_ok
    values[chunk[got_ok]] = got.reshape(-1, *shape)
    for field in dataclasses.fields(s):
      setattr(stats, field.name,
              getattr(stats, field.name) + getattr(s, field.name))
  if missing:
    progress.finish()
    try:
      store.compact()
    except bottleneck_cache.CacheError as e:
      logging.warning('Activation shards not compacted (%s); every one is '
                      'kept and a later run compacts them.', e)
  return Activations(values=values[ok], ok=ok, stats=stats)


def plain_activations(paths: Sequence[str], keys: Sequence[str],
                      bottom: FeatureModule, store,
                      shape: Tuple[int, int, int],
                      batch_size: int) -> Activations:
  """Activations of images `paths` (content keys `keys`), cached in store."""
  return _get_or_compute(
      keys, store, lambda chunk: bottlenecks_lib.make_compute_fn(
          [paths[i] for i in chunk], bottom, batch_size), shape,
      'activations')


@dataclasses.dataclass(frozen=True)
class Copies:
  """Which distorted copies to make: `count` of each image, seeded from
  `seed` as the head's copies are, `batch_size` images a call."""
  count: int
  seed: int
  batch_size: int


def distorted_activations(paths: Sequence[str], keys: Sequence[str],
                          bottom: FeatureModule, store,
                          shape: Tuple[int, int, int],
                          distortions, copies: Copies
                          ) -> Tuple[Activations, np.ndarray]:
  """Activations of `copies.count` distorted copies of each image.

  Returns:
    (activations, source): source int64 [n_ok], for each row the index into
    `paths` of the image it is a copy of. Copy c of an image is the very
    copy whose bottleneck the head trained on (same seed).
  """
  item_paths, item_source, item_keys, seeds = [], [], [], []
  for i, (path, key) in enumerate(zip(paths, keys, strict=True)):
    for c in range(copies.count):
      item_paths.append(path)
      item_source.append(i)
      item_keys.append(distort_lib.copy_key(key, c))
      seeds.append(distort_lib.copy_seed(copies.seed, key, c))
  seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 2)
  found = _get_or_compute(
      item_keys, store, lambda chunk: distort_lib.make_compute_fn(
          [item_paths[i] for i in chunk], seeds[chunk], bottom, distortions,
          copies.batch_size), shape, 'distorted activations')
  return found, np.asarray(item_source, np.int64)[found.ok]
