"""Discovery and content hashing of many small files: time and memory.

  python bench/discover_scale.py [--files 1000000] [--workdir /tmp/retrain_discover]
  python bench/discover_scale.py --files 1000000 --real_run

Makes --files tiny files (unique bytes each, `.jpg` names, 5 class folders;
kept for later runs), then in fresh processes lists and hashes them as
`pipeline.run` does, before it loads the module: `prepare.discover`, then
`prepare.hash_images` (the digest memo in <workdir>/n<files>/bn), each
as a phase (retrain.common.phases: freed memory returned after each). Once
cold (no memo: every file read) and once warm (memo present: files only
stat'ed). Each process imports retrain.pipeline first, and so TensorFlow,
as `python -m retrain` does before it discovers anything. Prints wall
times, the RSS at the start, after listing and after hashing, the peak,
and the peak above the start per file.

--real_run measures `python -m retrain` itself on the same folder, cold and
warm: when its log says hashing is done, the process is stopped and its
peak RSS (VmHWM) read, then it is killed (the files are not images; the run
would only report them unusable).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import signal
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
  from retrain.config import DEFAULTS
  from retrain.steps import prepare
  config = DEFAULTS.replace(image_dir=str(root / 'images'),
                               bottleneck_dir=str(root / 'bn'))
  from retrain.common.phases import Phases
  start_rss = _current_rss_mib()
  phases = Phases()  # as pipeline.run: memory is released after each phase
  with phases('startup'):
    layout, crops = prepare.discover(config)
  listed = phases.timings['startup']
  listed_rss, listed_peak = _current_rss_mib(), _rss_mib()
  with phases('hashing'):
    digests, _, failures = prepare.hash_images(config, layout.dataset,
                                                crops)
  hashed = phases.timings['hashing']
  n = len(digests)
  peak = _rss_mib()
  return {'files': n, 'list_s': listed, 'hash_s': hashed,
          'files_per_s': n / max(hashed, 1e-9), 'unreadable': len(failures),
          'rss_start_mib': start_rss, 'rss_listed_mib': listed_rss,
          'peak_listed_mib': listed_peak,
          'rss_hashed_mib': _current_rss_mib(), 'peak_rss_mib': peak,
          'bytes_per_file': (peak - start_rss) * 2**20 / max(n, 1)}


def _vm_kib(pid: int, field: str) -> int:
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  return 0


def real_run(root: pathlib.Path) -> dict:
  """Peak RSS of `python -m retrain` when its log says hashing is done."""
  out = root / 'run_outputs'
  command = [sys.executable, '-m', 'retrain', '--image_dir',
             str(root / 'images'), '--bottleneck_dir', str(root / 'bn'),
             '--summaries_dir', str(out / 'logs'), '--report_dir',
             str(out / 'report'), '--saved_model_dir', '', '--output_graph',
             str(out / 'graph.pb'), '--output_labels', str(out / 'labels.txt')]
  started = time.monotonic()
  process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
  result = {'files': 0, 'peak_rss_mib': 0.0, 'hash_done_s': 0.0}
  try:
    for line in process.stderr:
      if 'Found ' in line and ' images in ' in line:
        result['files'] = int(line.split('Found ')[1].split()[0])
        result['rss_listed_mib'] = _vm_kib(process.pid, 'VmRSS') / 1024
      if line.split('] ', 1)[-1].startswith('Hashing:') and 'done in' in line:
        process.send_signal(signal.SIGSTOP)  # before the module loads
        result['hash_done_s'] = time.monotonic() - started
        result['peak_rss_mib'] = _vm_kib(process.pid, 'VmHWM') / 1024
        break
  finally:
    process.kill()
    process.wait()
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--files', type=int, default=1_000_000)
  parser.add_argument('--workdir', type=pathlib.Path,
                      default=pathlib.Path('/tmp/retrain_discover'))
  parser.add_argument('--real_run', action='store_true',
                      help='measure `python -m retrain` itself')
  parser.add_argument('--_measure', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.real_run and args.files <= 10_000:
    parser.error('--real_run needs more than 10,000 files: below that a run '
                 'logs no hashing progress line to stop at.')
  root = args.workdir / f'n{args.files}'
  if args._measure:
    print(json.dumps(real_run(root) if args.real_run else measure(root)))
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
                          '--_measure'] + ['--real_run'] * args.real_run,
                         check=True, capture_output=True, text=True)
    rows.append((name, json.loads(out.stdout.strip().splitlines()[-1])))
    print(name, json.dumps(rows[-1][1]), flush=True)
  if args.real_run:
    print('| python -m retrain | files | peak RSS MiB when hashing is done |'
          ' s to then |')
    print('|---|---|---|---|')
    for name, r in rows:
      print(f'| {name} | {r["files"]:,} | {r["peak_rss_mib"]:.0f} | '
            f'{r["hash_done_s"]:.0f} |')
    return
  print('| run | files | list s | hash s | files/s | RSS MiB start / listed '
        '/ hashed | peak RSS MiB | bytes/file above start |')
  print('|---|---|---|---|---|---|---|---|')
  for name, r in rows:
    print(f'| {name} | {r["files"]:,} | {r["list_s"]:.1f} | {r["hash_s"]:.1f} '
          f'| {r["files_per_s"]:.0f} | {r["rss_start_mib"]:.0f} / '
          f'{r["rss_listed_mib"]:.0f} / {r["rss_hashed_mib"]:.0f} | '
          f'{r["peak_rss_mib"]:.0f} | {r["bytes_per_file"]:.0f} |')


def bottleneck_cache_memo_names() -> tuple:
  """The memo's file name, and that of the JSON memo of earlier versions."""
  from bottleneck_cache import keys
  return keys.MEMO_FILE, keys.OLD_MEMO_FILE


if __name__ == '__main__':
  main()
