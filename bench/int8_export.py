"""What the exports of an int8 run compute, on the bundled ensemble.

  python bench/int8_export.py --agreement_dir ../shared/datasets/flowers_sample [--count 100]
  python bench/int8_export.py --accuracy_dirs \
      ../shared/datasets/flowers_sample,../shared/datasets/sign_language_digits/Dataset \
      [--bottleneck_dir DIR] [--folds 5]

1. Agreement (--agreement_dir): per member of the default ensemble, the
   vectors of --count photos (the first by path, decoded as the pipeline
   decodes them, at the member's size) from the translated graph the
   exports hold (retrain/export/int8_graph.py) against the int8 TFLite
   interpreter that made the cached vectors: the max and median absolute
   difference, also in quantisation steps of the output, the fraction of
   elements that differ, and the lowest cosine.
2. Accuracy (--accuracy_dirs): per data set, the precision the default
   (`auto`) run chooses for each member (the speed record and the guard on
   the probe photos, as prepare runs it), then a stratified k-fold
   (each photo tested once; each fold's training part split 8:1 into
   training and validation, as bench/accuracy.py) of the default head
   solver on the features the default run's exports compute (each member
   at its chosen precision; the translated graph gives the int8
   interpreter's vectors, see 1) against the float32 ensemble's.
3. Writing (--saved_model_dir DIR, a new folder): the SavedModel of the
   default ensemble with all three members int8 (their translated graphs)
   and a random 5-class head, as an int8 run's export writes it: the
   translation's and the write's wall and process CPU seconds and what
   each adds to the process's peak resident size (VmHWM).

  python bench/int8_export.py --saved_model_dir /tmp/int8_saved_model
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
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from retrain import images as images_lib  # noqa: E402
from retrain.bottlenecks import compute as bottlenecks_lib  # noqa: E402
from retrain.bottlenecks import ensemble as ensemble_bottlenecks  # noqa: E402
from retrain.bottlenecks import precision as precision_lib  # noqa: E402
from retrain.common import phases  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.data import sources as layouts  # noqa: E402
from retrain.export import int8_graph  # noqa: E402
from retrain.features import ensemble as ensemble_lib  # noqa: E402
from retrain.features import int8, tflite_runtime  # noqa: E402

BATCH = DEFAULTS.cache.bottleneck_batch_size


def _photos(image_dir):
  """(paths, int labels [n], class count) of a data set, as a run finds
  them."""
  layout = layouts.load_layout(DEFAULTS.replace(image_dir=image_dir).data)
  paths = [image.path for image in layout.dataset.images]
  labels = np.array([image.label for image in layout.dataset.images])
  return paths, labels, len(layout.dataset.labels)


def agreement(image_dir, count, cache_dir):
  """Prints the table of part 1."""
  paths = sorted(_photos(image_dir)[0])[:count]
  module = ensemble_lib.load(DEFAULTS.module.tfhub_module, None, cache_dir)
  print(f'\nTranslated graph against the int8 interpreter, {len(paths)} '
        f'photos of {image_dir}')
  print('| member | max abs diff | median abs diff | max steps | elements '
        'differing | lowest cosine |')
  print('|---|---|---|---|---|---|')
  for member in ensemble_lib.members(module):
    quantized = int8.load(member, cache_dir)
    path = int8.int8_file(member, cache_dir)
    graph = int8_graph.Int8Graph(path, tuple(member.input_size))
    ops = graph._ops.value  # noqa: SLF001 the bench reads the model's last op
    step = float(graph.quant(ops[-1][1].inputs[0]).scale[0])
    got, want = [], []
    for start in range(0, len(paths), BATCH):
      batch = np.stack([images_lib.load_image(p, member.input_size).numpy()
                        for p in paths[start:start + BATCH]])
      got.append(graph(batch).numpy())
      want.append(np.asarray(quantized.call(batch)))
    got, want = np.concatenate(got), np.concatenate(want)
    diff = np.abs(got.astype(np.float64) - want)
    print(f'| {member.handle} | {diff.max():.6f} | {np.median(diff):.6f} | '
          f'{diff.max() / step:.1f} | {100 * np.mean(diff > 0):.3f} % | '
          f'{np.min(int8.cosines(got, want)):.6f} |', flush=True)


def _vectors(paths, module, keyed, bottleneck_dir, cache_dir):
  """float32 [n, D] (zeros where unusable) and bool [n] ok, through the
  cache, each member at its own precision."""
  runner = tflite_runtime.deferred(module, 'auto', cache_dir)
  done = ensemble_bottlenecks.compute_bottlenecks(
      paths, module, runner, bottleneck_dir, 'auto', BATCH, cache_dir,
      keyed=keyed, options=bottlenecks_lib.PassOptions(progress_interval=60))
  full = np.zeros((len(paths), done.vectors.shape[1]), np.float32)
  full[done.ok] = done.vectors
  return full, done.ok


def accuracy(image_dir, bottleneck_dir, cache_dir, folds, seed):
  """Prints one row of part 2's table."""
  from accuracy import folds_of, train
  paths, labels, classes = _photos(image_dir)
  module = ensemble_lib.load(DEFAULTS.module.tfhub_module, None, cache_dir)
  keyed = bottlenecks_lib.content_keys(paths, bottleneck_dir, None)
  probe = precision_lib.Probe(paths, keyed, bottleneck_dir, BATCH,
                              DEFAULTS.data.max_image_pixels)
  chosen = precision_lib.choose(module, 'auto', 'auto', cache_dir, probe)
  x = {}
  ok = np.ones(len(paths), bool)
  for name, m in (('float32', module), ('auto', chosen)):
    x[name], good = _vectors(paths, m, keyed, bottleneck_dir, cache_dir)
    ok &= good
  y = labels[ok]
  correct = {name: 0 for name in x}
  for train_rows, val_rows, test_rows in folds_of(y, None, folds, seed):
    for name in x:
      head = train('lbfgs', x[name][ok], y, classes, train_rows, val_rows,
                   seed)
      predicted = head.logits(x[name][ok][test_rows]).argmax(axis=1)
      correct[name] += int(np.sum(predicted == y[test_rows]))
  cells = [image_dir, str(int(ok.sum())), precision_lib.describe(chosen),
           *(f'{100 * correct[name] / len(y):.1f} %'
             for name in ('float32', 'auto'))]
  print('| ' + ' | '.join(cells) + ' |', flush=True)


