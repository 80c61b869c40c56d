"""Peak memory of the multi-label head: vectors in memory or streamed.

Writes a synthetic bottleneck cache (N float32 vectors of D dimensions,
L labels that depend on them, in shards as a run writes them), then fits
the multi-label head (retrain/head/multilabel.py: k-fold L2 and
thresholds, refit) twice, each in its own process: once on every vector
loaded into memory (what a run below --max_vectors_in_memory does), once
on StreamedRows reading the cache a chunk at a time (a run past the
budget). Prints each process's peak resident memory, the fit's time, and
the mean AP of the two heads on held-out vectors (the last tenth, never
fitted on):

  python bench/multilabel_stream_memory.py /tmp/ml_stream --vectors 60000

The fit is cut short (--max_iterations, two L2 candidates, two folds) so
that it runs in minutes; the memory profile does not depend on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

_SHARD_ROWS = 8192
_SEED = 0


def _key(i: int) -> str:
  return hashlib.sha256(str(i).encode()).hexdigest()


def _targets(n: int, labels: int) -> np.ndarray:
  return np.random.default_rng(_SEED).random((n, labels)) < np.linspace(
      0.5, 0.1, labels)


def make_cache(directory: str, n: int, dim: int, labels: int) -> None:
  """Shards of vectors whose first L directions carry the labels."""
  from bottleneck_cache import shards
  os.makedirs(directory, exist_ok=True)
  targets = _targets(n, labels)
  rng = np.random.default_rng(_SEED + 1)
  for start in range(0, n, _SHARD_ROWS):
    stop = min(n, start + _SHARD_ROWS)
    x = rng.normal(0, 1, (stop - start, dim)).astype(np.float32)
    x[:, :labels] += 1.5 * targets[start:stop]
    name = f'{shards.SHARD_PREFIX}{start:09d}{shards.SHARD_SUFFIX}'
    shards.write_shard(os.path.join(directory, name),
                       [_key(i) for i in range(start, stop)], x)


def fit(directory: str, n: int, labels: int, mode: str, budget: int,
        iterations: int) -> dict:
  """Fits in this process; returns its figures (peak RSS in MiB)."""
  from bottleneck_cache import chunks
  from retrain.config import DEFAULTS
  from retrain.head import multilabel as head_lib
  from retrain.head import solver as solver_lib
  from retrain.head import streaming
  from retrain.report import multilabel as report_lib
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  targets = _targets(n, labels)
  held = n - n // 10
  index = chunks.VectorIndex(directory)
  reader = chunks.ChunkReader(index, [_key(i) for i in range(n)])
  capacity = streaming.chunk_capacity(budget, index.dim)
  rows = head_lib.StreamedRows(reader, np.arange(held), capacity)
  test = head_lib.StreamedRows(reader, np.arange(held, n), capacity)
  if mode == 'memory':
    rows, test = rows.reader.read(rows.items), test.reader.read(test.items)
  options = dataclasses.replace(
      solver_lib.SolverOptions.from_config(DEFAULTS), l2_grid=(0.01, 0.1),
      folds=2, max_iterations=iterations)
  started = time.monotonic()
  fitted = head_lib.fit_multilabel(rows, targets[:held],
                                   np.argmax(targets[:held], axis=1), options)
  metrics = report_lib.compute(
      targets[held:], head_lib.probabilities(fitted.head, test),
      fitted.thresholds, [str(j) for j in range(labels)])
  return {'mode': mode, 'vectors': n, 'dim': index.dim,
          'chunk_vectors': capacity if mode == 'cache' else None,
          'seconds': round(time.monotonic() - started, 1),
          'rss_before_fit_mib': round(before),
          'peak_rss_mib': round(resource.getrusage(
              resource.RUSAGE_SELF).ru_maxrss / 1024),
          'held_out_mean_ap': round(float(metrics.mean_ap), 4)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('directory')
  parser.add_argument('--vectors', type=int, default=60000)
  parser.add_argument('--dim', type=int, default=1280)
  parser.add_argument('--labels', type=int, default=5)
  parser.add_argument('--max_vectors_in_memory', type=int, default=10000)
  parser.add_argument('--max_iterations', type=int, default=10)
  parser.add_argument('--mode', choices=('memory', 'cache'))
  args = parser.parse_args()
  if args.mode:
    print(json.dumps(fit(args.directory, args.vectors, args.labels,
                         args.mode, args.max_vectors_in_memory,
                         args.max_iterations)))
    return
  if not os.path.isdir(args.directory):
    make_cache(args.directory, args.vectors, args.dim, args.labels)
  rows = []
  for mode in ('memory', 'cache'):
    out = subprocess.run([sys.executable, __file__, *sys.argv[1:],
                          '--mode', mode], check=True, capture_output=True,
                         text=True).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
  for row in rows:
    print(json.dumps(row))
  print(f'peak RSS streamed / in memory: '
        f'{rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]:.2f}')


if __name__ == '__main__':
  main()
