"""The Beam job on the in-process runner against the in-process pipeline.

  python bench/make_scaled_copy.py ../shared/datasets/flowers_sample /tmp/flowers_x8 --copies 8
  python bench/beam_bench.py --image_dir /tmp/flowers_x8 [--workers 1,2]
      [--tfhub_module efficientnet_lite0] [--work_dir /tmp/retrain_beam_bench]

Cold caches every time (a fresh --bottleneck_dir per measurement). Prints
images/s of: the in-process bottleneck step (retrain.bottlenecks.compute,
hashing included) with the TensorFlow runtime (the runtime the Beam handler
uses) and with retrain's default (auto: TFLite when it converts); the Beam
job (python -m retrain.beam's library call, launcher and module loading
included) with each --direct_num_workers (1: in_memory, more:
multi_processing); each Beam figure's ratio to the in-process TF one; and
the largest difference between the Beam vectors and the in-process TF ones.
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

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

import bottleneck_cache  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402


def in_process(config, runtime: str):
  """(seconds, digests, vectors) of the bottleneck step, cold cache."""
  from retrain.bottlenecks import compute
  from retrain.data import sources
  from retrain.features import modules, tflite_runtime
  layout = sources.load_layout(config.data)
  paths = [image.path for image in layout.dataset.images]
  module = modules.load_module(config.module.tfhub_module, config.module.image_size,
                               config.module.module_cache_dir)
  runner = tflite_runtime.deferred(module, runtime, config.module.module_cache_dir)
  store = bottleneck_cache.BottleneckStore(config.cache.bottleneck_dir,
                                           compute.cache_namespace(module))
  started = time.monotonic()
  done = compute.compute_bottlenecks(paths, runner, store,
                                     config.cache.bottleneck_batch_size)
  seconds = time.monotonic() - started
  digests = [d for d, ok in zip(done.digests, done.ok, strict=True) if ok]
  return seconds, digests, done.vectors, module


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_dir', required=True)
  parser.add_argument('--tfhub_module', default=DEFAULTS.module.tfhub_module)
  parser.add_argument('--workers', default='1,2')
  parser.add_argument('--work_dir', type=pathlib.Path,
                      default=pathlib.Path('/tmp/retrain_beam_bench'))
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  from retrain.beam import job
  from retrain.beam.options import BEAM_DEFAULTS
  from retrain.bottlenecks import compute

  def config(name):
    folder = args.work_dir / name
    shutil.rmtree(folder, ignore_errors=True)
    return DEFAULTS.replace(image_dir=args.image_dir, tfhub_module=args.tfhub_module,
        bottleneck_dir=str(folder / 'bn'), report_dir=str(folder / 'report'))

  rows = []
  seconds, digests, reference, module = in_process(config('tf'), 'tf')
  n = len(digests)
  rows.append(('in-process, TF runtime', seconds, None))
  auto_seconds, _, _, _ = in_process(config('auto'), 'auto')
  rows.append(('in-process, auto runtime (default)', auto_seconds, None))
  for workers in [int(w) for w in args.workers.split(',')]:
    beam_config = config(f'beam{workers}')
    mode = 'in_memory' if workers == 1 else 'multi_processing'
    result = job.run(beam_config, BEAM_DEFAULTS, [
        '--runner', 'DirectRunner', '--direct_num_workers', str(workers),
        '--direct_running_mode', mode])
    store = bottleneck_cache.BottleneckStore(beam_config.cache.bottleneck_dir,
                                             compute.cache_namespace(module))
    diff = float(np.max(np.abs(store.get(digests) - reference)))
    rows.append((f'Beam DirectRunner, {workers} worker(s) ({mode})',
                 result.seconds, diff))

  print(f'\n{n} images, module {args.tfhub_module}, cold cache, '
        f'{os.cpu_count()} CPUs')
  print('| pipeline | seconds | images/s | vs in-process TF | max |vector '
        'diff| vs in-process TF |')
  print('|---|---|---|---|---|')
  for name, secs, diff in rows:
    print(f'| {name} | {secs:.1f} | {n / secs:.1f} | {seconds / secs:.2f} | '
          f'{"" if diff is None else f"{diff:.1e}"} |')


if __name__ == '__main__':
  main()
