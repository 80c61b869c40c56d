"""Measures the training options on a real data set; prints a table.

  python bench/training_options.py [--image_dir DIR] [--out /tmp/training_options_bench]
      [--seeds 3] [--steps 4000]

Every variant trains the head from the same cached bottlenecks (computed on
the first run, then reused), with the same split; only the option and the
seed change. The test set of flowers_sample is 10% of 500 images, so one
image is about 2 points of accuracy: differences smaller than that are
noise, which is why each variant is run with several seeds and the mean and
spread are printed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from retrain import pipeline  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402

# ../shared beside the checkout (or beside the folder of worktrees).
FLOWERS = next((p / 'shared' / 'datasets' / 'flowers_sample'
                for p in pathlib.Path(__file__).resolve().parents[2:4]
                if (p / 'shared').is_dir()),
               pathlib.Path('../shared/datasets/flowers_sample'))

VARIANTS = {
    'defaults (retrain.py: sgd, sampling classes)': {},
    'optimizer momentum': {'optimizer': 'momentum'},
    'optimizer adam': {'optimizer': 'adam'},
    'optimizer adam, learning_rate 0.001': {'optimizer': 'adam',
                                            'learning_rate': 0.001},
    'dropout_rate 0.2': {'dropout_rate': 0.2},
    'dropout_rate 0.5': {'dropout_rate': 0.5},
    'l2_regularizer 0.001': {'l2_regularizer': 0.001},
    'label_smoothing 0.1': {'label_smoothing': 0.1},
    'sampling images': {'sampling': 'images'},
    'sampling images, class_weighting balanced': {
        'sampling': 'images', 'class_weighting': 'balanced'},
    'early_stopping_patience 20': {'early_stopping_patience': 20},
    'momentum + early_stopping_patience 20': {
        'optimizer': 'momentum', 'early_stopping_patience': 20},
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_dir', default=str(FLOWERS))
  parser.add_argument('--out', default='/tmp/training_options_bench')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=DEFAULTS.head.how_many_training_steps)
  parser.add_argument('--only', default='', help='substring of variant names')
  args = parser.parse_args()
  if not os.path.isdir(args.image_dir):
    sys.exit(f'{args.image_dir} does not exist; pass --image_dir.')
  logging.set_verbosity(logging.WARNING)
  out = pathlib.Path(args.out)
  base = DEFAULTS.replace(image_dir=args.image_dir,
      bottleneck_dir=str(out / 'bottlenecks'),
      output_labels=str(out / 'labels.txt'), saved_model_dir='',
      projector_max_images=0, how_many_training_steps=args.steps)

  print(f'{args.image_dir}, {args.steps} steps, seeds 0..{args.seeds - 1}; '
        'mean (min-max) over seeds')
  header = (f'{"variant":45s} {"test acc %":>16s} {"test macro F1":>17s} '
            f'{"val acc %":>16s} {"steps run":>9s} {"train s":>7s}')
  print(header)
  print('-' * len(header))
  for name, overrides in VARIANTS.items():
    if args.only and args.only not in name:
      continue
    acc, f1, val, steps, secs = [], [], [], [], []
    for seed in range(args.seeds):
      tag = f'{len(acc)}-{abs(hash(name)) % 10**6}-{seed}'
      config = base.replace(random_seed=seed, summaries_dir=str(out / 'logs' / tag),
          report_dir=str(out / 'report' / tag), **overrides)
      result = pipeline.run(config)
      m = result.explained.metrics
      acc.append(100 * m['test'].accuracy)
      f1.append(m['test'].macro['f1'])
      val.append(100 * m['validation'].accuracy)
      steps.append(result.history[-1].step + 1)
      secs.append(result.timings['training'])

    def fmt(v, spec):
      return (f'{np.mean(v):{spec}} ({np.min(v):{spec}}-'
              f'{np.max(v):{spec}})')
    print(f'{name:45s} {fmt(acc, ".1f"):>16s} {fmt(f1, ".3f"):>17s} '
          f'{fmt(val, ".1f"):>16s} {np.mean(steps):9.0f} '
          f'{np.mean(secs):7.1f}', flush=True)


if __name__ == '__main__':
  main()
