"""Accuracy, head-training time and bottleneck cost of each solver, bundled
module and ensemble preset, side by side on one image folder.

  python bench/accuracy.py DIR [--folds 5] [--bottleneck_dir /tmp/acc_bn]
      [--solvers lbfgs,sgd] [--configs efficientnet_lite0,...]

1. Bottlenecks: each bundled module's vectors of every image of DIR are
   computed (or read from --bottleneck_dir; a fresh folder measures a cold
   run). The images per second of the modules are measured in one run, on
   the same machine at the same time, so their ratios are what counts when
   the CPU is shared.
2. Accuracy: stratified k-fold over all images (each image is tested
   exactly once; each fold's training part is split 8:1 into training and
   validation, the pipeline's 80/10 ratio), or DIR's own train/validation/
   test split when it has one. Every configuration (module or ensemble) is
   trained with every solver on the same folds.
3. A table: accuracy with its Wilson 95% interval, head-training seconds
   per fit, bottleneck milliseconds per image (the sum of the members' for an
   ensemble) and the projected cold bottleneck time for 3,670 photos (the
   full flowers set) at the measured rate.

Solvers: `lbfgs` (the converging solver, grid and refit as configured in
retrain/config/), `lbfgs-norefit` (the same, without refitting on
training + validation), `lbfgs-std` / `lbfgs-raw` (on standardised / raw
vectors, whatever the default), `lbfgs-exact-choice` (the grid's fits on
validation to --solver_tolerance instead of --solver_choice_tolerance),
`sgd` (retrain.py's defaults: 4,000 steps of SGD at 0.01).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from retrain.bottlenecks import ensemble as ensemble_bottlenecks  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.data import sources as layouts  # noqa: E402
from retrain.features import ensemble as ensemble_lib  # noqa: E402
from retrain.features import modules as features  # noqa: E402
from retrain.features import tflite_runtime  # noqa: E402
from retrain.head import folds as folds_lib  # noqa: E402
from retrain.head import solver as solver_lib  # noqa: E402
from retrain.head import train as train_lib  # noqa: E402
from retrain.report import confidence  # noqa: E402

MODULES = ('efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2')
SOLVERS = ('lbfgs', 'lbfgs-norefit', 'lbfgs-std', 'lbfgs-raw',
           'lbfgs-exact-choice', 'sgd')
FULL_FLOWERS = 3670


def module_vectors(paths, name, bottleneck_dir, cache_dir):
  """(Bottlenecks, seconds per computed image or nan) of module `name`."""
  module = features.load_module(name, None, cache_dir)
  runner = tflite_runtime.deferred(module, DEFAULTS.cache.bottleneck_runtime,
                                   cache_dir)
  runner.prepare()  # TFLite conversion is one-time, not per image
  started = time.monotonic()
  computed = ensemble_bottlenecks.compute_bottlenecks(
      paths, module, runner, bottleneck_dir, DEFAULTS.cache.bottleneck_runtime,
      DEFAULTS.cache.bottleneck_batch_size, cache_dir)
  seconds = time.monotonic() - started
  per_image = (seconds / computed.stats.computed if computed.stats.computed
               else float('nan'))
  return computed, per_image


def folds_of(y, subsets, k, seed):
  """[(train rows, validation rows, test rows)] for each evaluation."""
  if subsets is not None:  # the folder's own split
    return [tuple(np.flatnonzero(subsets == s) for s in (0, 1, 2))]
  outer = folds_lib.stratified_folds(y, k, seed)
  plans = []
  for f in range(k):
    rest = np.flatnonzero(outer != f)
    inner = folds_lib.stratified_folds(y[rest], 9, seed + 1 + f)
    plans.append((rest[inner != 0], rest[inner == 0],
                  np.flatnonzero(outer == f)))
  return plans


def train(solver, x, y, classes, train_rows, val_rows, seed):
  """The head of `solver` trained on train_rows (validation val_rows)."""
  tx, ty, vx, vy = x[train_rows], y[train_rows], x[val_rows], y[val_rows]
  if solver == 'sgd':
    d = DEFAULTS
    return train_lib.train_head(tx, ty, classes, vx, vy, train_lib.Settings(
        steps=d.head.how_many_training_steps, learning_rate=d.head.learning_rate,
        batch_size=d.head.train_batch_size,
        eval_step_interval=d.head.how_many_training_steps,
        validation_batch_size=d.head.validation_batch_size, seed=seed)).head
  options = solver_lib.SolverOptions.from_config(DEFAULTS)
  if solver == 'lbfgs-norefit':
    options = dataclasses.replace(options, refit=False)
  if solver == 'lbfgs-std':
    options = dataclasses.replace(options, standardise=True)
  if solver == 'lbfgs-raw':
    options = dataclasses.replace(options, standardise=False)
  if solver == 'lbfgs-exact-choice':
    options = dataclasses.replace(options, choice_tolerance=options.tolerance)
  return solver_lib.fit_head(tx, ty, classes, vx, vy, options).head


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('image_dir')
  parser.add_argument('--folds', type=int, default=5)
  parser.add_argument('--bottleneck_dir', default='/tmp/bench_accuracy/bn')
  parser.add_argument('--module_cache_dir', default=None)
  parser.add_argument('--solvers', default='lbfgs,sgd',
                      help=f'comma-separated, of {", ".join(SOLVERS)}')
  parser.add_argument('--configs', default=','.join(
      MODULES + tuple(ensemble_lib.ENSEMBLE_PRESETS)),
      help='comma-separated modules and ensemble presets')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)

  config = DEFAULTS.replace(image_dir=args.image_dir)
  layout = layouts.load_layout(config.data)
  paths = [image.path for image in layout.dataset.images]
  labels = np.array([image.label for image in layout.dataset.images])
  classes = len(layout.dataset.labels)
  configs = args.configs.split(',')
  needed = list(dict.fromkeys(m for c in configs
                              for m in ensemble_lib.member_handles(c)))
  print(f'{args.image_dir}: {len(paths)} images, {classes} classes, '
        f'{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}')

  vectors, per_image = {}, {}
  for name in needed:
    computed, seconds = module_vectors(paths, name, args.bottleneck_dir,
                                       args.module_cache_dir)
    vectors[name] = computed
    per_image[name] = seconds
    print(f'  bottlenecks {name}: {computed.stats.computed} computed, '
          f'{computed.stats.reused} reused, '
          + (f'{1000 * seconds:.1f} ms/image ({1 / seconds:.0f} images/s)'
             if seconds == seconds else 'all cached (no timing)'))

  rows = []
  for name in configs:
    members = ensemble_lib.member_handles(name)
    combined = ensemble_bottlenecks.combine([vectors[m] for m in members])
    ok = combined.ok
    x, y = combined.vectors, labels[ok]
    subsets = layout.subsets[ok] if layout.subsets is not None else None
    plans = folds_of(y, subsets, args.folds, args.seed)
    cost = sum(per_image[m] for m in members)
    for solver in args.solvers.split(','):
      correct = total = 0
      seconds = []
      for train_rows, val_rows, test_rows in plans:
        started = time.monotonic()
        head = train(solver, x, y, classes, train_rows, val_rows, args.seed)
        seconds.append(time.monotonic() - started)
        pred = head.logits(x[test_rows]).argmax(axis=1)
        correct += int(np.sum(pred == y[test_rows]))
        total += len(test_rows)
      rows.append((name, solver, correct, total, float(np.mean(seconds)),
                   cost))
      print('  ' + confidence.format_accuracy(correct / total, total,
                                              f'{name} / {solver}:'),
            f'head {np.mean(seconds):.2f} s', flush=True)

  protocol = ('given split' if layout.subsets is not None else
              f'{args.folds}-fold')
  print(f'\n| Configuration | Solver | Accuracy ({protocol}) | 95% CI | '
        'Head fit (s) | Bottleneck ms/image | Projected cold bottlenecks, '
        f'{FULL_FLOWERS} photos |')
  print('|---|---|---|---|---|---|---|')
  for name, solver, correct, total, seconds, cost in rows:
    low, high = confidence.wilson_interval(correct, total)
    print(f'| {name} | {solver} | {100 * correct / total:.1f}% '
          f'({correct}/{total}) | {100 * low:.1f}-{100 * high:.1f}% | '
          f'{seconds:.2f} | {1000 * cost:.1f} | {FULL_FLOWERS * cost:.0f} s |')


if __name__ == '__main__':
  main()
