"""A damaged bottleneck cache heals itself, and the run is as accurate.

  python bench/cache_heal.py [--image_dir .../flowers_sample]
      [--module efficientnet_lite0] [--work_dir /tmp/bench_cache_heal]

Runs `python -m retrain` cold into a fresh cache (the clean run), then
damages that cache: 64 bytes flipped inside the vectors of its shard and
a NaN written into one more vector behind its checksum's back. The second
run must drop, log and recompute exactly the damaged vectors and reach the
clean run's test accuracy (retrain's held-out test split, by the stable
hash of each file name; the same seed, so with the same vectors the same
model); a third run finds nothing damaged and computes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def run(image_dir, module, cache, out):
  """(test accuracy, bottleneck stats, stderr) of one retrain run."""
  shutil.rmtree(out, ignore_errors=True)
  proc = subprocess.run([
      sys.executable, '-m', 'retrain', '--image_dir', image_dir,
      '--tfhub_module', module, '--bottleneck_dir', str(cache),
      '--summaries_dir', str(out / 'logs'), '--report_dir',
      str(out / 'report'), '--output_labels', str(out / 'labels.txt'),
      '--saved_model_dir', str(out / 'saved_model'), '--output_graph', '',
      '--projector_max_images', '0'], cwd=REPO, capture_output=True,
                        text=True)
  if proc.returncode:
    sys.exit(f'retrain failed:\n{proc.stderr[-3000:]}')
  summary = json.loads((out / 'report' / 'run_summary.json').read_text())
  return summary['test_accuracy'], summary['bottlenecks'], proc.stderr


def damage(cache: pathlib.Path, flips: int = 64, seed: int = 0) -> int:
  """Flips `flips` bytes in the vectors of the largest shard and writes a
  NaN into one more vector; returns the number of vectors hit."""
  from tests.hostile_corpus import flip_vector_bytes
  shards = sorted(cache.glob('*/shard-*.h5'), key=lambda p: p.stat().st_size)
  path = shards[-1]
  hit = flip_vector_bytes(path, flips, seed)
  nan_row = next(r for r in range(len(hit) + 1) if r not in hit)
  with h5py.File(path, 'r+') as f:
    f['vectors'][nan_row, 0] = np.nan
  return len(hit) + 1


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  from tests.conftest import FLOWERS
  parser.add_argument('--image_dir', default=str(FLOWERS))
  parser.add_argument('--module', default='efficientnet_lite0')
  parser.add_argument('--work_dir', default=os.path.join(
      tempfile.gettempdir(), 'bench_cache_heal'))
  args = parser.parse_args()
  if not os.path.isdir(args.image_dir):
    sys.exit(f'No image folder {args.image_dir}: pass --image_dir (the '
             'flowers_sample data set, or any folder of classes).')
  work = pathlib.Path(args.work_dir)
  shutil.rmtree(work, ignore_errors=True)
  cache = work / 'cache'
  clean, stats, _ = run(args.image_dir, args.module, cache, work / 'clean')
  print(f'clean run: test accuracy {100 * clean:.2f} %, computed '
        f'{stats["computed"]} vectors')
  hit = damage(cache)
  healed, stats, err = run(args.image_dir, args.module, cache, work / 'healed')
  dropped = sum(int(n) for n in re.findall(r'Dropped (\d+) damaged', err))
  print(f'after 64 flipped bytes and a NaN ({hit} vectors hit): test '
        f'accuracy {100 * healed:.2f} %, {dropped} dropped, '
        f'{stats["computed"]} recomputed, '
        f'{"same as" if healed == clean else "DIFFERENT FROM"} the clean run')
  again, stats, err = run(args.image_dir, args.module, cache, work / 'again')
  print(f'third run: test accuracy {100 * again:.2f} %, '
        f'{stats["computed"]} computed, '
        f'{"nothing" if "damaged" not in err else "SOMETHING"} damaged')


if __name__ == '__main__':
  main()
