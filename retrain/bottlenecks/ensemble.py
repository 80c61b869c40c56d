"""Bottlenecks of an ensemble: each member in its own cache namespace.

The members' vectors of an image are concatenated in member order, float32
[n_ok, D1 + D2 + ...]; an image is usable when every member could use it.

Every member sees what the exported ensemble gives it: the image decoded
and resized to the ensemble's input size (the largest member's), then
area-resized to the member's own size by the export's own code
(features.ensemble.at_ensemble_size). A member whose size is the largest
keeps the namespace a single-module run of it uses, so those vectors are
shared; a smaller member's namespace adds the ensemble's input size, as
its vectors differ from a single-module run's (see
retrain/features/ensemble.py). Adding a module to an ensemble of the same
input size computes only the new member's vectors.

When two or more members lack vectors, one shared pass decodes each such
image once, at the ensemble's input size, then runs every member that
lacks it. Decoding is about a fifth of the CPU of an image's bottlenecks
for one module, so decoding once instead of once per member matters with
three members on 2 cores. The members' own passes then only pick up what
the shared pass could not use (files it dropped, whose reasons they
record).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

import bottleneck_cache
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import thumbnails
from retrain.common import names
from retrain.common.progress import Progress
from retrain.errors import OutputError
from retrain.features import ensemble as ensemble_lib
from retrain.features import tflite_runtime
from retrain.features.modules import FeatureModule


def compute_bottlenecks(paths: Sequence[str], module: FeatureModule,
                        runner: FeatureModule, bottleneck_dir: str,
                        runtime: str, batch_size: int,
                        cache_dir: Optional[str] = None, **compute_args
                        ) -> bottlenecks_lib.Bottlenecks:
  """bottlenecks_lib.compute_bottlenecks for a module or an ensemble.

  A plain module runs as `runner` in its own namespace (as before). An
  ensemble runs each member on its own runtime, at the ensemble's input
  size (ensemble_lib.at_ensemble_size), in the member's namespace:
  first the shared pass (whole images only; see shared_pass), then each
  member's own pass for what is left (compute_args go to each
  bottlenecks_lib.compute_bottlenecks call). An image is usable when every
  member could use it, and its vector is the members' vectors concatenated
  (float32 [n_ok, sum of D], read member by member into one array).
  """
  members = ensemble_lib.members(module)
  # (runner, store) pairs computed in the shared pass only (activations).
  extra = compute_args.pop('extra', ())
  if len(members) == 1 and not extra:
    store = bottleneck_cache.BottleneckStore(
        bottleneck_dir, bottlenecks_lib.cache_namespace(module))
    return bottlenecks_lib.compute_bottlenecks(paths, runner, store,
                                               batch_size, **compute_args)
  size = tuple(module.input_size)
  runners = [ensemble_lib.at_ensemble_size(
      tflite_runtime.deferred(member, runtime, cache_dir), size)
             for member in members]
  stores = [bottleneck_cache.BottleneckStore(
      bottleneck_dir, bottlenecks_lib.cache_namespace(
          ensemble_lib.at_ensemble_size(member, size)))
            for member in members]
  # The files are hashed once, for the shared pass and every member's
  # (by the caller, when it passes `keyed`).
  options = compute_args.pop('options', bottlenecks_lib.PassOptions())
  keyed = compute_args.pop('keyed', None) or bottlenecks_lib.cache_keys(
      paths, stores[0], compute_args.get('key_suffixes'), options.max_pixels)
  shared = [0] * len(members)
  if compute_args.get('boxes') is None:  # crops: each member's own pass
    shared = shared_pass(paths, runners, stores, batch_size,
                         options.max_pixels, keyed, extra)
  load = options.load_vectors
  parts = []
  for member, runner, store, done in zip(members, runners, stores, shared,
                                         strict=True):
    # Masks first; the vectors are read below, one member at a time,
    # straight into the ensemble's array.
    part = bottlenecks_lib.compute_bottlenecks(
        paths, runner, store, batch_size, dataclasses.replace(
            options, load_vectors=False, name=member.handle), keyed=keyed,
        **compute_args)
    # What the shared pass computed, this pass found in the cache.
    part.stats.computed += done
    part.stats.reused -= done
    parts.append(part)
  combined = combine(parts)
  if load:
    keys = [combined.digests[i] for i in np.flatnonzero(combined.ok)]
    combined.vectors = np.empty((len(keys), module.output_dim), np.float32)
    column = 0
    for store, member in zip(stores, members, strict=True):
      combined.vectors[:, column:column + member.output_dim] = store.get(keys)
      column += member.output_dim
  return combined


def _lacking(stores, keyed):
  """(keys of the readable paths, first path index of each distinct key,
  bool [distinct keys, members]: which member's store lacks it)."""
  digests, readable, _ = keyed
  first = {}
  for i in readable:
    first.setdefault(digests[i], i)
  lacking = np.array([[key not in store for store in stores] for key in first],
                     dtype=bool).reshape(len(first), len(stores))
  return list(first), np.fromiter(first.values(), np.int64, len(first)), \
      lacking


def shared_pass(paths: Sequence[str], runners: Sequence[FeatureModule],
                stores: Sequence[bottleneck_cache.BottleneckStore],
                batch_size: int, max_pixels: int, keyed: tuple,
                extra: Sequence[tuple] = ()) -> List[int]:
  """Computes, decoding each image once, the vectors of `paths` that two or
  more members lack (see the module doc); returns how many vectors each
  member's store gained. `keyed` is what bottlenecks_lib.cache_keys
  returned for the paths. Images it cannot use are left to the members'
  own passes, which record why. `extra`: (runner, store) pairs run on the
  same pixels (fine-tuning's activations: finetune.plans
  .activation_passes), each store compacted after."""
  members = len(stores)
  runners = list(runners) + [runner for runner, _ in extra]
  stores = list(stores) + [store for _, store in extra]
  keys, first, lacking = _lacking(stores, keyed)
  if np.count_nonzero(lacking.any(axis=0)) < 2:
    return [0] * members  # one member's own pass is as fast
  rows = np.flatnonzero(lacking.any(axis=1))
  try:
    for store, runner, column in zip(stores, runners, lacking[rows].T,
                                     strict=True):
      bottleneck_cache.check_free_space(store.directory,
                                        bottleneck_cache.bytes_needed(
                                            int(column.sum()),
                                            runner.output_dim, len(store)))
  except bottleneck_cache.CacheError as e:
    raise OutputError(f'bottleneck_dir: {e}', fields=('bottleneck_dir',)
                      ) from e
  logging.info(
      'Computing the bottlenecks of %s%s for %s, decoding each '
      'image once (%d already cached for every module%s).',
      names.plural(members, 'module'), f' (and the activations fine-tuning reads of {len(extra)})'
      if extra else '', names.plural(len(rows), 'image'),
      len(keys) - len(rows),
      bottlenecks_lib.copies_note(len(keyed[1]) - len(keys)))
  gained = _run_shared(paths, runners, stores, batch_size,
                       [keys[r] for r in rows], first[rows], lacking[rows],
                       max_pixels)
  for store in stores[members:]:
    try:
      store.compact()
    except bottleneck_cache.CacheError as e:
      logging.warning('Activation shards not compacted (%s); every one is '
                      'kept and a later run compacts them.', e)
  return gained[:members]


def _run_shared(paths, runners, stores, batch_size: int, keys,
                path_index: np.ndarray, lacking: np.ndarray,
                max_pixels: int) -> List[int]:
  """The shared pass over len(keys) images: keys[k] of paths[path_index[k]]
  lacked by the members where lacking[k] is True. Each file is read once,
  and only bytes whose hash is their key are decoded, once, at the
  runners' common input size (the ensemble's; files it refuses are left to
  the members' own passes, which record why)."""
  for runner in runners:
    if runner.prepare is not None:
      runner.prepare()  # before the progress clock starts

  size = tuple(runners[0].input_size)
  pass_paths = [paths[i] for i in path_index]

  def load(k, contents):
    return k, thumbnails.decode_and_resize(contents, size, k, pass_paths)

  def compute(batch):
    k = batch[0].numpy()
    out = []
    for m, runner in enumerate(runners):
      rows = np.flatnonzero(lacking[k, m])
      images = batch[1] if len(rows) == len(k) else tf.gather(batch[1], rows)
      out.append((k[rows], runner.call(images).numpy() if len(rows) else
                  None))
    return len(k), out

  dataset = bottlenecks_lib.image_batches(bottlenecks_lib.read_images(
      range(len(keys)), pass_paths,
      [key[:64] for key in keys], size, max_pixels, {}), load, batch_size)
  width = max(runner.parallel_calls for runner in runners)
  progress = Progress('Bottlenecks', len(keys))
  gained = [0] * len(runners)
  # Each member's vectors are stored bottlenecks_lib.STORE_EVERY at a time.
  held = [[] for _ in runners]

  def store(m, least):
    if sum(len(rows) for rows, _ in held[m]) >= max(least, 1):
      rows = np.concatenate([rows for rows, _ in held[m]])
      stores[m].put([keys[r] for r in rows],
                    np.concatenate([vectors for _, vectors in held[m]]))
      gained[m] += len(rows)
      held[m] = []
  try:
    for count, out in bottlenecks_lib.map_ordered(compute, dataset, width):
      for m, (rows, vectors) in enumerate(out):
        if vectors is not None:
          held[m].append((rows, vectors))
          store(m, bottlenecks_lib.STORE_EVERY)
      progress.update(count)
    for m in range(len(runners)):
      store(m, 1)
  except bottleneck_cache.CacheError as e:
    raise OutputError(f'bottleneck_dir: {e}', fields=('bottleneck_dir',)
                      ) from e
  progress.finish()
  for store in stores:
    store.tidy()
  return gained


def combine(parts: Sequence[bottlenecks_lib.Bottlenecks]
            ) -> bottlenecks_lib.Bottlenecks:
  """Members' Bottlenecks of the same paths -> the ensemble's (vectors
  float32 [n_ok, sum of D], empty [0, sum of D] when a member's are not
  loaded)."""
  ok = np.logical_and.reduce([p.ok for p in parts])
  # One array filled member by member: no concatenated copy beside it.
  vectors = np.empty((int(ok.sum()) if all(len(p.vectors) for p in parts)
                      else 0, sum(p.vectors.shape[-1] for p in parts)),
                     np.float32)
  column = 0
  for p in parts:
    width = p.vectors.shape[-1]
    if len(vectors):
      rows_ok = np.cumsum(p.ok) - 1  # row of each usable path in p.vectors
      vectors[:, column:column + width] = p.vectors[rows_ok[ok]]
    column += width
  failures, seen = [], set()
  for p in parts:
    for path, reason in p.failures:
      if path not in seen:
        seen.add(path)
        failures.append((path, reason))
  stats = bottleneck_cache.Stats(**{
      f.name: sum(getattr(p.stats, f.name) for p in parts)
      for f in dataclasses.fields(parts[0].stats)})
  return bottlenecks_lib.Bottlenecks(
      vectors=vectors, ok=ok, failures=failures, stats=stats,
      digests=parts[0].digests)
