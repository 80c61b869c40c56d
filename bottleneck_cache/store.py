"""An on-disk, crash-safe store of feature vectors ("bottlenecks") in HDF5.

Layout under the cache root (retrain's bottleneck_dir):

  <root>/<namespace id>/namespace.json    what the vectors were computed with
  <root>/<namespace id>/shard-*.h5        immutable files of (keys, vectors)

A namespace is everything a vector depends on besides the image itself: the
module's handle and fingerprint, the input size, and so on. Its id is a hash
of that description, so two modules never share vectors. Inside a namespace
a key is any string; retrain uses a hash of the image file's bytes, so a
renamed image reuses its vector and an edited one gets a new one.

Crash safety: every batch of new vectors is written to a temporary file that
is renamed into place only when complete, and a shard is never modified
after that. A process killed at any moment therefore leaves only whole
shards (plus, perhaps, a temporary file that is ignored and removed later),
and at most the batch in flight is lost. Many small shards are merged into
one when a computation finishes (merge first, rename, then delete the
parts), so a kill during the merge loses nothing either. A shard that cannot
be read (disk trouble, a file copied half-way) is set aside and its vectors
are recomputed, never fatal.

This module does not import TensorFlow: the compute function is passed in,
so the store is testable with numpy alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
from typing import Callable, Iterable, Optional, Sequence, Tuple

import h5py
import numpy as np
from absl import logging

from bottleneck_cache import atomic

SHARD_PREFIX = 'shard-'
SHARD_SUFFIX = '.h5'
TMP_PREFIX = '.tmp-'
NAMESPACE_FILE = 'namespace.json'
# Merge when a computation leaves more than this many shards: few enough
# files to open quickly, without rewriting the big shard after every run.
MERGE_THRESHOLD = 8
# Rows read from a shard per h5py call; bounds the memory of a read.
_READ_CHUNK = 8192

# compute(missing) -> iterable of (indices, vectors): `missing` are indices
# into the keys passed to get_or_compute; each yielded batch says which of
# them it computed (a subset, in any order; an index left out is a failure)
# and their vectors, float32 [len(indices), dim].
ComputeFn = Callable[[Sequence[int]], Iterable[Tuple[Sequence[int], np.ndarray]]]


class CacheError(ValueError):
  """The cache directory cannot be used (not writable, wrong dimension...)."""


def namespace_id(description: dict) -> str:
  """A short stable id for a namespace description (JSON-serialisable dict)."""
  text = json.dumps(description, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:20]


@dataclasses.dataclass
class Stats:
  """What one get_or_compute call did."""
  requested: int = 0  # distinct keys asked for
  reused: int = 0  # found in the cache
  computed: int = 0  # computed and stored now
  failed: int = 0  # the compute function gave no vector


class BottleneckStore:
  """Vectors of one namespace, keyed by string.

  Args:
    root: the cache folder (created if missing).
    description: JSON-serialisable dict of what the vectors depend on; it
      selects the namespace and is written beside the shards for humans.
  """

  def __init__(self, root: str, description: dict):
    self.description = description
    self.directory = os.path.join(root, namespace_id(description))
    try:
      os.makedirs(self.directory, exist_ok=True)
    except OSError as e:
      raise CacheError(
          f'Cannot create the bottleneck cache folder {self.directory!r} '
          f'({e.strerror}): give a writable folder as the cache root.'
      ) from e
    self._write_description()
    self._remove_stale_temporaries()
    # key -> (shard file name, row)
    self._index: dict = {}
    self._dim: Optional[int] = None
    self._shards: list = []
    self._load_index()

  # -- public API --------------------------------------------------------------

  def __len__(self) -> int:
    return len(self._index)

  def __contains__(self, key: str) -> bool:
    return key in self._index

  @property
  def dim(self) -> Optional[int]:
    """Vector length, or None while the store is empty."""
    return self._dim

  def get(self, keys: Sequence[str]) -> np.ndarray:
    """Vectors of keys that are all in the store, float32 [len(keys), dim]."""
    missing = [k for k in keys if k not in self._index]
    if missing:
      raise KeyError(f'{len(missing)} keys not in the cache, e.g. {missing[0]}')
    out = np.empty((len(keys), self._dim or 0), dtype=np.float32)
    by_shard: dict = {}
    for i, key in enumerate(keys):
      shard, row = self._index[key]
      by_shard.setdefault(shard, []).append((row, i))
    for shard, pairs in by_shard.items():
      pairs.sort()
      rows = np.array([r for r, _ in pairs], dtype=np.int64)
      dest = np.array([i for _, i in pairs], dtype=np.int64)
      with h5py.File(os.path.join(self.directory, shard), 'r') as f:
        vectors = f['vectors']
        # Contiguous ranges are read in chunks; h5py's fancy indexing needs
        # increasing rows, which the sort above gives.
        for start in range(0, len(rows), _READ_CHUNK):
          chunk = rows[start:start + _READ_CHUNK]
          lo, hi = int(chunk[0]), int(chunk[-1]) + 1
          block = vectors[lo:hi]
          out[dest[start:start + _READ_CHUNK]] = block[chunk - lo]
    return out

  def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
    """Stores one batch as a new shard, atomically."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(keys):
      raise CacheError(f'Expected vectors of shape [{len(keys)}, dim], got '
                       f'{vectors.shape}.')
    if self._dim is not None and vectors.shape[1] != self._dim:
      raise CacheError(
          f'Vectors of length {vectors.shape[1]} do not match the '
          f'{self._dim} already cached in {self.directory!r}.')
    if not np.all(np.isfinite(vectors)):
      raise CacheError('Refusing to cache vectors that contain NaN or inf.')
    if not keys:
      return
    name = self._write_shard(list(keys), vectors)
    self._dim = vectors.shape[1]
    self._shards.append(name)
    for row, key in enumerate(keys):
      self._index[key] = (name, row)

  def get_or_compute(self, keys: Sequence[str], compute: ComputeFn,
                     on_batch: Optional[Callable[[int], None]] = None
                     ) -> Tuple[np.ndarray, np.ndarray, Stats]:
    """Vectors for all keys, computing and storing only the missing ones.

    Args:
      keys: one key per item; duplicates are computed once.
      compute: called once with the indices (into `keys`) of the first
        occurrence of each missing key; yields batches of (indices, vectors)
        as described at ComputeFn. Each batch is stored before the next is
        asked for.
      on_batch: called with the number of items of each stored batch
        (progress reporting).

    Returns:
      (vectors, ok, stats): vectors float32 [n_ok, dim] for the items whose
      mask `ok` (bool [len(keys)]) is True, in key order; the others failed.
    """
    keys = list(keys)
    first_of: dict = {}
    for i, key in enumerate(keys):
      first_of.setdefault(key, i)
    stats = Stats(requested=len(first_of))
    missing = [i for key, i in first_of.items() if key not in self._index]
    stats.reused = stats.requested - len(missing)
    shards_before = len(self._shards)
    if missing:
      allowed = set(missing)
      for indices, vectors in compute(missing):
        indices = [int(i) for i in indices]
        unknown = [i for i in indices if i not in allowed]
        if unknown:
          raise CacheError(f'compute returned indices it was not asked for: '
                           f'{unknown[:5]}')
        self.put([keys[i] for i in indices], vectors)
        stats.computed += len(indices)
        if on_batch is not None:
          on_batch(len(indices))
      stats.failed = len(missing) - stats.computed
    if len(self._shards) > MERGE_THRESHOLD and len(self._shards) > shards_before:
      self.merge()
    ok = np.array([key in self._index for key in keys], dtype=bool)
    vectors = self.get([k for k, good in zip(keys, ok) if good])
    return vectors, ok, stats

  def merge(self) -> None:
    """Rewrites all shards as one, without a moment where data is missing."""
    if len(self._shards) < 2:
      return
    started = time.time()
    keys = list(self._index)
    vectors = self.get(keys)
    old = list(self._shards)
    name = self._write_shard(keys, vectors)
    self._shards = [name]
    self._index = {key: (name, row) for row, key in enumerate(keys)}
    for shard in old:
      try:
        os.remove(os.path.join(self.directory, shard))
      except FileNotFoundError:
        pass  # Another process merged it first; its data is in our shard.
    logging.debug('Merged %d cache shards (%d vectors) in %.1f s.', len(old),
                  len(keys), time.time() - started)

  # -- internals ---------------------------------------------------------------

  def _write_description(self) -> None:
    path = os.path.join(self.directory, NAMESPACE_FILE)
    if os.path.exists(path):
      return
    # The pid in the name: _remove_stale_temporaries keeps a live writer's.
    tmp = os.path.join(self.directory,
                       f'{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}.json')
    atomic.write_json(path, self.description, tmp, indent=2, sort_keys=True)

  def _remove_stale_temporaries(self) -> None:
    """Removes temporary files of processes that are gone."""
    for name in os.listdir(self.directory):
      if not name.startswith(TMP_PREFIX):
        continue
      pid = name[len(TMP_PREFIX):].split('-', 1)[0]
      if pid.isdigit() and _process_alive(int(pid)):
        continue
      try:
        os.remove(os.path.join(self.directory, name))
      except OSError:
        pass

  def _write_shard(self, keys: list, vectors: np.ndarray) -> str:
    token = f'{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    name = f'{SHARD_PREFIX}{token}{SHARD_SUFFIX}'
    tmp = os.path.join(self.directory, f'{TMP_PREFIX}{os.getpid()}-{token}')
    encoded = np.array([k.encode('utf-8') for k in keys])
    with h5py.File(tmp, 'w') as f:
      f.create_dataset('keys', data=encoded)
      f.create_dataset('vectors', data=vectors, dtype=np.float32)
    os.replace(tmp, os.path.join(self.directory, name))
    return name

  def _load_index(self) -> None:
    names = sorted(n for n in os.listdir(self.directory)
                   if n.startswith(SHARD_PREFIX) and n.endswith(SHARD_SUFFIX))
    for name in names:
      path = os.path.join(self.directory, name)
      try:
        with h5py.File(path, 'r') as f:
          keys = [k.decode('utf-8') for k in f['keys'][...]]
          shape = f['vectors'].shape
        if len(shape) != 2 or shape[0] != len(keys):
          raise ValueError(f'keys and vectors disagree: {len(keys)} vs {shape}')
        if self._dim is not None and shape[1] != self._dim:
          raise ValueError(f'vector length {shape[1]} != {self._dim}')
      except (OSError, ValueError, KeyError) as e:
        self._set_aside(path, e)
        continue
      if keys:
        self._dim = shape[1]
      self._shards.append(name)
      for row, key in enumerate(keys):
        self._index[key] = (name, row)

  def _set_aside(self, path: str, error: Exception) -> None:
    aside = path + '.corrupt'
    logging.warning('Bottleneck cache file %s cannot be read (%s); moving it to '
                    '%s and recomputing its vectors.', path, error, aside)
    try:
      os.replace(path, aside)
    except OSError:
      pass


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True
