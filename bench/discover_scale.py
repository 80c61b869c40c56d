"""Discovery and content hashing of many small files: time and memory.

  python bench/discover_scale.py [--files 1000000] [--workdir /tmp/retrain_discover]

Makes --files tiny files (unique bytes each, `.jpg` names, 5 class folders;
kept for later runs), then in fresh processes lists them with
retrain.data.sources and hashes them with the digest memo as a run does
(retrain.bottlenecks.compute._hash_files): once cold (no memo: every file
read) and once warm (memo present: files only stat'ed). Prints wall times,
peak RSS and the peak RSS above the process's start per file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_CLASSES = 5


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib() -> float:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def make(root: pathlib.Path, n: int) -> None:
  marker = root / f'.made-{n}'
  if marker.exists():
    return
  for c in range(_CLASSES):
    (root / 'images' / f'class_{c}').mkdir(parents=True, exist_ok=True)
  for i in range(n):
    path = root / 'images' / f'class_{i % _CLASSES}' / f'img_{i:07d}.jpg'
    with open(path, 'wb') as f:
      f.write(b'\xff\xd8\xff' + i.to_bytes(8, 'little') * 8)
  marker.touch()


def measure(root: pathlib.Path) -> dict:
  import bottleneck_cache
  from retrain.bottlenecks import compute
  from retrain.config import DEFAULTS
  from retrain.data import sources
  start_rss = _current_rss_mib()
  started = time.monotonic()
  layout = sources.load_layout(dataclasses.replace(
      DEFAULTS, image_dir=str(root / 'images')))
  paths = [image.path for image in layout.dataset.images]
  listed = time.monotonic() - started
  started = time.monotonic()
  memo = bottleneck_cache.DigestMemo(str(root / 'bn'))
  digests = compute._hash_files(paths, memo)  # pylint: disable=protected-access
  hashed = time.monotonic() - started
  n = len(paths)
  peak = _rss_mib()
  return {'files': n, 'list_s': listed, 'hash_s': hashed,
          'files_per_s': n / max(hashed, 1e-9),
          'unreadable': sum(isinstance(d, OSError) for d in digests),
          'rss_start_mib': start_rss, 'peak_rss_mib': peak,
          'bytes_per_file': (peak - start_rss) * 2**20 / max(n, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--files', type=int, default=1_000_000)
  parser.add_argument('--workdir', type=pathlib.Path,
                      default=pathlib.Path('/tmp/retrain_discover'))
  parser.add_argument('--_measure', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  root = args.workdir / f'n{args.files}'
  if args._measure:
    print(json.dumps(measure(root)))
    return
  started = time.monotonic()
  make(root, args.files)
  print(f'files ready in {time.monotonic() - started:.0f} s', flush=True)
  for name in bottleneck_cache_memo_names():  # the cold run has no memo
    (root / 'bn' / name).unlink(missing_ok=True)
  rows = []
  for name in ('cold (no memo)', 'warm (memo)'):
    out = subprocess.run([sys.executable, __file__, '--files',
                          str(args.files), '--workdir', str(args.workdir),
                          '--_measure'], check=True, capture_output=True,
                         text=True)
    rows.append((name, json.loads(out.stdout.strip().splitlines()[-1])))
    print(name, json.dumps(rows[-1][1]), flush=True)
  print('| run | files | list s | hash s | files/s | peak RSS MiB | bytes/file '
        'above start |')
  print('|---|---|---|---|---|---|---|')
  for name, r in rows:
    print(f'| {name} | {r["files"]:,} | {r["list_s"]:.1f} | {r["hash_s"]:.1f} '
          f'| {r["files_per_s"]:.0f} | {r["peak_rss_mib"]:.0f} | '
          f'{r["bytes_per_file"]:.0f} |')


def bottleneck_cache_memo_names() -> tuple:
  """The memo's file name, and that of the JSON memo of earlier versions."""
  from bottleneck_cache import keys
  return keys.MEMO_FILE, keys.OLD_MEMO_FILE


if __name__ == '__main__':
  main()
