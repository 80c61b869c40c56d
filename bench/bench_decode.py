"""Decoding speed and memory: the common JPEG path with and without the EXIF
orientation step, the Pillow fallback, and a 24-megapixel photo.

  python bench/bench_decode.py [--image_dir DIR] [--size 224] [--repeats 3]

Prints images/s for each variant and the ratio new/old for the JPEG path
(the one almost every image takes), then the peak memory of decoding one
6000x4000 JPEG, PNG and TIFF in a fresh process. Defaults to the shared
flowers sample beside the checkout.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from retrain import images  # noqa: E402

# The shared data sit beside the checkout (../shared), or beside the folder
# of worktrees (../../shared) when run from a worktree.
DEFAULT_DIR = next(
    (p / 'shared' / 'datasets' / 'flowers_sample'
     for p in pathlib.Path(__file__).resolve().parents[2:4]
     if (p / 'shared' / 'datasets' / 'flowers_sample').is_dir()),
    pathlib.Path('flowers_sample'))


def decode_before_exif(contents, size):
  """The decoder as it was before EXIF orientation (the baseline)."""
  return images.resize_pixels(
      tf.cond(tf.io.is_jpeg(contents),
              lambda: images._decode_jpeg_scaled(contents, size),
              lambda: tf.ensure_shape(tf.io.decode_image(
                  contents, channels=3, expand_animations=False), [None, None,
                                                                   3])),
      size)


def rate(paths, fn, size, batch=16):
  """(images per wall second, CPU milliseconds per image) of a tf.data pass.

  CPU time counts every thread of this process, so it measures the cost
  of the decoder even when other processes share the machine; wall-clock
  rates on a shared machine swing by 2x from run to run.
  """
  def load(path):
    return fn(tf.io.read_file(path), size)

  dataset = (tf.data.Dataset.from_tensor_slices(paths)
             .map(tf.autograph.experimental.do_not_convert(load),
                  num_parallel_calls=tf.data.AUTOTUNE)
             .batch(batch).prefetch(2))
  started, cpu = time.perf_counter(), time.process_time()
  n = sum(int(b.shape[0]) for b in dataset)
  return (n / (time.perf_counter() - started),
          1000 * (time.process_time() - cpu) / n)


_MEMORY_CHILD = r'''
import io, os, resource, sys
os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
sys.path.insert(0, sys.argv[2])
import numpy as np, tensorflow as tf
from PIL import Image
from retrain import images
ramp = np.linspace(0, 255, 6000, dtype=np.float32)
pixels = np.stack([np.broadcast_to(ramp, (4000, 6000))] * 3, -1).astype(np.uint8)
buf = io.BytesIO(); Image.fromarray(pixels).save(buf, format=sys.argv[1]); data = buf.getvalue()
del pixels, buf
small = io.BytesIO(); Image.new('RGB', (64, 64)).save(small, format=sys.argv[1])
images.decode_bytes(small.getvalue(), (224, 224))  # warm up the same decoder
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = __import__('time').perf_counter()
out = images.decode_bytes(data, (224, 224))
took = __import__('time').perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f'{sys.argv[1]:5s} 6000x4000 ({len(data) / 1e6:.1f} MB file): '
      f'{took * 1000:.0f} ms, peak memory {after / 1024:.0f} MB '
      f'(+{(after - before) / 1024:.0f} MB for this image), output {tuple(out.shape)}')
'''


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_dir', default=str(DEFAULT_DIR))
  parser.add_argument('--size', type=int, default=224)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  size = (args.size, args.size)
  paths = sorted(str(p) for p in pathlib.Path(args.image_dir).rglob('*')
                 if p.suffix.lower() in ('.jpg', '.jpeg'))
  if not paths:
    sys.exit(f'No JPEGs under {args.image_dir}.')
  print(f'{len(paths)} JPEGs from {args.image_dir}, target {size}, '
        f'{os.cpu_count()} CPUs')
  rate(paths[:32], decode_before_exif, size)  # warm up both graphs
  rate(paths[:32], images.decode_and_resize, size)
  old, new = [], []
  for _ in range(args.repeats):  # interleaved, so load drifts hit both
    old.append(rate(paths, decode_before_exif, size))
    new.append(rate(paths, images.decode_and_resize, size))
  for name, runs in (('before EXIF step', old), ('with EXIF step  ', new)):
    print(f'tf.data JPEG, {name}: '
          f'{np.median([r[0] for r in runs]):6.1f} images/s, '
          f'{np.median([r[1] for r in runs]):5.2f} CPU ms/image (runs: '
          f'{", ".join(f"{r[0]:.0f}/s {r[1]:.2f} ms" for r in runs)})')
  print('ratio with/before: wall rate '
        f'{np.median([r[0] for r in new]) / np.median([r[0] for r in old]):.3f}'
        ', CPU per image '
        f'{np.median([r[1] for r in new]) / np.median([r[1] for r in old]):.3f}')

  from PIL import Image
  tiffs = []
  for path in paths[:50]:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format='TIFF')
    tiffs.append(buffer.getvalue())
  started = time.perf_counter()
  for data in tiffs:
    images.decode_bytes(data, size)
  pillow = len(tiffs) / (time.perf_counter() - started)
  print(f'Pillow fallback (TIFF), serial : {pillow:7.1f} images/s')

  for fmt in ('JPEG', 'PNG', 'TIFF'):
    proc = subprocess.run(
        [sys.executable, '-c', _MEMORY_CHILD, fmt,
         str(pathlib.Path(__file__).resolve().parents[1])],
        capture_output=True, text=True)
    print(proc.stdout.strip() or proc.stderr.strip()[-500:])


if __name__ == '__main__':
  main()
