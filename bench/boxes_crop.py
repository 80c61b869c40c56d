"""Cropping to boxes vs whole photos on BCCD: per-class test accuracy.

  python bench/boxes_crop.py --bccd ../shared/datasets/bccd \
      --margins 0,10,25 [--steps 2000]

Every annotated box is one example in both arms, with the same labels and
the same split (BCCD's ImageSets); the crop arm classifies the box's crop
(with each --crop_margin), the whole-photo arm classifies the photo the box
is in (the only thing a whole-image classifier can see). Bottlenecks go to
--bottleneck_dir, so a second run only trains. Prints one line per arm:
overall and per-class test accuracy, and balanced accuracy (mean of the
per-class ones; RBC is 85% of the boxes, so plain accuracy flatters).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402

import bottleneck_cache  # noqa: E402
from retrain.bottlenecks import compute  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.data import (
  boxes,  # noqa: E402
  sources,  # noqa: E402
)
from retrain.features import modules, tflite_runtime  # noqa: E402
from retrain.head import evaluate, train  # noqa: E402


def _arm(name, vectors, y, split, labels, steps):
  t = time.monotonic()
  settings = train.Settings(
      steps=steps, learning_rate=DEFAULTS.head.learning_rate,
      batch_size=DEFAULTS.head.train_batch_size,
      eval_step_interval=max(steps // 10, 1), validation_batch_size=-1,
      seed=0)
  trained = train.train_head(
      vectors[split.train], y[split.train], len(labels),
      vectors[split.validation], y[split.validation], settings)
  test = evaluate.evaluate(trained.head, vectors[split.test], y[split.test])
  per_class = [float(np.mean(test.predictions[test.labels == c] == c))
               for c in range(len(labels))]
  text = '  '.join(f'{label} {100 * a:5.1f}%' for label, a in
                   zip(labels, per_class, strict=True))
  print(f'{name:>16}: test accuracy {100 * test.accuracy:5.1f}%  balanced '
        f'{100 * np.mean(per_class):5.1f}%  ({text}; N={test.count}, '
        f'train {time.monotonic() - t:.0f} s)', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--bccd', default='../shared/datasets/bccd')
  parser.add_argument('--margins', default='0,10,25')
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--bottleneck_dir', default='/tmp/bottleneck_boxes')
  parser.add_argument('--module', default=DEFAULTS.module.tfhub_module)
  args = parser.parse_args()
  module = modules.load_module(args.module)
  runner = tflite_runtime.deferred(module, 'auto')
  store = bottleneck_cache.BottleneckStore(
      args.bottleneck_dir, compute.cache_namespace(module))
  voc = os.path.join(args.bccd, 'BCCD')
  whole_done = False
  for margin in [float(m) for m in args.margins.split(',')]:
    config = DEFAULTS.replace(image_dir=voc, crop_to_boxes=True,
                                 crop_margin=margin)
    layout, crops = boxes.load_crop_layout(config.data, config.crop)
    paths = [image.path for image in layout.dataset.images]
    y = np.array([image.label for image in layout.dataset.images])
    labels = list(layout.dataset.labels)
    t = time.monotonic()
    got = compute.compute_bottlenecks(paths, runner, store, 8,
                                      boxes=crops.boxes,
                                      key_suffixes=crops.key_suffixes)
    print(f'margin {margin:g}%: {len(paths)} crops, bottlenecks '
          f'{time.monotonic() - t:.0f} s', flush=True)
    usable = np.flatnonzero(got.ok)
    split = sources.make_split(layout, usable, y[usable], 0, 0)
    _arm(f'crop margin {margin:g}%', got.vectors, y[usable], split, labels,
         args.steps)
    if not whole_done:
      whole_done = True
      unique = sorted(set(paths))
      whole = compute.compute_bottlenecks(unique, runner, store, 8)
      row = {p: k for k, p in enumerate(np.array(unique)[whole.ok])}
      vectors = np.stack([whole.vectors[row[paths[i]]] for i in usable])
      _arm('whole photo', vectors, y[usable], split, labels, args.steps)


if __name__ == '__main__':
  main()
