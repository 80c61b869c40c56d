"""A cache that checks itself: damaged or non-finite vectors are never
returned; they are dropped, recomputed and merged away."""

import logging
import os

import h5py
import numpy as np

import bottleneck_cache
from bottleneck_cache import shards
from tests import hostile_corpus

DIM = 16


def _vectors(n, seed=0):
  return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _compute_from(truth, asked):
  def compute(missing):
    asked.extend(int(i) for i in missing)
    yield list(missing), truth[list(missing)]
  return compute


def _shard(store):
  names = [n for n in sorted(os.listdir(store.directory))
           if shards.is_shard_name(n)]
  assert len(names) == 1
  return f'{store.directory}/{names[0]}'


def test_flipped_bytes_and_nan_heal_and_are_merged_away(tmp_path, caplog):
  keys = [f'k{i:03d}' for i in range(200)]
  truth = _vectors(len(keys))
  store = bottleneck_cache.BottleneckStore(str(tmp_path), {'m': 1})
  store.put(keys, truth)
  path = _shard(store)
  hit = hostile_corpus.flip_vector_bytes(path, 64)
  with h5py.File(path, 'r+') as f:  # a NaN written behind the checks' back
    f['vectors'][7, 3] = np.nan
  hit.add(7)
  asked = []
  again = bottleneck_cache.BottleneckStore(str(tmp_path), {'m': 1})
  vectors, ok, stats = again.get_or_compute(keys, _compute_from(truth, asked))
  assert ok.all() and np.array_equal(vectors, truth)
  assert sorted(asked) == sorted(hit) and stats.computed == len(hit)
  assert 'Dropped' in caplog.text and 'damaged vectors' in caplog.text
  # Healed: one merged shard, every vector whole, nothing computed again.
  third = bottleneck_cache.BottleneckStore(str(tmp_path), {'m': 1})
  assert len(third._shards) == 1 and not third.damaged(keys)
  asked.clear()
  vectors, _, _ = third.get_or_compute(keys, _compute_from(truth, asked))
  assert not asked and np.array_equal(vectors, truth)


def test_an_old_single_shard_gets_checks_on_first_use(tmp_path):
  keys = [f'k{i}' for i in range(5)]
  truth = _vectors(5)
  store = bottleneck_cache.BottleneckStore(str(tmp_path), {'m': 1})
  with h5py.File(f'{store.directory}/shard-old.h5', 'w') as f:
    f.create_dataset('keys', data=np.array([k.encode() for k in keys]))
    f.create_dataset('vectors', data=truth)
  again = bottleneck_cache.BottleneckStore(str(tmp_path), {'m': 1})
  vectors, _, _ = again.get_or_compute(keys, _compute_from(truth, []))
  assert np.array_equal(vectors, truth)
  with h5py.File(_shard(again), 'r') as f:
    assert shards.CHECKS in f


def test_a_damaged_vector_is_never_returned_by_get(tmp_path):
  keys = [f'k{i}' for i in range(10)]
  store = bottleneck_cache.BottleneckStore(str(tmp_path), {'m': 1})
  store.put(keys, _vectors(10))
  hit = hostile_corpus.flip_vector_bytes(_shard(store), 1)
  again = bottleneck_cache.BottleneckStore(str(tmp_path), {'m': 1})
  try:
    again.get(keys)
    raise AssertionError('damaged vector returned')
  except bottleneck_cache.CacheError as e:
    assert 'damaged' in str(e) and 'run again' in str(e)
  assert keys[hit.pop()] not in again


def test_old_shards_without_checks_are_read_and_nan_recomputed(tmp_path,
                                                               caplog):
  """Shards written before row checks: read; NaN/inf found and healed;
  the merge writes checks."""
  keys = [f'k{i}' for i in range(20)]
  truth = _vectors(20)
  store = bottleneck_cache.BottleneckStore(str(tmp_path), {'m': 1})
  for part in (slice(0, 10), slice(10, 20)):
    old = truth[part].copy()
    if part.start == 10:
      old[2, 0] = np.inf
    with h5py.File(f'{store.directory}/shard-old{part.start}.h5', 'w') as f:
      f.create_dataset('keys', data=np.array([k.encode() for k in keys[part]]))
      f.create_dataset('vectors', data=old)
  caplog.set_level(logging.INFO, logger='absl')
  again = bottleneck_cache.BottleneckStore(str(tmp_path), {'m': 1})
  asked = []
  vectors, ok, _ = again.get_or_compute(keys, _compute_from(truth, asked))
  assert asked == [12] and ok.all() and np.array_equal(vectors, truth)
  assert 'Adding checksums to' in caplog.text
  with h5py.File(_shard(again), 'r') as f:
    assert shards.CHECKS in f
