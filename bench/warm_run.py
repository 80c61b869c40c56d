"""Benchmark: where a warm run's time goes, two checkouts side by side.

Runs `python -m retrain --image_dir DIR` with default flags against a
bottleneck cache that holds every vector already (a warm run), for each
checkout given, interleaved (A B A B ...) so that both see the same load,
and prints one markdown table: the median over the runs of the wall time
(process start to exit, measured here), of the CPU seconds the process
used (user + system: steadier than wall time on shared cores) and of each
phase of
`timings_seconds` in the run's run_summary.json (`launch` is the time from
the process's start until the run's first phase; a checkout whose runs do
not report it gets wall minus total in its place).

Usage (from the repository root; fill the cache once with a cold run):
  python bench/warm_run.py --image_dir ../shared/datasets/flowers_sample \
      --bottleneck_dir /tmp/bn --work_dir /tmp/warm --checkouts before=../main,after=.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_run(checkout: str, image_dir: str, bottleneck_dir: str,
            output_dir: str) -> dict:
  """{phase: seconds} of one warm run of `checkout`, plus 'wall' and
  'cpu'."""
  env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout),
             TF_CPP_MIN_LOG_LEVEL='2')
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  started = time.monotonic()
  done = subprocess.run(
      [sys.executable, '-m', 'retrain', '--image_dir', image_dir,
       '--bottleneck_dir', bottleneck_dir, '--output_dir', output_dir],
      env=env, cwd=os.path.abspath(checkout), capture_output=True, text=True,
      check=False)
  wall = time.monotonic() - started
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  if done.returncode:
    sys.exit(f'{checkout}: exit status {done.returncode}\n{done.stderr[-3000:]}')
  found = sorted(glob.glob(os.path.join(output_dir, '*', '*', 'report',
                                        'run_summary.json')),
                 key=os.path.getmtime)
  with open(found[-1], encoding='utf-8') as f:
    timings = dict(json.load(f)['timings_seconds'])
  timings.setdefault('launch', wall - timings['total'])
  timings['wall'], timings['cpu'] = wall, cpu
  return timings


def table(results: dict) -> str:
  """Markdown: one row per phase, one column per checkout (medians)."""
  names = list(results)
  phases = []
  for runs in results.values():
    for timings in runs:
      phases += [p for p in timings if p not in phases]
  order = ['wall', 'cpu', 'launch'] + [
      p for p in phases if p not in ('wall', 'cpu', 'launch', 'total')]
  order.append('total')
  lines = ['| phase | ' + ' | '.join(names) + ' |',
           '|---|' + '---|' * len(names)]
  for phase in order:
    cells = []
    for name in names:
      values = [t[phase] for t in results[name] if phase in t]
      cells.append(f'{statistics.median(values):.1f}' if values else '-')
    lines.append(f'| {phase} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_dir', required=True)
  parser.add_argument('--bottleneck_dir', required=True,
                      help='a cache holding every vector of image_dir')
  parser.add_argument('--work_dir', required=True,
                      help='where the runs write their run folders')
  parser.add_argument('--checkouts', default=f'this={ROOT}',
                      help='name=path,... of the checkouts to compare')
  parser.add_argument('--runs', type=int, default=3)
  args = parser.parse_args()
  checkouts = dict(item.split('=', 1) for item in args.checkouts.split(','))
  results = {name: [] for name in checkouts}
  for i in range(args.runs):
    for name, path in checkouts.items():
      timings = one_run(path, os.path.abspath(args.image_dir),
                        os.path.abspath(args.bottleneck_dir),
                        os.path.join(os.path.abspath(args.work_dir), name))
      results[name].append(timings)
      print(f'run {i + 1} {name}: wall {timings["wall"]:.1f} s, cpu '
            f'{timings["cpu"]:.1f} s',
            file=sys.stderr, flush=True)
  print(f'Warm runs of {os.path.basename(os.path.normpath(args.image_dir))}, '
        f'median of {args.runs}, seconds:\n')
  print(table(results))


if __name__ == '__main__':
  main()
