"""Multi-label heads on photos with VOC boxes: per-label AP, mAP, exact match
and label F1 on held-out photos.

  python bench/multilabel.py DIR [--bottleneck_dir BN] [--l2_grids ...]

DIR holds VOC annotations (a VOC tree such as BCCD's JPEGImages/ +
Annotations/ + ImageSets/Main, or an XML beside each photo); a photo's
labels are the names of its objects (retrain/data/multilabel.py). The
vectors are the default ensemble's, read from the bottleneck cache without
TensorFlow (bench/imbalance.py; run `python -m retrain --multi_label
--image_dir DIR --bottleneck_dir BN` once first). The head is fitted as a
--multi_label run fits it (each label's L2 and threshold chosen by k-fold
out-of-fold predictions) on the training and validation photos of the
given split (ImageSets/Main, else the stable hash) and scored on its test
photos, which nothing was chosen on. `--l2_grids` compares L2 grids (each
a comma-separated list; grids separated by ':').
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from bench import imbalance  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.data import multilabel as data_lib  # noqa: E402
from retrain.head import multilabel as head_lib  # noqa: E402
from retrain.head import solver as solver_lib  # noqa: E402
from retrain.report import multilabel as report_lib  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('image_dir')
  parser.add_argument('--bottleneck_dir', default='/tmp/bench_multilabel/bn')
  parser.add_argument('--l2_grids', default=','.join(
      str(v) for v in DEFAULTS.head.solver_l2_grid))
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  config = DEFAULTS.replace(image_dir=args.image_dir)
  found = data_lib.from_boxes(config.data, config.crop)
  images = found.layout.dataset.images
  labels = list(found.layout.dataset.labels)
  x, rows = imbalance.ensemble_vectors([image.path for image in images],
                                       args.bottleneck_dir)
  targets = found.targets[rows]
  strata = np.array([images[i].label for i in rows])
  codes = found.layout.subsets[rows]
  fit, test = codes != 2, codes == 2
  print(f'{args.image_dir}: {len(rows)} of {len(images)} photos cached; '
        f'labels {labels}; {int(fit.sum())} training + validation photos, '
        f'{int(test.sum())} test photos; photos with 2+ labels: '
        f'{int(np.sum(targets.sum(axis=1) >= 2))}')
  for grid in args.l2_grids.split(':'):
    options = dataclasses.replace(
        solver_lib.SolverOptions.from_config(DEFAULTS),
        l2_grid=tuple(float(v) for v in grid.split(',')))
    fitted = head_lib.fit_multilabel(x[fit], targets[fit], strata[fit],
                                     options)
    m = report_lib.compute(targets[test],
                           head_lib.probabilities(fitted.head, x[test]),
                           fitted.thresholds, labels)
    print(f'\nL2 grid {grid}: chosen {fitted.l2.tolist()}, thresholds '
          f'{np.round(fitted.thresholds.astype(float), 3).tolist()} ({fitted.seconds:.1f} '
          's)')
    print('\n'.join(report_lib.format_metrics(m, fitted.thresholds)))


if __name__ == '__main__':
  main()
