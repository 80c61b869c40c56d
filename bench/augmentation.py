"""What augmentation costs and gains, on real photos with the bundled module.

  python bench/augmentation.py [--image_dir ../shared/datasets/flowers_sample]
      [--work_dir /tmp/bench_augmentation] [--copies 1,2,4,8] [--seeds 0,1,2]

Runs `retrain.pipeline.run` in one process (the module is loaded by each
run, as a user's run would), on the same split, and prints:

  1. cost: the bottleneck phase of a plain run from an empty cache, the
     distorted-copies phase with K copies (flip + crop + brightness), the
     ratio to K plain phases, and a re-run of each with a warm cache;
  2. gain: final test accuracy without augmentation and with K copies, per
     --random_seed (the seed moves the head's initialisation, its batches
     and the copies; the split is a hash of the file names, so it is the
     same in every run).

Timings depend on the machine and on what else runs on it; the script
prints figures and ratios and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import logging  # noqa: E402

from retrain import pipeline  # noqa: E402
from retrain.config import DEFAULTS, Distort  # noqa: E402

# The shared data sets live beside the checkout (or beside the folder of
# worktrees).
_HERE = pathlib.Path(__file__).resolve()
DEFAULT_IMAGES = next(
    (p for p in (_HERE.parents[2] / 'shared' / 'datasets' / 'flowers_sample',
                 _HERE.parents[3] / 'shared' / 'datasets' / 'flowers_sample')
     if p.is_dir()),
    _HERE.parents[2] / 'shared' / 'datasets' / 'flowers_sample')
# retrain.py's tutorial example values, on the three distortions asked for.
DISTORTIONS = dict(flip_left_right=True, random_crop=10, random_brightness=10)


def _run(config):
  started = time.monotonic()
  result = pipeline.run(config)
  return result, time.monotonic() - started


def _interleaved_cost_ratio(base, work, reps=3):
  """Seconds per distorted copy / seconds per plain vector, each the best
  of `reps` runs into empty stores, alternated so that other load on the
  machine hits both alike."""
  import bottleneck_cache
  from retrain.bottlenecks import compute as bottlenecks
  from retrain.bottlenecks import distort
  from retrain.data import discover
  from retrain.features import modules as features
  module = features.load_module(base.module.tfhub_module, base.module.image_size,
                                base.module.module_cache_dir)
  paths = [i.path for i in discover.discover_images(base.data.image_dir).images]
  d = Distort(**DISTORTIONS)
  best = {'plain': float('inf'), 'distorted': float('inf')}
  for rep in range(reps):
    root = work / f'ab-{rep}'
    started = time.monotonic()
    bottlenecks.compute_bottlenecks(
        paths, module, bottleneck_cache.BottleneckStore(
            str(root), bottlenecks.cache_namespace(module)),
        base.cache.bottleneck_batch_size)
    best['plain'] = min(best['plain'], time.monotonic() - started)
    started = time.monotonic()
    distort.compute_distorted(
        paths, module, bottleneck_cache.BottleneckStore(
            str(root), distort.cache_namespace(module, d, 0)),
        distort.CopyRecipe(d, 1, 0), base.cache.bottleneck_batch_size)
    best['distorted'] = min(best['distorted'], time.monotonic() - started)
    shutil.rmtree(root)
  return best['distorted'] / best['plain']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_dir', default=str(DEFAULT_IMAGES))
  parser.add_argument('--work_dir', default='/tmp/bench_augmentation')
  parser.add_argument('--module', default=DEFAULTS.module.tfhub_module)
  parser.add_argument('--copies', default='1,2,4,8',
                      help='values of K to compare, comma-separated')
  parser.add_argument('--seeds', default='0,1,2',
                      help='seeds of the accuracy table ("" for none)')
  parser.add_argument('--steps', type=int,
                      default=DEFAULTS.head.how_many_training_steps)
  parser.add_argument('--testing_percentage', type=float,
                      default=DEFAULTS.data.testing_percentage,
                      help='a larger test set makes accuracy differences '
                      'measurable (51 test images move in steps of 2%%)')
  parser.add_argument('--gain_only', action='store_true',
                      help='skip the timings')
  args = parser.parse_args()
  if not os.path.isdir(args.image_dir):
    sys.exit(f'{args.image_dir} does not exist: pass --image_dir with a '
             'folder of class sub-folders (e.g. flowers_sample).')
  ks = sorted(int(k) for k in args.copies.split(','))
  seeds = [int(s) for s in args.seeds.split(',') if s]
  logging.set_verbosity(logging.WARNING)

  work = pathlib.Path(args.work_dir)
  if work.exists():
    shutil.rmtree(work)
  base = DEFAULTS.replace(image_dir=args.image_dir, tfhub_module=args.module,
      bottleneck_dir=str(work / 'bottlenecks'),
      summaries_dir=str(work / 'logs'),
      output_labels=str(work / 'labels.txt'), saved_model_dir='',
      report_dir=str(work / 'report'), how_many_training_steps=args.steps,
      testing_percentage=args.testing_percentage)

  print(f'images: {args.image_dir}; module: {args.module}; '
        f'distortions: {DISTORTIONS}; {os.cpu_count()} CPUs')
  accuracy = {}
  plain = None
  if not args.gain_only:
    plain = _cost(base, ks, work, accuracy, seeds[:1])
  if not seeds:
    return
  for seed in seeds:
    for k in [0] + ks:
      if (k, seed) not in accuracy:
        config = base.replace(random_seed=seed,
                                     distorted_copies=max(k, 1),
                                     **(DISTORTIONS if k else {}))
        result = _run(config)[0]
        accuracy[(k, seed)] = result.test_accuracy
        plain = plain or result
  print(f'\n== gain: test accuracy (N={plain.test_count}, '
        f'{plain.counts["train"]} training images), same split ==')
  print('K     ' + ''.join(f'seed {s:<4d}' for s in seeds) + 'mean')
  for k in [0] + ks:
    row = [accuracy[(k, s)] for s in seeds]
    print(f'{k:<6d}' + ''.join(f'{100 * a:8.1f}% ' for a in row) +
          f'{100 * sum(row) / len(row):.1f}%')


def _cost(base, ks, work, accuracy, seeds):
  """Prints the timings; fills accuracy[(K, seed)] for the runs it made."""
  plain, plain_wall = _run(base)
  t_plain = plain.timings['bottlenecks']
  n_all = plain.bottleneck_stats.computed
  n_train = plain.counts['train']
  print(f'\n== cost ({n_all} images, {n_train} training) ==')
  print(f'plain, empty cache: bottlenecks {t_plain:6.1f} s '
        f'({n_all / t_plain:.1f} images/s), training '
        f'{plain.timings["training"]:.1f} s, run {plain_wall:.1f} s')
  again, plain_warm = _run(base)
  print(f'plain, warm cache:  run {plain_warm:.1f} s (bottleneck phase '
        f'{again.timings["bottlenecks"]:.1f} s)')
  per_plain = t_plain / n_all
  for seed in seeds:
    accuracy[(0, seed)] = plain.test_accuracy
  for k in ks:
    config = base.replace(distorted_copies=k, **DISTORTIONS)
    result, _ = _run(config)
    t_d = result.timings['distorted_copies']
    new = result.distorted_stats.computed
    per_copy = t_d / max(new, 1)
    # Raising K computes only the new copies, so each K's cost from an empty
    # cache is projected from the measured cost per copy.
    cold = t_plain + k * n_train * per_copy
    print(f'K={k}: {new:5d} new copies (of {k * n_train}) in {t_d:6.1f} s, '
          f'{per_copy / per_plain:.2f} x a plain vector each; from an empty '
          f'cache the bottleneck phases would take {cold:.0f} s = '
          f'{cold / t_plain:.2f} x the plain phase (goal <= {k + 1}); '
          f'training {result.timings["training"]:.1f} s')
    rerun, warm = _run(config)
    print(f'K={k}: re-run with a warm cache {warm:.1f} s (plain '
          f'{plain_warm:.1f} s); {rerun.distorted_stats.computed} computed, '
          f'bottleneck phases {rerun.timings["bottlenecks"]:.1f} + '
          f'{rerun.timings["distorted_copies"]:.1f} s')
    for seed in seeds:
      accuracy[(k, seed)] = result.test_accuracy
  ratio = _interleaved_cost_ratio(base, work)
  print(f'per-image cost of a distorted copy / a plain bottleneck, '
        f'interleaved, best of 3: {ratio:.2f}')
  rate = n_all / t_plain
  steps = DEFAULTS.head.how_many_training_steps * DEFAULTS.head.train_batch_size
  print(f'retrain.py with distortions runs the module on {steps} images '
        f'(4000 steps x 100): about {steps / rate / 3600:.1f} h at this rate.')
  return plain


if __name__ == '__main__':
  main()
