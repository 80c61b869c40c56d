"""How similar are a photo and its resized, re-encoded copy, vs two photos?

  python bench/near_duplicates.py --image_dir ../shared/datasets/flowers_sample

Writes, outside the repository (--work_dir), a copy of every 5th photo
resized to 60% and re-encoded as JPEG quality 70 (and a few 2% crops), takes
the bottleneck vectors of the originals and copies (cached in
--bottleneck_dir), and prints the cosine similarity of each copy to its
original next to the highest similarity of each original photo to any
other distinct photo. retrain.inspect's near-duplicate threshold
(retrain/config/) sits between the two.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

import bottleneck_cache  # noqa: E402
from retrain.bottlenecks import compute  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.data import discover  # noqa: E402
from retrain.features import modules, tflite_runtime  # noqa: E402


def _copies(paths, work_dir):
  from PIL import Image
  made = []
  for k, path in enumerate(paths):
    out = os.path.join(work_dir, f'copy_{k}.jpg')
    if not os.path.exists(out):
      with Image.open(path) as image:
        image = image.convert('RGB')
        w, h = image.size
        if k % 2:  # resized + re-encoded
          image = image.resize((int(w * 0.6), int(h * 0.6)))
        else:  # 2% cropped off each side + re-encoded
          image = image.crop((w // 50, h // 50, w - w // 50, h - h // 50))
        image.save(out, quality=70)
    made.append(out)
  return made


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_dir', default='../shared/datasets/flowers_sample')
  parser.add_argument('--work_dir', default='/tmp/near_duplicates_bench')
  parser.add_argument('--bottleneck_dir', default=DEFAULTS.cache.bottleneck_dir)
  args = parser.parse_args()
  os.makedirs(args.work_dir, exist_ok=True)
  originals = [image.path for image in
               discover.discover_images(args.image_dir).images]
  sources = originals[::5]
  copies = _copies(sources, args.work_dir)
  module = modules.load_module(DEFAULTS.module.tfhub_module)
  store = bottleneck_cache.BottleneckStore(args.bottleneck_dir,
                                           compute.cache_namespace(module))
  got = compute.compute_bottlenecks(
      originals + copies, tflite_runtime.deferred(module, 'auto'), store, 8)
  assert got.ok.all(), got.failures
  v = got.vectors / np.linalg.norm(got.vectors, axis=1, keepdims=True)
  n = len(originals)
  sim = v[:n] @ v[:n].T
  np.fill_diagonal(sim, -1)
  distinct_max = sim.max(axis=1)
  source_rows = [originals.index(p) for p in sources]
  copy_sim = np.sum(v[n:] * v[source_rows], axis=1)
  q = [0, 1, 5, 50, 95, 99, 100]
  print(f'{len(copies)} copies vs their originals: cosine percentiles {q}:',
        np.round(np.percentile(copy_sim, q), 4).tolist())
  print(f'{n} photos, highest cosine to another photo, percentiles {q}:',
        np.round(np.percentile(distinct_max, q), 4).tolist())
  for threshold in (0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97):
    print(f'threshold {threshold}: copies found {np.mean(copy_sim > threshold):.1%}'
          f', photos with a false near-duplicate '
          f'{np.mean(distinct_max > threshold):.1%}')


if __name__ == '__main__':
  main()
