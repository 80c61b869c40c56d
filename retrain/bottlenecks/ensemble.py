"""Bottlenecks of an ensemble: each member in its own cache namespace.

The members' vectors of an image are concatenated in member order, float32
[n_ok, D1 + D2 + ...]; an image is usable when every member could use it.
Each member's namespace is the one a single-module run of it uses, so
adding a module to an ensemble computes only the new member's vectors (see
retrain/features/ensemble.py).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from absl import logging

import bottleneck_cache
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.features import tflite_runtime
from retrain.features.modules import FeatureModule


def compute_bottlenecks(paths: Sequence[str], module: FeatureModule,
                        runner: FeatureModule, bottleneck_dir: str,
                        runtime: str, batch_size: int,
                        cache_dir: Optional[str] = None, **compute_args
                        ) -> bottlenecks_lib.Bottlenecks:
  """bottlenecks_lib.compute_bottlenecks for a module or an ensemble.

  A plain module runs as `runner` in its own namespace (as before). An
  ensemble runs each member on its own runtime in the member's namespace
  (compute_args go to each bottlenecks_lib.compute_bottlenecks call);
  an image is usable when every member could use it, and its vector is the
  members' vectors concatenated (float32 [n_ok, sum of D]).
  """
  members = getattr(module, 'members', None)
  if not members:
    store = bottleneck_cache.BottleneckStore(
        bottleneck_dir, bottlenecks_lib.cache_namespace(module))
    return bottlenecks_lib.compute_bottlenecks(paths, runner, store,
                                               batch_size, **compute_args)
  parts = []
  for member in members:
    logging.info('Bottlenecks of ensemble member %s:', member.handle)
    store = bottleneck_cache.BottleneckStore(
        bottleneck_dir, bottlenecks_lib.cache_namespace(member))
    parts.append(bottlenecks_lib.compute_bottlenecks(
        paths, tflite_runtime.deferred(member, runtime, cache_dir), store,
        batch_size, **compute_args))
  return combine(parts)


def combine(parts: Sequence[bottlenecks_lib.Bottlenecks]
            ) -> bottlenecks_lib.Bottlenecks:
  """Members' Bottlenecks of the same paths -> the ensemble's."""
  ok = np.logical_and.reduce([p.ok for p in parts])
  vectors = []
  for p in parts:
    rows_ok = np.cumsum(p.ok) - 1  # row of each usable path in p.vectors
    vectors.append(p.vectors[rows_ok[ok]] if len(p.vectors) else
                   np.zeros((0, p.vectors.shape[-1]), np.float32))
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
      vectors=np.concatenate(vectors, axis=1).astype(np.float32), ok=ok,
      failures=failures, stats=stats, digests=parts[0].digests)
