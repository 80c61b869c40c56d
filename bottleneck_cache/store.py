"""An on-disk, crash-safe store of feature vectors ("bottlenecks") in HDF5.

Layout under the cache root (retrain's bottleneck_dir):

  <root>/<namespace id>/namespace.json    what the vectors were computed with
  <root>/<namespace id>/shard-*.h5        immutable files of (keys, vectors)
  <root>/<namespace id>/.claim-*          "I am computing these" markers
  <root>/<namespace id>/.tmp-<pid>@<host>~*   shards being written

A namespace is everything a vector depends on besides the image itself: the
module's handle and fingerprint, the input size, and so on. Its id is a hash
of that description, so two modules never share vectors. Inside a namespace
a key is any string; retrain uses a hash of the image file's bytes, so a
renamed image reuses its vector and an edited one gets a new one.

Crash safety: every batch of new vectors is written to a temporary file that
is renamed into place only when complete, and a shard is never modified
after that. A process killed at any moment therefore leaves only whole
shards (plus, perhaps, a temporary file that a later run removes, see
`bottleneck_cache.temporaries`), and at most the batch in flight is lost.
Many small shards are merged into one when a computation finishes (merge
first, rename, then delete the parts), so a kill during the merge loses
nothing either. A shard that cannot be read (disk trouble, a file copied
half-way) is set aside and its vectors are recomputed, never fatal.

Damage: every vector is checked when read (its row's CRC-32 over key and
vector, and NaN/inf; `shards.bad_rows`). `get_or_compute` checks the
vectors it is asked for before it returns: damaged ones are dropped from
the index, logged, recomputed like missing ones, and the shards are then
merged, which writes only whole vectors (the damaged shard is gone). Shards
of older versions without checks are read, checked for NaN/inf only, and
rewritten with checks by a merge at the end of the first get_or_compute
that uses them (said in the log).

Sharing: any number of processes, on one host or on several sharing the
folder, may read and fill one namespace at once.
- A merge deletes the shards it merged, which another process may be about
  to open. Readers therefore treat a vanished shard as a sign to re-read
  the folder: the merged shard holding its vectors was renamed into place
  before any part was deleted, so the re-read finds every vector. (The
  alternative, a merge that deletes only shards it wrote itself, would
  leave the shards of killed runs unmerged forever.)
- Missing keys are computed in claimed buckets, so runs started together
  split the work (`bottleneck_cache.claims`).

Full disk: a shard is built in memory (h5py's in-memory file image) and
written with one plain write, so a full disk is an OSError from Python, not
a failure inside the HDF5 library (which, on close, could crash the
interpreter). The partial file is removed, every earlier shard kept, and
`CacheFullError` says which folder needs how much space.

This module does not import TensorFlow: the compute function is passed in,
so the store is testable with numpy alone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from typing import Callable, Optional, Sequence, Tuple

import h5py
import numpy as np
from absl import logging

from bottleneck_cache import shards, temporaries
from bottleneck_cache.claims import ClaimedComputing, ComputeFn, Stats
from bottleneck_cache.errors import CacheError, CacheFullError, bytes_needed
from bottleneck_cache.shards import SHARD_PREFIX, SHARD_SUFFIX, TMP_PREFIX

NAMESPACE_FILE = 'namespace.json'
# Merge when a computation leaves more than this many shards: few enough
# files to open quickly, without rewriting the big shard after every run.
MERGE_THRESHOLD = 8
# Rows read from a shard per h5py call; bounds the memory of a read.
_READ_CHUNK = 8192
# Re-reads of the folder when shards vanish under a reader (merges by other
# processes); each re-read finds the merged shard, so 1 is nearly always
# enough.
_VANISHED_RETRIES = 8
# Rounds of checking and recomputing damaged vectors in get_or_compute:
# damage found in a vector just written means the disk itself is failing.
_HEAL_ROUNDS = 3


class _Vanished(Exception):
  """A shard in the index was deleted (merged) by another process."""


def namespace_id(description: dict) -> str:
  """A short stable id for a namespace description (JSON-serialisable dict)."""
  text = json.dumps(description, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:20]


_written = {'vectors': 0}
_written_lock = threading.Lock()


def vectors_written() -> int:
  """Vectors this process has stored, in all caches (what a run stopped by
  Ctrl-C kept)."""
  return _written['vectors']


class BottleneckStore(ClaimedComputing):
  """Vectors of one namespace, keyed by string.

  Args:
    root: the cache folder (created if missing).
    description: JSON-serialisable dict of what the vectors depend on; it
      selects the namespace and is written beside the shards for humans.
  """

  # Shards written by this class carry row checks (shards.CHECKS); a
  # subclass that writes its own layout sets this False.
  WRITES_CHECKS = True
  # Shards a damaged vector was found in (merged away after the next
  # computation).
  _damaged = frozenset()

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
    temporaries.remove_stale(self.directory, TMP_PREFIX,
                             'temporary bottleneck cache')
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
    """Vectors of keys that are all in the store, float32 [len(keys), dim].

    A shard that vanished since the index was read (merged away by another
    process) makes the store re-read the folder and try again.

    Raises:
      CacheError: some of the vectors are damaged (see the module doc);
        they are dropped from the index, so get_or_compute recomputes them.
    """
    out, bad = self._read(keys)
    if bad.any():
      damaged = [keys[i] for i in np.flatnonzero(bad)]
      self._forget(damaged)
      raise CacheError(
          f'{len(damaged)} cached vectors in {self.directory!r} are damaged '
          '(checksum mismatch, NaN or inf) and were dropped; run again to '
          'recompute them.')
    return out

  def _read(self, keys: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """(float32 [len(keys), dim], bool [len(keys)] damaged rows), re-reading
    the folder when a shard vanished (see get)."""
    for attempt in range(_VANISHED_RETRIES + 1):
      try:
        return self._get(keys)
      except _Vanished:
        if attempt == _VANISHED_RETRIES:
          raise
        logging.debug('A cache shard vanished (merged by another process); '
                      're-reading %s.', self.directory)
        self.reload()
    raise AssertionError('unreachable')

  def damaged(self, keys: Sequence[str]) -> list:
    """The keys (all in the store) whose vectors are damaged, read
    _READ_CHUNK at a time."""
    found = []
    for start in range(0, len(keys), _READ_CHUNK):
      part = keys[start:start + _READ_CHUNK]
      _, bad = self._read(part)
      found.extend(part[i] for i in np.flatnonzero(bad))
    return found

  def _forget(self, keys: Sequence[str]) -> None:
    """Drops damaged vectors from the index (logged); their shards are
    merged away after the next computation."""
    shards_hit = {self._index[key][0] for key in keys if key in self._index}
    self._damaged = self._damaged | shards_hit
    for key in keys:
      self._index.pop(key, None)
    logging.warning('Dropped %d damaged vectors (checksum mismatch, NaN or '
                    'inf) from the bottleneck cache shard(s) %s in %s; they '
                    'are recomputed.', len(keys), ', '.join(sorted(shards_hit)),
                    self.directory)

  def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
    """Stores one batch as a new shard, atomically.

    Raises:
      CacheFullError: the disk is full; nothing of this batch was kept.
      CacheError: vectors of the wrong shape, length or with NaN.
    """
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
    with _written_lock:
      _written['vectors'] += len(keys)
    self._dim = vectors.shape[1]
    self._shards.append(name)
    if self.WRITES_CHECKS:
      self._checked.add(name)
    for row, key in enumerate(keys):
      self._index[key] = (name, row)

  def get_or_compute(self, keys: Sequence[str], compute: ComputeFn,
                     on_batch: Optional[Callable[[int], None]] = None,
                     load: bool = True
                     ) -> Tuple[np.ndarray, np.ndarray, Stats]:
    """Vectors for all keys, computing and storing only the missing ones.

    Args:
      keys: one key per item; duplicates are computed once.
      compute: called with the indices (into `keys`) of the first
        occurrence of missing keys, once per claimed bucket (see the module
        doc; one call when there are at most CLAIM_BUCKET keys); yields
        batches of (indices, vectors) as described at ComputeFn. Each batch
        is stored before the next is asked for.
      on_batch: called with the number of items of each stored batch
        (progress reporting).
      load: False returns no vectors (float32 [0, dim]), only the mask and
        stats: for callers that read them later in chunks (bottleneck_cache
        .chunks), so a million vectors are never in memory at once.

    Returns:
      (vectors, ok, stats): vectors float32 [n_ok, dim] for the items whose
      mask `ok` (bool [len(keys)]) is True, in key order; the others failed.

    Raises:
      CacheFullError: the disk filled up; the batches stored before stay.
    """
    keys = list(keys)
    first_of: dict = {}
    for i, key in enumerate(keys):
      first_of.setdefault(key, i)
    stats = Stats(requested=len(first_of))
    attempted = set()
    vectors = None
    for _ in range(_HEAL_ROUNDS):
      missing = [i for key, i in first_of.items() if key not in self._index]
      if missing:
        self._compute_or_full(keys, missing, len(first_of), compute,
                              on_batch, stats, attempted)
      # Damaged vectors (see the module doc) are dropped and computed again.
      # With load, the checked vectors are the ones returned (one read).
      if load:
        wanted = [k for k in keys if k in self._index]
        vectors, bad = self._read(wanted)
        damaged = list({wanted[i] for i in np.flatnonzero(bad)})
      else:
        damaged = self.damaged([k for k in first_of if k in self._index])
      if not damaged:
        break
      self._forget(damaged)
      vectors = None
    if stats.computed or self._damaged or self._unchecked():
      self.tidy()
    ok = np.array([key in self._index for key in keys], dtype=bool)
    stats.failed = sum(1 for i in attempted if keys[i] not in self._index)
    stats.reused = stats.requested - stats.computed - stats.failed
    if not load:
      return np.zeros((0, self._dim or 0), np.float32), ok, stats
    if vectors is None:  # still damaged after the last round: never returned
      vectors = self.get([k for k, good in zip(keys, ok, strict=True)
                          if good])
    return vectors, ok, stats

  def _compute_or_full(self, keys: list, missing: list, distinct: int,
                       compute: ComputeFn, on_batch, stats: Stats,
                       attempted: set) -> None:
    """_compute_missing, a full disk worded for all the work left."""
    try:
      self._compute_missing(keys, missing, distinct, compute, on_batch,
                            stats, attempted)
    except CacheFullError as e:
      # Say how much the whole remaining work needs, not just the batch.
      left = len({keys[i] for i in missing} - set(self._index))
      dim = self._dim or 0
      raise CacheFullError(
          self.directory, bytes_needed(left, dim, len(self._index)),
          e.available, detail=f' for the {left} vectors still to compute '
          f'({len(self._index)} are stored)') from e

  def tidy(self) -> None:
    """Merges the shards when there are more than MERGE_THRESHOLD (after
    a computation: one shard per batch), or when one held a damaged
    vector; a full disk leaves them as they are, with a warning."""
    unchecked = self._unchecked()
    if len(self._shards) <= MERGE_THRESHOLD and not (
        self._damaged and len(self._shards) > 1) and not unchecked:
      return
    if unchecked:
      logging.info('Adding checksums to %d bottleneck cache shard(s) of an '
                   'older version in %s (once: the shards are merged).',
                   unchecked, self.directory)
    try:
      self.merge()
    except CacheError as e:
      logging.warning('Cache shards not merged (%s); every vector is kept '
                      'and the merge is tried again by a later run.', e)

  def _unchecked(self) -> int:
    """Shards without row checks that a merge would give checks to."""
    return (len(self._shards) - len(self._checked)) if (
        self.WRITES_CHECKS) else 0

  def merge(self) -> None:
    """Rewrites all shards as one, without a moment where data is missing.

    Other processes may still hold the merged shards in their index; they
    re-read the folder when one vanishes (see `get`).
    """
    if len(self._shards) < 2 and not self._unchecked():
      return
    started = time.time()
    keys = list(self._index)
    vectors, bad = self._read(keys)
    if bad.any():  # only whole vectors move into the merged shard
      keys = [key for key, b in zip(keys, bad, strict=True) if not b]
      vectors = vectors[~bad]
    old = list(self._shards)
    name = self._write_shard(keys, vectors)
    self._shards = [name]
    self._checked = {name} if self.WRITES_CHECKS else set()
    self._damaged = frozenset()
    self._index = {key: (name, row) for row, key in enumerate(keys)}
    for shard in old:
      try:
        os.remove(os.path.join(self.directory, shard))
      except FileNotFoundError:
        pass  # Another process merged it first; its data is in our shard.
    logging.debug('Merged %d cache shards (%d vectors) in %.1f s.', len(old),
                  len(keys), time.time() - started)

  def reload(self) -> None:
    """Re-reads the folder: shards written or merged by other processes."""
    self._index = {}
    self._shards = []
    self._load_index()

  # -- internals ---------------------------------------------------------------

  def _get(self, keys: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """_read without the retries."""
    missing = [k for k in keys if k not in self._index]
    if missing:
      raise KeyError(f'{len(missing)} keys not in the cache, e.g. {missing[0]}')
    out = np.empty((len(keys), self._dim or 0), dtype=np.float32)
    bad = np.zeros(len(keys), bool)
    by_shard: dict = {}
    for i, key in enumerate(keys):
      shard, row = self._index[key]
      by_shard.setdefault(shard, []).append((row, i))
    for shard, pairs in by_shard.items():
      pairs.sort()
      rows = np.array([r for r, _ in pairs], dtype=np.int64)
      dest = np.array([i for _, i in pairs], dtype=np.int64)
      path = os.path.join(self.directory, shard)
      try:
        f = h5py.File(path, 'r')
      except OSError as e:
        # Deleted between our listing and the open (h5py says "file not
        # found" or, if it vanished during the open, "can't retrieve stat
        # info"): a merge; anything else is a real error.
        if isinstance(e, FileNotFoundError) or not os.path.exists(path):
          raise _Vanished(path) from e
        raise
      with f:
        vectors = f['vectors']
        checks = f[shards.CHECKS] if shard in self._checked else None
        # Contiguous ranges are read in chunks; h5py's fancy indexing needs
        # increasing rows, which the sort above gives.
        for start in range(0, len(rows), _READ_CHUNK):
          chunk = rows[start:start + _READ_CHUNK]
          to = dest[start:start + _READ_CHUNK]
          lo, hi = int(chunk[0]), int(chunk[-1]) + 1
          out[to] = vectors[lo:hi][chunk - lo]
          bad[to] = shards.bad_rows(
              [keys[i] for i in to], out[to],
              None if checks is None else checks[lo:hi][chunk - lo])
    return out, bad

  def _refresh(self) -> None:
    """Adds shards that appeared since the index was read; re-reads all
    when some of ours vanished (merged away)."""
    try:
      names = set(os.listdir(self.directory))
    except OSError:
      return
    if any(shard not in names for shard in self._shards):
      self.reload()
      return
    known = set(self._shards)
    self._load_shards(sorted(n for n in names if n not in known and
                             shards.is_shard_name(n)))

  def _write_description(self) -> None:
    path = os.path.join(self.directory, NAMESPACE_FILE)
    if os.path.exists(path):
      return
    tmp = os.path.join(self.directory,
                       f'{TMP_PREFIX}{temporaries.owner_tag()}.json')
    text = json.dumps(self.description, indent=2, sort_keys=True)
    try:
      _write_bytes(tmp, text.encode('utf-8'))
      os.replace(tmp, path)
    except OSError as e:
      _remove_quietly(tmp)
      if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise CacheFullError(self.directory, 1 << 20) from e
      raise CacheError(
          f'Cannot write to the bottleneck cache folder {self.directory!r} '
          f'({e.strerror}): give a writable folder as the cache root.'
      ) from e

  def _encode(self, keys: list, vectors: np.ndarray) -> bytes:
    """The bytes of a shard of keys and vectors (shards.encode_shard)."""
    return shards.encode_shard(keys, vectors)

  def _write_shard(self, keys: list, vectors: np.ndarray) -> str:
    """Writes one shard (temporary name, then rename); returns its name."""
    token = f'{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    name = f'{SHARD_PREFIX}{token}{SHARD_SUFFIX}'
    tmp = os.path.join(self.directory,
                       f'{TMP_PREFIX}{temporaries.owner_tag()}')
    # The HDF5 file is built in memory and written with one plain write: a
    # full disk is then an OSError here, never an error inside HDF5's own
    # file driver (whose close, after a failed write, crashed the
    # interpreter). Costs one in-memory copy of the shard.
    data = self._encode(keys, vectors)
    try:
      _write_bytes(tmp, data)
      os.replace(tmp, os.path.join(self.directory, name))
    except OSError as e:
      _remove_quietly(tmp)
      if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
          free = shutil.disk_usage(self.directory).free
        except OSError:
          free = None
        raise CacheFullError(
            self.directory, len(data), free,
            detail=f' to write {len(keys)} more vectors') from e
      raise CacheError(
          f'Cannot write to the bottleneck cache folder {self.directory!r} '
          f'({e.strerror or e}): give a writable folder as the cache '
          'root.') from e
    return name

  def _load_index(self) -> None:
    self._checked = set()  # the shards with row checks
    for _ in range(_VANISHED_RETRIES + 1):
      names = sorted(n for n in os.listdir(self.directory)
                     if shards.is_shard_name(n))
      if self._load_shards(names):
        return
      # A shard vanished between listing and opening: a merge by another
      # process; its merged shard may have appeared after our listing.
      self._index, self._shards, self._dim = {}, [], None
      self._checked = set()

  def _load_shards(self, names: Sequence[str]) -> bool:
    """Adds shards to the index; False if one vanished before it was read."""
    for name in names:
      path = os.path.join(self.directory, name)
      try:
        with h5py.File(path, 'r') as f:
          keys = [k.decode('utf-8') for k in f['keys'][...]]
          shape = f['vectors'].shape
          checked = (shards.CHECKS in f and
                     f[shards.CHECKS].shape == (len(keys),))
        if len(shape) != 2 or shape[0] != len(keys):
          raise ValueError(f'keys and vectors disagree: {len(keys)} vs {shape}')
        if self._dim is not None and shape[1] != self._dim:
          raise ValueError(f'vector length {shape[1]} != {self._dim}')
      except (OSError, ValueError, KeyError) as e:
        if not os.path.exists(path):
          return False
        self._set_aside(path, e)
        continue
      if keys:
        self._dim = shape[1]
      self._shards.append(name)
      if checked:
        self._checked.add(name)
      for row, key in enumerate(keys):
        self._index[key] = (name, row)
    return True

  def _set_aside(self, path: str, error: Exception) -> None:
    aside = path + '.corrupt'
    logging.warning('Bottleneck cache file %s cannot be read (%s); moving it to '
                    '%s and recomputing its vectors.', path, error, aside)
    try:
      os.replace(path, aside)
    except OSError:
      pass


def _write_bytes(path: str, data) -> None:
  with open(path, 'wb') as f:
    f.write(data)


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


