"""How often a run opens and decodes each photo.

  python bench/reads.py --image_dir DIR [--work_dir /tmp/reads] \
      [--runs cold,fine_tune,warm] [--flags '--how_many_training_steps=50']

Each run is `python -m retrain` in a child process with a bottleneck
cache of its own under --work_dir (cold: empty; warm: the cold run's,
run again). Opens are counted by the kernel's view: the child runs under
`strace -f -e trace=openat` when strace is there (every open, TensorFlow's
and Pillow's included), else by patching os.open and builtins.open in the
child. Decodes are counted in the child: every execution of
retrain.images.decode_image (in tf.data pipelines through a py_function
added to the pipeline's graph only, so exported graphs stay as they are),
every Pillow decode of a whole image file (thumbnails) and every
decode_with_pillow. A decode is attributed to a photo by the SHA-256 of
its bytes.

Prints, per run: the photos, opens per photo and decodes per photo
(mean, min, max), and which code paths opened or decoded them.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE_ENDINGS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp', '.tif',
                 '.tiff')


def photos(image_dir: str) -> dict:
  """{real path: SHA-256 hex} of every image file below image_dir."""
  found = {}
  for folder, _, files in os.walk(image_dir):
    for name in files:
      if name.lower().endswith(IMAGE_ENDINGS) and not name.startswith('.'):
        real = os.path.realpath(os.path.join(folder, name))
        with open(real, 'rb') as f:
          found[real] = hashlib.sha256(f.read()).hexdigest()
  return found


# --- In the child: counting decodes (and opens without strace) -------------


def _install_counters(known: dict, counts: dict, count_opens: bool) -> None:
  """Patches the decoders (and, with count_opens, os.open and
  builtins.open) to add to counts['decode'|'open'][sha] and
  counts['where'][what]."""
  import threading

  import tensorflow as tf
  from PIL import Image

  from retrain import images as images_lib

  lock = threading.Lock()
  by_digest = set(known.values())

  def add(kind, digest, what):
    with lock:
      counts[kind][digest] = counts[kind].get(digest, 0) + 1
      counts['where'][f'{kind} {what}'] = counts['where'].get(
          f'{kind} {what}', 0) + 1

  def seen(contents):
    data = contents.numpy() if hasattr(contents, 'numpy') else contents
    digest = hashlib.sha256(bytes(data)).hexdigest()
    if digest in by_digest:
      add('decode', digest, 'decode_image')
    return 0

  decode_image = images_lib.decode_image

  def counted_decode_image(contents, size):
    graph = tf.compat.v1.get_default_graph()
    if tf.executing_eagerly():
      seen(contents)
    elif getattr(graph, 'name', '').startswith('Dataset_'):
      done = tf.py_function(seen, [contents], tf.int64)
      with tf.control_dependencies([done]):
        contents = tf.identity(contents)
    return decode_image(contents, size)
  images_lib.decode_image = counted_decode_image

  decode_with_pillow = images_lib.decode_with_pillow

  def counted_pillow(contents, size):
    digest = hashlib.sha256(contents).hexdigest()
    if digest in by_digest:
      add('decode', digest, 'decode_with_pillow')
    return decode_with_pillow(contents, size)
  images_lib.decode_with_pillow = counted_pillow

  image_open = Image.open

  def counted_image_open(fp, *args, **kwargs):
    if isinstance(fp, (str, os.PathLike)):
      real = os.path.realpath(fp)
      if real in known:
        add('decode', known[real], 'PIL.Image.open(path)')
    return image_open(fp, *args, **kwargs)
  Image.open = counted_image_open

  if not count_opens:
    return
  os_open, open_ = os.open, builtins.open

  def counted_os_open(path, *args, **kwargs):
    real = os.path.realpath(path) if isinstance(path, (str, bytes)) else ''
    if real in known:
      add('open', known[real], 'os.open')
    return os_open(path, *args, **kwargs)

  def counted_open(path, *args, **kwargs):
    real = os.path.realpath(path) if isinstance(path, str) else ''
    if real in known:
      add('open', known[real], 'open')
    return open_(path, *args, **kwargs)
  os.open, builtins.open = counted_os_open, counted_open


def child(args) -> None:
  """Runs retrain's main with the counters; writes them to --counts."""
  with open(args.known, encoding='utf-8') as f:
    known = json.load(f)
  counts = {'decode': {}, 'open': {}, 'where': {}}
  _install_counters(known, counts, count_opens=not args.strace)
  from retrain import __main__ as main
  sys.argv = ['retrain'] + args.rest
  start = time.perf_counter()
  try:
    main.run()
  except SystemExit as e:
    if e.code not in (0, None):
      raise
  counts['seconds'] = time.perf_counter() - start
  with open(args.counts, 'w', encoding='utf-8') as f:
    json.dump(counts, f)


