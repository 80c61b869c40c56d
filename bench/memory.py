"""Benchmark: peak memory of a command's whole process tree.

  python bench/memory.py [--interval 0.05] [--json out.json]
      [--timeline tl.txt [--phases run.log]] -- COMMAND ...

Runs COMMAND and samples, every `--interval` seconds, the resident set
size (RSS) of it and of every process below it (children a converter
starts included), read from /proc; prints the peak of the sum, the peak
of the largest single process, the wall time and the exit code.
`/usr/bin/time -v` reports one process's maximum RSS only, which misses
what child processes hold at the same time.

Examples (the targets: 1.5 GB for each):

  python bench/memory.py -- python -m retrain --image_dir flowers \\
      --fine_tune --output_graph /tmp/r/g.pb \\
      --tflite_output_file /tmp/r/m.tflite --onnx_output_file /tmp/r/m.onnx
  python bench/memory.py -- python tools/label_image.py \\
      --saved_model_dir /tmp/r/saved_model --image_dir photos/

With `--phases LOG` (the command's log, its stderr redirected there, with
`--timeline`), the peak of the tree between consecutive export lines of
the log is printed per phase: before the exports (up to the fine-tuning's
or the head's last line), then each export line's phase (SavedModel,
results page, frozen graph, TFLite, float TFLite for ONNX, ONNX) in the
order the log has them.

Linux only (reads /proc). A peak between two samples can be missed; the
per-process kernel high-water marks (VmHWM) are printed too, as an upper
bound of what each process held at some point. A process that forks to
start a program shows its whole RSS twice for an instant (the child
shares every page until it execs); the peak of the tree's proportional
set size (PSS: shared pages divided among their sharers) does not count
that, and is printed beside the RSS sum.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Tuple

PAGE = os.sysconf('SC_PAGE_SIZE')


def _children() -> Dict[int, List[int]]:
  """{parent pid: [child pids]} of every process on the machine."""
  tree: Dict[int, List[int]] = {}
  for name in os.listdir('/proc'):
    if not name.isdigit():
      continue
    try:
      with open(f'/proc/{name}/stat', 'rb') as f:
        fields = f.read().rsplit(b')', 1)[1].split()
    except OSError:
      continue
    tree.setdefault(int(fields[1]), []).append(int(name))
  return tree


def _tree(root: int) -> List[int]:
  """`root` and every process below it."""
  tree, pids, todo = _children(), [], [root]
  while todo:
    pid = todo.pop()
    pids.append(pid)
    todo.extend(tree.get(pid, []))
  return pids


def _pss(pid: int) -> int:
  """Proportional set size of `pid` in bytes: shared pages divided among
  the processes sharing them (0 if unreadable)."""
  try:
    with open(f'/proc/{pid}/smaps_rollup') as f:
      for line in f:
        if line.startswith('Pss:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def _rss_and_hwm(pid: int) -> Tuple[int, int]:
  """(resident bytes now, kernel high-water mark in bytes) of `pid`."""
  rss = hwm = 0
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          rss = int(line.split()[1]) * 1024
        elif line.startswith('VmHWM:'):
          hwm = int(line.split()[1]) * 1024
  except OSError:
    pass
  return rss, hwm


def measure(command: List[str], interval: float, timeline: str = '') -> dict:
  """Runs `command`; returns its peaks (bytes), wall seconds and exit code.

  timeline: a file that gets one line per sample, `HH:MM:SS.s tree-MB
  (per-process MB ...)`, to set against the command's log lines.
  """
  started = time.monotonic()
  out = open(timeline, 'w') if timeline else None
  process = subprocess.Popen(command)
  peak_sum = peak_one = peak_pss = 0
  hwm: Dict[int, int] = {}
  peak_at = 0.0
  while process.poll() is None:
    total, each, pss = 0, [], 0
    for pid in _tree(process.pid):
      pss += _pss(pid)
      rss, high = _rss_and_hwm(pid)
      total += rss
      each.append(rss)
      peak_one = max(peak_one, rss)
      hwm[pid] = max(hwm.get(pid, 0), high)
    peak_pss = max(peak_pss, pss)
    if total > peak_sum:
      peak_sum, peak_at = total, time.monotonic() - started
    if out is not None:
      now = time.time()
      out.write(time.strftime('%H:%M:%S', time.gmtime(now)) +
                f'.{int(now * 10) % 10} {total / 1e6:.0f} (' +
                ' '.join(f'{r / 1e6:.0f}' for r in each if r) + ')\n')
    time.sleep(interval)
  if out is not None:
    out.close()
  return {'command': command, 'returncode': process.returncode,
          'wall_s': time.monotonic() - started,
          'peak_tree_rss_bytes': peak_sum, 'peak_at_s': peak_at,
          'peak_single_rss_bytes': peak_one,
          'peak_tree_pss_bytes': peak_pss,
          'max_hwm_bytes': max(hwm.values(), default=0),
          'processes_seen': len(hwm)}


# (phase, the log line that ends it); a phase starts where the one before
# it in the log ends.
PHASE_ENDS = (
    ('before the exports', 'Fine-tuning: test accuracy'),
    ('frozen graph', 'Wrote the frozen graph'),
    ('TFLite', 'Wrote the TFLite model'),
    ('ONNX', 'Wrote the ONNX model'),
    ('SavedModel', 'Exported the classifier'),
    ('results page', 'report.html'),
    ('float TFLite for ONNX', 'Converted a float TFLite model'),
)
_ABSL_TIME = re.compile(r'^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+) ')


def _seconds(hours: str, minutes: str, seconds: str) -> float:
  return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def phase_peaks(timeline: str, log: str) -> List[Tuple[str, float]]:
  """[(phase, peak tree MB)] of the phases of PHASE_ENDS found in `log`
  (absl lines, times of day as the timeline's), in log order; a phase's
  peak is the largest sample after the previous phase's end line up to
  its own (the first phase: from the start)."""
  ends = []
  with open(log, errors='replace') as f:
    for line in f:
      match = _ABSL_TIME.match(line)
      for name, marker in PHASE_ENDS:
        if match and marker in line and name not in dict(ends):
          ends.append((name, _seconds(*match.groups())))
  samples = []
  with open(timeline) as f:
    for line in f:
      clock, total = line.split()[:2]
      samples.append((_seconds(*clock.split(':')), float(total)))
  # A run across midnight: times of the next day count on from 24:00.
  first = samples[0][0] if samples else 0.0
  samples = [(t + 86400 * (t < first - 60), mb) for t, mb in samples]
  ends = [(name, t + 86400 * (t < first - 60)) for name, t in ends]
  peaks, start = [], float('-inf')
  for name, end in ends:
    inside = [mb for t, mb in samples if start < t <= end]
    peaks.append((name, max(inside, default=float('nan'))))
    start = end
  return peaks


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--interval', type=float, default=0.05,
                      help='seconds between samples')
  parser.add_argument('--json', default='', help='also write the figures here')
  parser.add_argument('--timeline', default='',
                      help='write every sample to this file')
  parser.add_argument('--phases', default='',
                      help="the command's log: print each export phase's "
                      'peak (needs --timeline)')
  parser.add_argument('command', nargs=argparse.REMAINDER)
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give a command after --')
  if args.phases and not args.timeline:
    parser.error('--phases needs --timeline')
  result = measure(command, args.interval, args.timeline)
  mb = 1e6
  print(f'peak RSS of the process tree: {result["peak_tree_rss_bytes"] / mb:.0f}'
        f' MB (at {result["peak_at_s"]:.0f} s of {result["wall_s"]:.0f} s); '
        f'largest single process {result["peak_single_rss_bytes"] / mb:.0f} MB;'
        f' highest VmHWM {result["max_hwm_bytes"] / mb:.0f} MB; '
        f'{result["processes_seen"]} processes; peak PSS of the tree '
        f'{result["peak_tree_pss_bytes"] / mb:.0f} MB; '
        f'exit {result["returncode"]}',
        file=sys.stderr)
  if args.phases:
    result['phase_peaks_mb'] = dict(phase_peaks(args.timeline, args.phases))
    for name, mb in result['phase_peaks_mb'].items():
      print(f'  {name}: peak {mb:.0f} MB', file=sys.stderr)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return result['returncode']


if __name__ == '__main__':
  sys.exit(main())
