"""Several processes filling one part-filled bottleneck cache at once.

  python bench/concurrency.py [--processes 6] [--keys 2000] [--prefilled 0.3]
      [--ms_per_vector 2] [--work_dir /tmp/bench_concurrency] [--repo DIR]

Fills a cache with --prefilled of --keys vectors (in small shards, as a
killed run leaves them), then starts --processes processes together, each
asking for all keys with a numpy compute function that costs
--ms_per_vector per vector (a stand-in for the module). Twice: with the
cache's claim files (each bucket of missing keys computed by one process)
and with claims switched off (every process computes everything it
misses). Prints, for each: wall time until the last process is done,
vectors computed in total against those needed, failed processes, and
whether every process got exactly the expected vectors.

Needs only numpy and h5py (no TensorFlow). Figures depend on the machine
and its load; the script asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = str(pathlib.Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from bottleneck_cache import store as store_lib  # noqa: E402

NS = {'module': 'bench', 'input_size': [8, 8]}
DIM = 1280  # EfficientNet-Lite0's vector length

_WORKER = '''
import json, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from bottleneck_cache import store as store_lib
if not {claims!r}:
  store_lib.BottleneckStore._claim = lambda self, bucket: None
def vec(key):
  seed = int(key[1:])
  return np.random.default_rng(seed).random({dim}).astype(np.float32)
keys = [f'k{{i}}' for i in range({n})]
def compute(missing):
  for s in range(0, len(missing), 8):
    part = list(missing[s:s + 8])
    time.sleep({cost} * len(part))
    yield part, np.stack([vec(keys[i]) for i in part])
store = store_lib.BottleneckStore({root!r}, {ns!r})
v, ok, stats = store.get_or_compute(keys, compute)
expected = np.stack([vec(k) for k in keys])
print(json.dumps({{'computed': stats.computed, 'exact':
                   bool(ok.all() and np.array_equal(v, expected))}}))
'''


def vec(key):
  return np.random.default_rng(int(key[1:])).random(DIM).astype(np.float32)


def one_round(work: str, args, claims: bool) -> dict:
  root = os.path.join(work, 'claims' if claims else 'no_claims')
  shutil.rmtree(root, ignore_errors=True)
  keys = [f'k{i}' for i in range(args.keys)]
  prefilled = int(args.keys * args.prefilled)
  store = store_lib.BottleneckStore(root, NS)
  for start in range(0, prefilled, 25):
    part = keys[start:min(start + 25, prefilled)]
    store.put(part, np.stack([vec(k) for k in part]))
  script = _WORKER.format(repo=args.repo, claims=claims, dim=DIM, n=args.keys,
                          cost=args.ms_per_vector / 1000.0, root=root, ns=NS)
  started = time.monotonic()
  procs = [subprocess.Popen([sys.executable, '-c', script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for _ in range(args.processes)]
  results, failures = [], []
  for proc in procs:
    out, err = proc.communicate()
    if proc.returncode:
      failures.append(err.strip().splitlines()[-1] if err.strip() else
                      f'exit {proc.returncode}')
    else:
      results.append(json.loads(out.strip().splitlines()[-1]))
  return {'wall_s': time.monotonic() - started,
          'computed': sum(r['computed'] for r in results),
          'needed': args.keys - prefilled,
          'failures': failures,
          'exact': sum(r['exact'] for r in results)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--processes', type=int, default=6)
  parser.add_argument('--keys', type=int, default=2000)
  parser.add_argument('--prefilled', type=float, default=0.3)
  parser.add_argument('--ms_per_vector', type=float, default=2.0)
  parser.add_argument('--repo', default=REPO,
                      help='checkout whose bottleneck_cache the workers '
                      'use (e.g. a `git worktree` of main, for a before/after '
                      'comparison)')
  parser.add_argument('--work_dir', default=os.path.join(
      tempfile.gettempdir(), 'bench_concurrency'))
  args = parser.parse_args()
  print(f'{args.processes} processes, {args.keys} keys of {DIM} floats, '
        f'{args.prefilled:.0%} cached before, {args.ms_per_vector} ms per '
        'vector computed')
  print(f'{"":12s} {"wall s":>7s} {"computed":>9s} {"needed":>7s} '
        f'{"ratio":>6s} {"failed":>6s} {"exact":>6s}')
  rows = {}
  for claims in (True, False):
    r = one_round(args.work_dir, args, claims)
    rows[claims] = r
    name = 'claims' if claims else 'no claims'
    print(f'{name:12s} {r["wall_s"]:7.2f} {r["computed"]:9d} '
          f'{r["needed"]:7d} {r["computed"] / max(1, r["needed"]):6.2f} '
          f'{len(r["failures"]):6d} {r["exact"]:4d}/{args.processes}')
    for failure in r['failures'][:3]:
      print(f'    failure: {failure}')
  print(f'wall time, no claims / claims: '
        f'{rows[False]["wall_s"] / rows[True]["wall_s"]:.2f}')


if __name__ == '__main__':
  main()
