"""Float against int8 bottlenecks, side by side in one process.

  python bench/int8.py --speed_dir ../shared/datasets/flowers_sample \
      --accuracy_dirs ../shared/datasets/flowers_sample,../shared/datasets/sign_language_digits/Dataset \
      [--cold_warm_dir DIR] [--bottleneck_dir /tmp/int8_bn] [--folds 5]

1. Speed, per member of the default ensemble and for the ensemble, float
   (TFLite/XNNPACK, as the pipeline runs it) against int8 (the module's
   int8 copy, retrain/features/int8.py), interleaved so both see the same
   load: the module alone on pre-decoded images (the ceiling), decoding
   and resizing alone, and the bottleneck pipeline into an empty cache on
   --speed_images photos, with its share of the ceiling (module and
   decoding sharing the cores: 1 / (1/module + 1/decoding)), over the
   whole pass (hashing the files, the pipeline's start, its first batches
   and reading the vectors back included).
2. Accuracy, per dataset: stratified k-fold (each photo tested once; each
   fold's training part split 8:1 into training and validation, as
   bench/accuracy.py), a head from the converging solver on each
   precision's own vectors; also the cross cases (float-trained head on
   int8 vectors, int8-trained head on float vectors), and the median and
   5th-percentile cosine of one photo's float and int8 vectors (what the
   guard reads).
3. With --cold_warm_dir: `python -m retrain` cold (empty bottleneck cache)
   and warm, default flags, at --bottleneck_precision float32 and auto,
   runs interleaved; wall time, phases and peak memory.

The machine may be shared: read the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

import bottleneck_cache  # noqa: E402
from retrain.bottlenecks import compute as bottlenecks_lib  # noqa: E402
from retrain.bottlenecks import ensemble as ensemble_bottlenecks  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.data import sources as layouts  # noqa: E402
from retrain.features import ensemble as ensemble_lib  # noqa: E402
from retrain.features import (
  int8,  # noqa: E402
  tflite_runtime,  # noqa: E402
)
from retrain.features import modules as features  # noqa: E402

BATCH = DEFAULTS.cache.bottleneck_batch_size
# Seconds of each measurement of a module alone.
SECONDS = 4.0


def load_pair(name, cache_dir):
  """(float runner on TFLite, int8 copy) of bundled module `name`."""
  module = features.load_module(name, None, cache_dir)
  float_runner = tflite_runtime.with_runtime(module, 'tflite', cache_dir)
  quantized = int8.load(module, cache_dir)
  if quantized is None:
    raise SystemExit(f'{name}: no int8 copy (see the log)')
  return float_runner, quantized


class Clock:
  """Wall and process CPU seconds since made (CPU: every thread's)."""

  def __init__(self):
    self._wall, self._cpu = time.perf_counter(), self._cpu_now()

  @staticmethod
  def _cpu_now():
    t = os.times()
    return t.user + t.system

  def rates(self, images):
    """(images/s of wall time, ms of CPU per image) for `images` done."""
    wall = time.perf_counter() - self._wall
    cpu = self._cpu_now() - self._cpu
    return images / wall, 1000 * cpu / max(images, 1)


def decode_rate(paths, size):
  """(images/s, CPU ms per image) of decoding and resizing alone (tf.data,
  as the pipeline)."""
  import tensorflow as tf

  from retrain import images as images_lib
  dataset = bottlenecks_lib.image_batches(
      (np.arange(len(paths)), tf.constant(paths)),
      lambda i, p: (i, images_lib.decode_and_resize(tf.io.read_file(p), size)),
      BATCH)
  clock = Clock()
  return clock.rates(sum(int(batch[0].shape[0]) for batch in dataset))


def pipeline_rate(paths, runner):
  """(images/s, CPU ms per image) of compute_bottlenecks of `paths` into
  an empty cache."""
  with tempfile.TemporaryDirectory() as cache:
    store = bottleneck_cache.BottleneckStore(
        cache, bottlenecks_lib.cache_namespace(runner))
    clock = Clock()
    done = bottlenecks_lib.compute_bottlenecks(
        paths, runner, store, BATCH,
        bottlenecks_lib.PassOptions(progress_interval=1e9))
    return clock.rates(done.stats.computed)


def ensemble_rate(paths, module, members):
  """(images/s, CPU ms per image) of the ensemble's bottlenecks (shared
  pass) into an empty cache, with `members` as the ensemble's members."""
  ensemble = dataclasses.replace(module, members=tuple(members))
  with tempfile.TemporaryDirectory() as cache:
    clock = Clock()
    done = ensemble_bottlenecks.compute_bottlenecks(
        paths, ensemble, ensemble, cache, 'tflite', BATCH,
        options=bottlenecks_lib.PassOptions(progress_interval=1e9))
    return clock.rates(done.stats.computed // len(members))


def module_alone(runner, seconds):
  """(images/s, CPU ms per image) of the module alone on pre-decoded
  images (pipeline_bench.module_limit: a thread per interpreter)."""
  from pipeline_bench import module_limit
  clock = Clock()
  rate = module_limit(runner, [BATCH], seconds)[0]
  # Images done while the clock ran (the warm-up calls and the last call,
  # which ends after `seconds`, too), at the measured rate.
  inverse_wall, _ = clock.rates(1)
  return rate, clock.rates(rate / inverse_wall)[1]


def best(runs):
  """The run with the highest images/s of (images/s, CPU ms) runs."""
  return max(runs, key=lambda run: run[0])


def _row(name, precision, alone, decoding, piped):
  """A table row from (images/s, CPU ms per image) pairs."""
  bound = 1 / (1 / alone[0] + 1 / decoding[0])
  cpu_bound = alone[1] + decoding[1]
  return (name, precision, alone[0], decoding[0], bound, piped[0],
          cpu_bound, piped[1], alone[1])


def speed(paths, names, cache_dir, seconds):
  """Prints the speed table (see print_speed)."""
  rows = []
  pairs = {name: load_pair(name, cache_dir) for name in names}
  for name, (fl, q) in pairs.items():
    alone = {'float32': [], 'int8': []}
    for _ in range(2):  # interleaved: float, int8, float, int8
      alone['float32'].append(module_alone(fl, seconds))
      alone['int8'].append(module_alone(q, seconds))
    decoding = decode_rate(paths, fl.input_size)
    piped = {'float32': [], 'int8': []}
    for _ in range(2):
      piped['float32'].append(pipeline_rate(paths, fl))
      piped['int8'].append(pipeline_rate(paths, q))
    for precision in ('float32', 'int8'):
      rows.append(_row(name, precision, best(alone[precision]), decoding,
                       best(piped[precision])))
  module = ensemble_lib.load(','.join(names), None, cache_dir)
  members = {'float32': [pairs[n][0] for n in names],
             'int8': [pairs[n][1] for n in names]}
  decoding = decode_rate(paths, module.input_size)
  piped = {'float32': [], 'int8': []}
  for _ in range(2):
    for precision in ('float32', 'int8'):
      piped[precision].append(ensemble_rate(paths, module,
                                            members[precision]))
  for precision in ('float32', 'int8'):
    own = [r for r in rows if r[1] == precision]
    # The members one after the other, each at its own size.
    alone = (1 / sum(1 / r[2] for r in own), sum(r[8] for r in own))
    rows.append(_row('ensemble', precision, alone, decoding,
                     best(piped[precision])))
  for precision in ('float32', 'int8'):
    # The ensemble module as exported: every member on the image at the
    # ensemble's size, the smaller ones area-resized from it first.
    alone = best([module_alone(as_ensemble(module, members[precision]),
                               seconds) for _ in range(2)])
    rows.append(_row('ensemble, resize in module', precision, alone,
                     decoding, best(piped[precision])))
  print_speed(rows, len(paths))


def as_ensemble(module, members):
  """A FeatureModule whose call runs `members` as the ensemble `module`
  does (ensemble_lib.at_ensemble_size), one after the other, their
  vectors side by side."""
  import tensorflow as tf
  size = tuple(module.input_size)
  runners = [ensemble_lib.at_ensemble_size(m, size) for m in members]
  return dataclasses.replace(
      module, call=lambda images: tf.concat(
          [r.call(images) for r in runners], axis=1),
      parallel_calls=max(r.parallel_calls for r in runners))


def print_speed(rows, count):
  """The table: per module and precision, images/s of the module alone,
  decoding alone, their ceiling sharing the cores and the pipeline, its %
  of the ceiling; then the same in CPU ms per image (module + decoding
  against the pipeline), which other jobs on the cores disturb less."""
  print(f'\nSpeed ({count} photos, batch {BATCH}, images/s; machine '
        f'load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)')
  print('| module | precision | module alone | decoding alone | ceiling '
        '(both on the cores) | pipeline | % of ceiling | int8 speed-up | '
        'CPU ms/image: ceiling / pipeline | % of CPU ceiling |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for i, (name, precision, m, d, bound, p, cpu_bound, cpu, _) in (
      enumerate(rows)):
    speedup = (f'{p / rows[i - 1][5]:.2f}x' if precision == 'int8' and
               rows[i - 1][0] == name else '')
    print(f'| {name} | {precision} | {m:.1f} | {d:.0f} | {bound:.1f} | '
          f'{p:.1f} | {100 * p / bound:.0f} % | {speedup} | '
          f'{cpu_bound:.1f} / {cpu:.1f} | {100 * cpu_bound / cpu:.0f} % |')
  print('(The pipeline over the whole pass: hashing the files, its start, '
        'its first batches and reading the vectors back included. It '
        'decodes ahead of the module, so a rate over part of a pass can '
        'read above the ceiling.)')


def vectors(paths, runner, bottleneck_dir):
  """(float32 [n_ok, D], bool [n]) of `paths` through the cache."""
  store = bottleneck_cache.BottleneckStore(
      bottleneck_dir, bottlenecks_lib.cache_namespace(runner))
  done = bottlenecks_lib.compute_bottlenecks(
      paths, runner, store, BATCH,
      bottlenecks_lib.PassOptions(progress_interval=30))
  return done.vectors, done.ok


def _percent(correct, total):
  return f'{100 * correct / total:.1f} %'


def accuracy(image_dir, names, cache_dir, bottleneck_dir, folds, seed):
  """Prints the k-fold table of one dataset."""
  from accuracy import folds_of, train
  config = DEFAULTS.replace(image_dir=image_dir)
  layout = layouts.load_layout(config.data)
  paths = [image.path for image in layout.dataset.images]
  labels = np.array([image.label for image in layout.dataset.images])
  classes = len(layout.dataset.labels)
  per = {}
  ok = np.ones(len(paths), bool)
  for name in names:
    fl, q = load_pair(name, cache_dir)
    for precision, runner in (('float32', fl), ('int8', q)):
      x, good = vectors(paths, runner, bottleneck_dir)
      full = np.zeros((len(paths), x.shape[1]), np.float32)
      full[good] = x
      per[name, precision] = full
      ok &= good
  y = labels[ok]
  plans = folds_of(y, None, folds, seed)
  print(f'\nAccuracy, {image_dir}: {int(ok.sum())} photos, {classes} '
        f'classes, {folds}-fold (each photo tested once)')
  print('| module | float32 head on float32 | int8 head on int8 | float32 '
        'head on int8 | int8 head on float32 | cosine median / 5th pct |')
  print('|---|---|---|---|---|---|')
  for config_name in [*names, 'ensemble']:
    members = names if config_name == 'ensemble' else [config_name]
    x = {p: np.concatenate([per[m, p][ok] for m in members], axis=1)
         for p in ('float32', 'int8')}
    cos = int8.cosines(x['float32'], x['int8'])
    correct = {case: 0 for case in ('ff', 'qq', 'fq', 'qf')}
    for train_rows, val_rows, test_rows in plans:
      heads = {p: train('lbfgs', x[p], y, classes, train_rows, val_rows, seed)
               for p in ('float32', 'int8')}
      for case, (h, v) in {'ff': ('float32', 'float32'),
                           'qq': ('int8', 'int8'), 'fq': ('float32', 'int8'),
                           'qf': ('int8', 'float32')}.items():
        pred = heads[h].logits(x[v][test_rows]).argmax(axis=1)
        correct[case] += int(np.sum(pred == y[test_rows]))
    total = len(y)
    print(f'| {config_name} | ' + ' | '.join(
        _percent(correct[c], total) for c in ('ff', 'qq', 'fq', 'qf')) +
        f' | {np.median(cos):.3f} / {np.percentile(cos, 5):.3f} |',
        flush=True)


def _run(image_dir, work, precision, cold):
  from pipeline_bench import retrain_run
  return retrain_run(image_dir, DEFAULTS.module.tfhub_module,
                     os.path.join(work, precision), cold,
                     ('--bottleneck_precision', precision))


def cold_warm(image_dir, work):
  """Prints cold and warm runs of `python -m retrain`, float32 and auto."""
  results = {}
  for cold in (True, False):
    for precision in ('float32', 'auto'):
      results[precision, cold] = _run(image_dir, work, precision, cold)
  print(f'\nEnd to end, {image_dir} (default flags but the precision)')
  print('| precision | chosen | run | wall s | phases s | peak MiB | test '
        'accuracy |')
  print('|---|---|---|---|---|---|---|')
  for (precision, cold), (wall, rss, summary) in results.items():
    timings = summary.get('timings_seconds') or {}
    phases = ', '.join(f'{k} {v:.1f}' for k, v in timings.items())
    acc = summary.get('test_accuracy')
    print(f'| {precision} | {summary.get("bottleneck_precision")} | '
          f'{"cold" if cold else "warm"} | {wall:.1f} | '
          f'{phases} | {rss:.0f} | '
          f'{"" if acc is None else f"{100 * acc:.1f} %"} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--speed_dir', default=None)
  parser.add_argument('--speed_images', type=int, default=200)
  parser.add_argument('--accuracy_dirs', default='')
  parser.add_argument('--cold_warm_dir', default=None)
  parser.add_argument('--work_dir', default='/tmp/bench_int8')
  parser.add_argument('--bottleneck_dir', default='/tmp/bench_int8/bn')
  parser.add_argument('--module_cache_dir',
                      default=os.environ.get('RETRAIN_MODULE_CACHE'))
  parser.add_argument('--modules', default=DEFAULTS.module.tfhub_module)
  parser.add_argument('--folds', type=int, default=5)
  parser.add_argument('--seconds', type=float, default=SECONDS,
                      help='per measurement of a module alone')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  names = ensemble_lib.member_handles(args.modules)
  if args.speed_dir:
    layout = layouts.load_layout(DEFAULTS.replace(image_dir=args.speed_dir).data)
    paths = [i.path for i in layout.dataset.images][:args.speed_images]
    speed(paths, names, args.module_cache_dir, args.seconds)
  for image_dir in filter(None, args.accuracy_dirs.split(',')):
    accuracy(image_dir, names, args.module_cache_dir, args.bottleneck_dir,
             args.folds, args.seed)
  if args.cold_warm_dir:
    cold_warm(args.cold_warm_dir, args.work_dir)


if __name__ == '__main__':
  main()