def writing(saved_model_dir, cache_dir):
  """Prints part 3."""
  from retrain.export import saved_model as export_lib
  from retrain.head.model import Head
  module = ensemble_lib.load(DEFAULTS.module.tfhub_module, None, cache_dir)
  quantized = dataclasses.replace(module, members=tuple(
      dataclasses.replace(m, quantization=int8.QUANTIZATION)
      for m in ensemble_lib.members(module)))
  rng = np.random.default_rng(0)
  head = Head(rng.normal(0, 0.05, (module.output_dim, 5)).astype(np.float32),
              np.zeros(5, np.float32))
  print('\n| step | wall s | CPU s | peak resident size added, MiB |')
  print('|---|---|---|---|')
  figures = [time.time(), time.process_time(), phases.peak_rss_mib()]

  def row(step):
    now = [time.time(), time.process_time(), phases.peak_rss_mib()]
    print(f'| {step} | {now[0] - figures[0]:.2f} | {now[1] - figures[1]:.2f} '
          f'| {now[2] - figures[2]} |', flush=True)
    figures[:] = now
  exported, _ = int8_graph.export_module(quantized, module, cache_dir)
  row('translation (int8_graph.export_module)')
  export_lib.export_saved_model(saved_model_dir, exported, head,
                                list('abcde'), 'final_result')
  row('SavedModel write (export_saved_model)')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--agreement_dir')
  parser.add_argument('--count', type=int, default=100)
  parser.add_argument('--accuracy_dirs', default='')
  parser.add_argument('--bottleneck_dir',
                      default=DEFAULTS.cache.bottleneck_dir)
  parser.add_argument('--module_cache_dir', default=None)
  parser.add_argument('--folds', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--saved_model_dir')
  args = parser.parse_args()
  if args.saved_model_dir:
    writing(args.saved_model_dir, args.module_cache_dir)
  if args.agreement_dir:
    agreement(args.agreement_dir, args.count, args.module_cache_dir)
  dirs = [d for d in args.accuracy_dirs.split(',') if d]
  if dirs:
    print(f'\nHeld-out accuracy, {args.folds}-fold (each photo tested once), '
          'default head solver')
    print('| data set | photos | auto chose (lite0, lite1, lite2) | float32 '
          'ensemble | default (auto) exports |')
    print('|---|---|---|---|---|')
  for image_dir in dirs:
    accuracy(image_dir, args.bottleneck_dir, args.module_cache_dir,
             args.folds, args.seed)


if __name__ == '__main__':
  main()
