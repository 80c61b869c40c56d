"""Reading many cached vectors a chunk at a time, in bounded memory.

`BottleneckStore` keeps a Python dict of every key (a few hundred bytes per
key) and returns vectors as one array: right for the tens of thousands of
vectors of a laptop data set, wrong for a million (5 GB at 1,280 floats).
Here the index is numpy arrays (about 80 bytes per key: the key bytes, a
shard number and a row), and `ChunkReader` reads any subset of a fixed list
of items, grouped by shard and row so each shard is read in a few
contiguous slices. No TensorFlow.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple, Union

import h5py
import numpy as np

from bottleneck_cache import shards

# Rows read per h5py slice when the wanted rows are dense in it; sparser
# wanted rows are read by point selection instead (below).
_SLICE_ROWS = 8192
# A slice is read whole when at least 1 row in this many is wanted.
_DENSE = 4


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
  """

  def __init__(self, directories: Union[str, Sequence[str]]):
    if isinstance(directories, str):
      directories = [directories]
    self.directory = ', '.join(directories)
    paths = [os.path.join(d, n) for d in directories
             for n in sorted(os.listdir(d)) if shards.is_shard_name(n)]
    self.shard_paths: List[str] = []
    keys, shard_ids, rows = [], [], []
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
      keys.append(shard_keys.astype('S'))
      shard_ids.append(np.full(len(shard_keys), len(self.shard_paths),
                               np.int32))
      rows.append(np.arange(len(shard_keys), dtype=np.int64))
      self.shard_paths.append(path)
    width = max((k.dtype.itemsize for k in keys), default=1)
    all_keys = (np.concatenate([k.astype(f'S{width}') for k in keys])
                if keys else np.zeros(0, f'S{width}'))
    del keys
    shard_ids = (np.concatenate(shard_ids) if shard_ids else
                 np.zeros(0, np.int32))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    # One stable sort; of equal keys (a key stored twice) the last, i.e.
    # the later shard, wins, as in BottleneckStore's index. Peak memory is
    # about two copies of the keys.
    order = np.argsort(all_keys, kind='stable')
    self._keys = all_keys[order]
    del all_keys
    keep = np.ones(len(order), bool)
    if len(order) > 1:
      keep[:-1] = self._keys[1:] != self._keys[:-1]
    if not keep.all():
      self._keys, order = self._keys[keep], order[keep]
    self._shard = shard_ids[order]
    self._row = rows[order]

  def __len__(self) -> int:
    return len(self._keys)

  def contains(self, keys) -> np.ndarray:
    """bool [n]: whether each key (str list or bytes array) is indexed."""
    wanted, too_long = self._encode(keys)
    if not len(self._keys) or not len(wanted):
      return np.zeros(len(wanted), bool)
    pos = np.minimum(np.searchsorted(self._keys, wanted), len(self._keys) - 1)
    return (self._keys[pos] == wanted) & ~too_long

  def _encode(self, keys) -> Tuple[np.ndarray, np.ndarray]:
    """(keys as the index's byte width, bool: longer than that width, so
    absent: cutting them would make false matches)."""
    if not isinstance(keys, np.ndarray):
      keys = np.asarray([k.encode('utf-8') if isinstance(k, str) else k
                         for k in keys], dtype=bytes)
    if not len(keys):
      return keys.astype(self._keys.dtype), np.zeros(0, bool)
    too_long = np.char.str_len(keys) > self._keys.dtype.itemsize
    return keys.astype(self._keys.dtype), too_long

  def locate(self, keys) -> Tuple[np.ndarray, np.ndarray]:
    """(shard int32 [n], row int64 [n]) of each key (str list or bytes array).

    Raises:
      KeyError: a key is not in the folder.
    """
    wanted, _ = self._encode(keys)
    found = self.contains(keys)
    if not np.all(found):
      missing = wanted[~found][0]
      raise KeyError(f'{int(np.sum(~found))} keys are not in the cache '
                     f'{self.directory!r}, e.g. {missing!r}')
    pos = np.searchsorted(self._keys, wanted)
    return self._shard[pos], self._row[pos]


class ChunkReader:
  """Vectors of a fixed list of items, read any subset at a time.

  Args:
    index: the VectorIndex of the namespace.
    keys: the key of item i (items may repeat keys).

  Item order is the caller's (e.g. the training images); `storage_order()`
  lists the items in the order their rows lie on disk, which makes the
  cheapest chunks.
  """

  def __init__(self, index: VectorIndex, keys):
    self.index = index
    self.shard, self.row = index.locate(keys)
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