# --- In the parent --------------------------------------------------------

_OPENAT = re.compile(r'^(\d+) +open(?:at)?\((?:[^,]*, )?"((?:[^"\\]|\\.)*)"')
_RESULT = re.compile(r'\) += (-?\d+)')
_RESUMED = re.compile(r'^(\d+) +<\.\.\. open(?:at)? resumed>')


def strace_opens(log: str, known: dict) -> dict:
  """{sha: successful opens} of the photos in a strace -f log (a call
  that another thread interrupted ends on a '<... openat resumed>' line
  of its own)."""
  opens = collections.Counter()
  pending = {}  # pid -> sha of an unfinished open
  with open(log, encoding='utf-8', errors='replace') as f:
    for line in f:
      m, resumed = _OPENAT.search(line), _RESUMED.search(line)
      if m:
        real = os.path.realpath(m.group(2))
        digest = known.get(real)
        if digest is None:
          continue
        if '<unfinished' in line:
          pending[m.group(1)] = digest
          continue
      elif resumed and resumed.group(1) in pending:
        digest = pending.pop(resumed.group(1))
      else:
        continue
      result = _RESULT.search(line)
      if result and int(result.group(1)) >= 0:
        opens[digest] += 1
  return dict(opens)


def one_run(name: str, argv: list, known: dict, work: str,
            use_strace: bool) -> dict:
  """Runs `python -m retrain argv` under the counters; its counts."""
  known_file = os.path.join(work, 'known.json')
  with open(known_file, 'w', encoding='utf-8') as f:
    json.dump(known, f)
  counts_file = os.path.join(work, f'{name}.counts.json')
  command = [sys.executable, __file__, '--child', '--known', known_file,
             '--counts', counts_file] + (['--strace'] if use_strace else [])
  command += ['--'] + argv
  log = os.path.join(work, f'{name}.strace')
  if use_strace:
    command = ['strace', '-f', '-qq', '-e', 'trace=open,openat', '-o', log
               ] + command
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  with open(os.path.join(work, f'{name}.log'), 'w') as out:
    subprocess.run(command, env=env, check=True, stdout=out,
                   stderr=subprocess.STDOUT)
  with open(counts_file, encoding='utf-8') as f:
    counts = json.load(f)
  if use_strace:
    counts['open'] = strace_opens(log, known)
    os.remove(log)
  return counts


def summarize(name: str, counts: dict, known: dict) -> str:
  """One line per count: mean, min and max per photo."""
  lines = [f'{name}: {len(known)} photos, {counts["seconds"]:.1f} s']
  for kind in ('open', 'decode'):
    per = [counts[kind].get(d, 0) for d in known.values()]
    lines.append(f'  {kind}s per photo: mean {sum(per) / len(per):.2f}, '
                 f'min {min(per)}, max {max(per)}')
  for what, n in sorted(counts['where'].items()):
    lines.append(f'    {what}: {n} ({n / len(known):.2f} per photo)')
  return '\n'.join(lines)


RUNS = {
    'cold': [],
    'fine_tune': ['--fine_tune', '--fine_tune_epochs=1'],
    'warm': [],
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--image_dir')
  parser.add_argument('--work_dir', default=None)
  parser.add_argument('--runs', default='cold,fine_tune,warm')
  parser.add_argument('--flags', default='',
                      help='more retrain flags for every run')
  parser.add_argument('--no_strace', action='store_true')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--known', help=argparse.SUPPRESS)
  parser.add_argument('--counts', help=argparse.SUPPRESS)
  parser.add_argument('--strace', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('rest', nargs='*', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  work = args.work_dir or tempfile.mkdtemp(prefix='reads_')
  os.makedirs(work, exist_ok=True)
  known = photos(args.image_dir)
  use_strace = not args.no_strace and shutil.which('strace') is not None
  print(f'{len(known)} photos in {args.image_dir}; opens counted by '
        f'{"strace" if use_strace else "patched os.open and open"}')
  for name in args.runs.split(','):
    cache = os.path.join(work, 'bn_fine_tune' if name == 'fine_tune'
                         else 'bn')
    if name != 'warm':
      shutil.rmtree(cache, ignore_errors=True)
    argv = ['--image_dir', args.image_dir, '--bottleneck_dir', cache,
            '--output_dir', os.path.join(work, 'runs')] + RUNS[name]
    argv += args.flags.split()
    print(summarize(name, one_run(name, argv, known, work, use_strace),
                    known), flush=True)


if __name__ == '__main__':
  main()
