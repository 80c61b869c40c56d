"""Checks that TensorBoard shows a finished run, and takes screenshots.

  python tools/tensorboard_check.py --logdir /tmp/retrain_logs \
      [--screenshots /tmp/tb_shots] [--port 6123]

Starts `tensorboard --logdir` on a free local port, asks its HTTP API which
dashboards have data (scalars, histograms, images, PR curves, text,
projector) and that the projector found the embedding with its sprite, then,
if a Chromium is installed (Debian: `apt-get install chromium`), loads each
dashboard in headless Chromium and saves a PNG per dashboard. Exits 1 if a
dashboard has no data. TensorBoard is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

DASHBOARDS = ('scalars', 'histograms', 'images', 'pr_curves', 'text',
              'projector')
CHROMIUMS = ('chromium', 'chromium-browser', 'google-chrome',
             'chromium-headless-shell')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _get(url: str, timeout: float = 30):
  with urllib.request.urlopen(url, timeout=timeout) as r:
    return json.loads(r.read().decode())


def _wait_ready(base: str, proc, seconds: float = 60) -> None:
  deadline = time.time() + seconds
  while time.time() < deadline:
    if proc.poll() is not None:
      raise SystemExit(f'tensorboard exited with status {proc.returncode}')
    try:
      _get(base + '/data/environment', timeout=2)
      return
    except OSError:
      time.sleep(0.5)
  raise SystemExit(f'tensorboard did not answer at {base} in {seconds} s')


def check(base: str) -> list:
  """Returns the problems found (empty when every dashboard has data)."""
  problems = []
  # Plugins answer "active" once they see data; give the loader time to
  # read every event file.
  deadline = time.time() + 60
  while True:
    listing = _get(base + '/data/plugins_listing')
    inactive = [d for d in DASHBOARDS
                if not listing.get(d, {}).get('enabled')]
    if not inactive or time.time() > deadline:
      break
    time.sleep(2)
  for name in DASHBOARDS:
    state = 'has data' if name not in inactive else 'NO DATA'
    print(f'{name:12s} {state}')
  problems += [f'dashboard {d} has no data' for d in inactive]
  if 'projector' not in inactive:
    runs = _get(base + '/data/plugin/projector/runs')
    print(f'projector runs: {runs}')
    for run in runs:
      cfg = _get(base + f'/data/plugin/projector/info?run={run}')
      for emb in cfg.get('embeddings', []):
        sprite = emb.get('sprite', {}).get('imagePath')
        print(f'  {run}: {emb["tensorName"]} {emb.get("tensorShape")}, '
              f'metadata {emb.get("metadataPath")!r}, sprite {sprite!r}')
        if not sprite:
          problems.append(f'projector run {run} has no sprite')
  return problems


def screenshots(base: str, out_dir: str, chromium: str) -> list:
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name in DASHBOARDS:
    path = os.path.join(out_dir, f'{name}.png')
    # --virtual-time-budget lets the page's scripts fetch and draw before
    # the shot; SwiftShader gives the projector a software WebGL.
    cmd = [chromium, '--headless', '--no-sandbox', '--disable-gpu',
           '--use-gl=angle', '--use-angle=swiftshader',
           '--enable-unsafe-swiftshader', '--hide-scrollbars',
           '--window-size=1400,1000', '--virtual-time-budget=20000',
           f'--screenshot={path}', f'{base}/#{name}']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if proc.returncode == 0 and os.path.exists(path):
      written.append(path)
      print(f'screenshot {path}')
    else:
      print(f'screenshot of {name} failed: {proc.stderr[-500:]}')
  return written


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--logdir', required=True)
  parser.add_argument('--screenshots', default='',
                      help='folder for PNGs (default: none taken)')
  parser.add_argument('--port', type=int, default=0)
  args = parser.parse_args()
  if not os.path.isdir(args.logdir):
    print(f'{args.logdir} does not exist; give the --summaries_dir of a '
          'finished run.', file=sys.stderr)
    return 1
  port = args.port or _free_port()
  base = f'http://127.0.0.1:{port}'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'tensorboard.main', '--logdir', args.logdir,
       '--host', '127.0.0.1', '--port', str(port), '--load_fast', 'false'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_ready(base, proc)
    problems = check(base)
    if args.screenshots:
      chromium = next((c for c in map(shutil.which, CHROMIUMS) if c), None)
      if chromium is None:
        print('No Chromium found (apt-get install chromium); no screenshots.')
      else:
        screenshots(base, args.screenshots, chromium)
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
  for p in problems:
    print(f'PROBLEM: {p}')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
