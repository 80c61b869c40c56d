"""Reading many cached vectors a chunk at a time, in bounded memory.

`BottleneckStore` keeps a Python dict of every key (a few hundred bytes per
key) and returns vectors as one array: right for the tens of thousands of
vectors of a laptop data set, wrong for a million (5 GB at 1,280 floats).
Here every key is a 32-byte binary digest (`compact_keys`) in sorted numpy
arrays, with an int16/int32 shard number and an int32 row: about 40 bytes
per vector, looked up with `searchsorted`. `ChunkReader` reads any subset
of a fixed list of items, grouped by shard and row so each shard is read in
a few contiguous slices. No TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
from typing import List, Sequence, Union

import h5py
import numpy as np

from bottleneck_cache import shards

# Rows read per h5py slice when the wanted rows are dense in it (1,024 rows
# of 1,280 floats: 5 MB, the transient memory of a read); sparser wanted
# rows are read by point selection instead (below).
_SLICE_ROWS = 1024
# A slice is read whole when at least 1 row in this many is wanted.
_DENSE = 4
# Width of a compact key and the keys converted per numpy pass (bounds the
# temporaries of a conversion to a few MB).
KEY_BYTES = 32
_CONVERT_BLOCK = 65536
# Hex digit value of each byte, 255 for bytes that are not a lowercase hex
# digit. Upper case is not decoded but hashed: 'AB..' and 'ab..' are two
# cache keys, so they must stay two compact keys.
_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b'0123456789abcdef', np.uint8)] = np.arange(16)


def compact_keys(keys) -> np.ndarray:
  """The 32-byte compact form of cache keys: 'S32' [n].

  Args:
    keys: str or bytes keys (a list, or a bytes array as a shard stores
      them).

  A key of 64 lowercase hex digits (the SHA-256 of an image, retrain's
  content key) becomes its 32 bytes; any other key (a distorted copy's
  `<digest>:<copy>`, a test's 'a') becomes the SHA-256 of its UTF-8 bytes.
  Two different keys meet only if SHA-256 collides.
  """
  n = len(keys)
  out = np.empty((n, KEY_BYTES), np.uint8)
  for start in range(0, n, _CONVERT_BLOCK):
    part = keys[start:start + _CONVERT_BLOCK]
    if not (isinstance(part, np.ndarray) and part.dtype.kind == 'S'):
      part = np.array([k.encode('utf-8') if isinstance(k, str) else bytes(k)
                       for k in part], dtype='S')
    out[start:start + len(part)] = _compact_block(part)
  return out.view(f'S{KEY_BYTES}').reshape(n)


def _compact_block(part: np.ndarray) -> np.ndarray:
  """uint8 [n, 32] for a bytes array [n] (see compact_keys)."""
  width = part.dtype.itemsize
  out = np.empty((len(part), KEY_BYTES), np.uint8)
  hexed = np.zeros(len(part), bool)
  if width >= 2 * KEY_BYTES and len(part):
    codes = np.ascontiguousarray(part).view(np.uint8).reshape(len(part), width)
    nibbles = _HEX[codes[:, :2 * KEY_BYTES]]
    hexed = (nibbles != 255).all(axis=1) & ~codes[:, 2 * KEY_BYTES:].any(axis=1)
    out[hexed] = (nibbles[hexed, 0::2] << 4) | nibbles[hexed, 1::2]
  for i in np.flatnonzero(~hexed):
    out[i] = np.frombuffer(hashlib.sha256(part[i]).digest(), np.uint8)
  return out


class VectorIndex:
  """Where each key of one or more namespace folders lives.

  Args:
    directories: a namespace folder (`BottleneckStore.directory`) or a list
      of them (e.g. plain vectors and distorted copies, whose keys differ);
      unreadable shards are skipped (BottleneckStore sets them aside on its
      next open).

  Attributes:
    shard_paths: the shard files, indexed by shard number.
    dim: vector length (None when there are no vectors).

  Memory: 32 bytes (compact key) + 2 or 4 (shard) + 4 (row) per vector,
  and while building, one more copy of the keys and an int64 sort order.
  """

  def __init__(self, directories: Union[str, Sequence[str]]):
    if isinstance(directories, str):
      directories = [directories]
    self.directory = ', '.join(directories)
    paths = [os.path.join(d, n) for d in directories
             for n in sorted(os.listdir(d)) if shards.is_shard_name(n)]
    self.shard_paths: List[str] = []
    keys, counts = [], []
    self.dim = None
    for path in paths:
      try:
        with h5py.File(path, 'r') as f:
          shard_keys = f['keys'][...]
          shape = f['vectors'].shape
      except (OSError, KeyError, ValueError):
        continue
      if len(shape) != 2 or shape[0] != len(shard_keys):
        continue
      self.dim = int(shape[1])
      keys.append(compact_keys(shard_keys.astype('S')))
      counts.append(len(shard_keys))
      self.shard_paths.append(path)
    all_keys = (np.concatenate(keys) if keys
                else np.zeros(0, f'S{KEY_BYTES}'))
    del keys
    # One stable sort; of equal keys (a key stored twice) the last, i.e.
    # the later shard, wins, as in BottleneckStore's index.
    order = np.argsort(all_keys, kind='stable')
    self._keys = all_keys[order]
    del all_keys
    keep = np.ones(len(order), bool)
    if len(order) > 1:
      keep[:-1] = self._keys[1:] != self._keys[:-1]
    if not keep.all():
      self._keys, order = self._keys[keep], order[keep]
    # Shard and row of each stored vector, from its place in the
    # concatenation: shard s holds positions starts[s] .. starts[s+1]-1.
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    shard = np.searchsorted(starts, order, side='right') - 1
    shard_type = np.int16 if len(counts) < 2**15 else np.int32
    self._row = (order - starts[shard]).astype(np.int32)
    self._shard = shard.astype(shard_type)

  def __len__(self) -> int:
    return len(self._keys)

  def drop_keys(self) -> None:
    """Frees the key arrays once every ChunkReader is made (readers need
    only shard_paths); locate and contains then find nothing."""
    self._keys = self._keys[:0]
    self._shard, self._row = self._shard[:0], self._row[:0]

  def contains(self, keys, compact: bool = False) -> np.ndarray:
    """bool [n]: whether each key is indexed (str or bytes keys, or with
    compact=True the 'S32' array of compact_keys)."""
    return self._find(keys if compact else compact_keys(keys))[1]

  def _find(self, wanted: np.ndarray):
    """(positions int64 [n] in the sorted keys, bool [n] found)."""
    if not len(self._keys) or not len(wanted):
      return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
    pos = np.minimum(np.searchsorted(self._keys, wanted), len(self._keys) - 1)
    return pos, self._keys[pos] == wanted

  def locate(self, keys, compact: bool = False):
    """(shard int16/int32 [n], row int32 [n]) of each key (as contains).

    Raises:
      KeyError: a key is not in the folder.
    """
    wanted = keys if compact else compact_keys(keys)
    pos, found = self._find(wanted)
    if not np.all(found):
      example = keys[int(np.flatnonzero(~found)[0])]
      raise KeyError(f'{int(np.sum(~found))} keys are not in the cache '
                     f'{self.directory!r}, e.g. {example!r}')
    return self._shard[pos], self._row[pos]


class ChunkReader:
  """Vectors of a fixed list of items, read any subset at a time.

  Args:
    index: the VectorIndex of the namespace.
    keys: the key of item i (items may repeat keys): str or bytes keys, or
      with compact=True the 'S32' array of compact_keys (what a run of a
      million images passes: 32 bytes per item, no Python strings).

  Item order is the caller's (e.g. the training images); `storage_order()`
  lists the items in the order their rows lie on disk, which makes the
  cheapest chunks.
  """

  def __init__(self, index: VectorIndex, keys, compact: bool = False):
    self.index = index
    # shard int16/int32 [n], row int32 [n]: 6-8 bytes per item.
    self.shard, self.row = index.locate(keys, compact)
    self.dim = index.dim

  def __len__(self) -> int:
    return len(self.row)

  def storage_order(self) -> np.ndarray:
    """int64 [n]: the items sorted by (shard, row)."""
    return np.lexsort((self.row, self.shard)).astype(np.int64)

  def read(self, items: Sequence[int]) -> np.ndarray:
    """float32 [len(items), dim]: row k is the vector of items[k]."""
    items = np.asarray(items, dtype=np.int64)
    out = np.empty((len(items), self.dim or 0), np.float32)
    if not len(items):
      return out
    order = np.lexsort((self.row[items], self.shard[items]))
    shard_of = self.shard[items][order]
    rows = self.row[items][order]
    bounds = np.flatnonzero(np.diff(shard_of)) + 1
    for lo, hi in zip(np.concatenate([[0], bounds]),
                      np.concatenate([bounds, [len(order)]]), strict=True):
      path = self.index.shard_paths[int(shard_of[lo])]
      with h5py.File(path, 'r') as f:
        _read_rows(f['vectors'], rows[lo:hi], out, order[lo:hi])
    return out


def _read_rows(dataset, rows: np.ndarray, out: np.ndarray,
               dest: np.ndarray) -> None:
  """out[dest[k]] = dataset[rows[k]] for ascending rows (repeats allowed)."""
  start = 0
  while start < len(rows):
    first = int(rows[start])
    stop = int(np.searchsorted(rows, first + _SLICE_ROWS, side='left'))
    span = rows[start:stop]
    last = int(span[-1]) + 1
    if len(span) * _DENSE >= last - first:
      block = dataset[first:last]
      out[dest[start:stop]] = block[span - first]
    else:
      unique, inverse = np.unique(span, return_inverse=True)
      out[dest[start:stop]] = dataset[unique][inverse]
    start = stop
