"""Training and evaluation at 10k, 100k and 1M cached vectors; prints a table.

  python bench/scale.py [--sizes 10000,100000,1000000] [--dim 1280]
      [--classes 5] [--steps 4000] [--workdir /tmp/retrain_scale]
      [--max_vectors_in_memory N]

For each size a child process writes synthetic vectors straight into a
bottleneck cache (the cache needs no TensorFlow, so a million vectors take
about a minute, not hours of images), with a matching synthetic file list
(relative paths, labels, content keys and the stable-hash split of those
paths). Another child then does what a run does after the bottlenecks:
index the cache, train the head (in memory below the budget, streaming from
the cache in chunks past it; retrain/head/streaming.py), evaluate the test
set, and reports wall times, steps/s and its peak RSS, measured in a fresh
process per size so sizes do not inherit each other's peak. Caches are
kept in --workdir and reused by later runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from retrain.config import DEFAULTS  # noqa: E402

_SHARD_ROWS = 65536
_NAMESPACE = {'kind': 'bottleneck', 'module': 'bench/scale.py synthetic'}


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cache_dir(workdir: pathlib.Path, n: int, dim: int, classes: int):
  return workdir / f'n{n}_d{dim}_c{classes}'


def write(n: int, dim: int, classes: int, root: pathlib.Path) -> None:
  """Writes n synthetic vectors (class centres plus noise) and the file
  list; the vectors are cached in random class order, as content keys
  order them."""
  import bottleneck_cache
  from bottleneck_cache import shards
  from retrain.data import split as split_lib
  started = time.monotonic()
  rng = np.random.default_rng(n)
  labels = rng.integers(0, classes, n).astype(np.int64)
  rel_paths = [f'class_{c}/img_{i:07d}.jpg' for i, c in enumerate(labels)]
  keys = np.array([hashlib.sha256(p.encode()).hexdigest().encode()
                   for p in rel_paths])
  split = split_lib.split_images(rel_paths, labels, 10.0, 10.0)
  del rel_paths
  subset = np.zeros(n, np.int8)
  subset[split.validation], subset[split.test] = 1, 2
  store = bottleneck_cache.BottleneckStore(str(root / 'bn'), _NAMESPACE)
  # Centres about 10 apart, noise 3 per dimension: classes overlap a little,
  # so the test accuracy says whether training worked (not trivially 1).
  centres = rng.normal(0, 0.2, (classes, dim)).astype(np.float32)
  for start in range(0, n, _SHARD_ROWS):
    stop = min(n, start + _SHARD_ROWS)
    noise = rng.standard_normal((stop - start, dim), np.float32) * 3.0
    tmp = os.path.join(store.directory, f'{shards.TMP_PREFIX}{os.getpid()}')
    shards.write_shard(tmp, [k.decode() for k in keys[start:stop]],
                       centres[labels[start:stop]] + noise)
    os.replace(tmp, os.path.join(store.directory,
                                 f'{shards.SHARD_PREFIX}{start:09d}.h5'))
  tmp = root / 'files.tmp.npz'
  np.savez(tmp, keys=keys, labels=labels, subset=subset)
  os.replace(tmp, root / 'files.npz')
  print(json.dumps({'written': n, 'seconds': time.monotonic() - started}))


def measure(root: pathlib.Path, classes: int, steps: int, budget: int) -> dict:
  """Index, train, evaluate; returns the figures."""
  import bottleneck_cache
  from bottleneck_cache import chunks
  from retrain.head import evaluate as evaluate_lib
  from retrain.head import streaming
  from retrain.head import train as train_lib
  baseline = _peak_rss_mib()
  files = np.load(root / 'files.npz')
  # What retrain/steps/streamed.py holds per image for training: the compact
  # content key (made from the hex digests), the class id and the split.
  keys = chunks.compact_keys(files['keys'])
  labels, subset = files['labels'], files['subset']
  count = len(keys)
  started = time.monotonic()
  directory = os.path.join(root, 'bn', bottleneck_cache.namespace_id(_NAMESPACE))
  index = chunks.VectorIndex(directory)
  readers = {}
  for code, name in enumerate(('train', 'validation', 'test')):
    items = np.flatnonzero(subset == code)
    readers[name] = (chunks.ChunkReader(index, keys[items], compact=True),
                     labels[items])
  del keys
  index.drop_keys()
  index_s = time.monotonic() - started
  n_train = len(readers['train'][1])
  stream = streaming.should_stream(n_train, budget)
  d = DEFAULTS
  settings = train_lib.Settings(
      steps=steps, learning_rate=d.head.learning_rate,
      batch_size=d.head.train_batch_size, eval_step_interval=d.head.eval_step_interval,
      validation_batch_size=d.head.validation_batch_size, seed=0)
  started = time.monotonic()
  stats = streaming.StreamStats()
  if stream:
    trained = streaming.train_head_streaming(
        streaming.Labelled(*readers['train']),
        streaming.Labelled(*readers['validation']), classes, settings,
        budget, stats=stats)
  else:
    reader, y = readers['train']
    val_reader, val_y = readers['validation']
    trained = train_lib.train_head(
        reader.read(np.arange(len(y))), y, classes,
        val_reader.read(np.arange(len(val_y))), val_y, settings)
  train_s = time.monotonic() - started
  started = time.monotonic()
  reader, y = readers['test']
  if stream:
    test = streaming.evaluate_streaming(trained.head, reader, y, budget)
  else:
    test = evaluate_lib.evaluate(trained.head, reader.read(np.arange(len(y))),
                                 y)
  eval_s = time.monotonic() - started
  return {'vectors': count, 'train': n_train,
          'mode': 'streaming' if stream else 'in memory',
          'index_s': index_s, 'train_s': train_s,
          'steps_per_s': steps / train_s, 'eval_s': eval_s,
          'test_accuracy': test.accuracy, 'test_count': test.count,
          'chunks': stats.chunks, 'read_wait_s': stats.wait_seconds,
          'rss_start_mib': baseline, 'peak_rss_mib': _peak_rss_mib()}


def _child(args, *extra) -> dict:
  command = [sys.executable, __file__, *extra, '--dim', str(args.dim),
             '--classes', str(args.classes), '--steps', str(args.steps),
             '--workdir', str(args.workdir),
             '--max_vectors_in_memory', str(args.max_vectors_in_memory)]
  out = subprocess.run(command, check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='10000,100000,1000000')
  parser.add_argument('--dim', type=int, default=1280)
  parser.add_argument('--classes', type=int, default=5)
  parser.add_argument('--steps', type=int, default=DEFAULTS.head.how_many_training_steps)
  parser.add_argument('--workdir', type=pathlib.Path,
                      default=pathlib.Path('/tmp/retrain_scale'))
  parser.add_argument('--max_vectors_in_memory', type=int,
                      default=DEFAULTS.scale.max_vectors_in_memory)
  parser.add_argument('--_write', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--_measure', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._write:
    root = _cache_dir(args.workdir, args._write, args.dim, args.classes)
    write(args._write, args.dim, args.classes, root)
    return
  if args._measure:
    root = _cache_dir(args.workdir, args._measure, args.dim, args.classes)
    print(json.dumps(measure(root, args.classes, args.steps,
                             args.max_vectors_in_memory)))
    return

  rows = []
  for n in [int(s) for s in args.sizes.split(',')]:
    root = _cache_dir(args.workdir, n, args.dim, args.classes)
    if not (root / 'files.npz').exists():
      written = _child(args, '--_write', str(n))
      print(f'wrote {n} vectors in {written["seconds"]:.1f} s', flush=True)
    rows.append(_child(args, '--_measure', str(n)))
    print(json.dumps(rows[-1]), flush=True)

  print(f'\n{args.steps} steps, batch {DEFAULTS.head.train_batch_size}, D='
        f'{args.dim}, {args.classes} classes, --max_vectors_in_memory '
        f'{args.max_vectors_in_memory}')
  header = ('| vectors | train | mode | index s | train s | steps/s | eval s '
            '| test acc | chunks | peak RSS MiB | vs first |')
  print(header)
  print('|' + '---|' * (header.count('|') - 1))
  first = rows[0]['peak_rss_mib'] if rows else 1.0
  for r in rows:
    print(f'| {r["vectors"]:,} | {r["train"]:,} | {r["mode"]} | '
          f'{r["index_s"]:.1f} | {r["train_s"]:.1f} | {r["steps_per_s"]:.0f} | '
          f'{r["eval_s"]:.1f} | {r["test_accuracy"]:.3f} | {r["chunks"]} | '
          f'{r["peak_rss_mib"]:.0f} | {r["peak_rss_mib"] / first:.2f}x |')


if __name__ == '__main__':
  main()
