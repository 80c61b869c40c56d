"""Benchmark: how close the pipeline runs to what these cores can do.

Prints one table for an image folder and a module:
  1. the limit: the module's forward pass alone on pre-decoded tensors, at
     the best of several batch sizes (images/s);
  2. the pipeline's bottleneck throughput (decode + resize + module + cache
     writes) and its ratio to (1);
  3. cold (empty bottleneck cache) and warm end-to-end wall time of
     `python -m retrain` with default flags, split into phases;
  4. training steps per second;
  5. peak resident memory of the run;
  6. float32 against int8 bottlenecks, per member of the module (or
     ensemble) and for the ensemble: images/s of the pipeline, its ceiling
     (module alone and decoding alone sharing the cores) and the % of it,
     over the whole pass (bench/int8.py's table;
     --int8_images 0 skips it; --bottlenecks_only stops after it, without
     the runs of 3-5);
  7. optionally, the same runs of a retrain.py copy (--retrain_py) and ratios;
     retrain.py needs a Python with hub.Module (--retrain_py_python) and a
     TF1 Hub module (--retrain_py_module, from make_tf1_hub_module.py); see
     docs/performance.md.

Usage (from the repository root):
  python bench/pipeline_bench.py --image_dir ../shared/datasets/flowers_sample

The bundled module must be converted once before (any run does it); that
one-off conversion is not part of the cold time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def module_limit(module, batch_sizes, seconds=8.0):
  """Best images/s of module.call on a fixed random batch, and its batch.

  With `module.parallel_calls` > 1 (TFLite: one 1-thread interpreter per
  core) that many threads call the module back to back, each without
  waiting for the others, as the pipeline keeps them busy.
  """
  import threading

  import numpy as np
  import tensorflow as tf
  best = (0.0, None)
  h, w = module.input_size
  width = max(1, module.parallel_calls)
  for batch in batch_sizes:
    x = tf.constant(np.random.default_rng(0).random((batch, h, w, 3)),
                    tf.float32)
    module.call(x)  # warm-up (tracing, allocation)
    module.call(x)
    done = [0] * width
    started = time.perf_counter()
    stop = started + seconds

    def work(k, x=x, batch=batch, stop=stop, done=done):
      while time.perf_counter() < stop:
        module.call(x).numpy()
        done[k] += batch

    threads = [threading.Thread(target=work, args=(k,)) for k in range(width)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    rate = sum(done) / (time.perf_counter() - started)
    print(f'  module alone, batch {batch:3d}: {rate:7.1f} images/s',
          flush=True)
    if rate > best[0]:
      best = (rate, batch)
  return best


def pipeline_throughput(module, image_dir, batch_size):
  """images/s of compute_bottlenecks over every image into an empty cache."""
  import bottleneck_cache
  from retrain.bottlenecks import compute as bottlenecks
  from retrain.data import discover
  paths = [i.path for i in discover.discover_images(image_dir).images]
  with tempfile.TemporaryDirectory() as cache:
    store = bottleneck_cache.BottleneckStore(cache,
                                             bottlenecks.cache_namespace(module))
    started = time.perf_counter()
    result = bottlenecks.compute_bottlenecks(
        paths, module, store, batch_size,
        bottlenecks.PassOptions(progress_interval=1e9))
    elapsed = time.perf_counter() - started
  return result.stats.computed / elapsed, len(paths), elapsed


# Runs a command and prints its peak RSS (KiB). Linux keeps ru_maxrss across
# exec, so a child forked straight from this process (which holds
# TensorFlow and a module) would report this process's size; forking from
# a small launcher gives the command's own peak.
_LAUNCHER = ('import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); '
             '_, s, r = os.wait4(p.pid, 0); print(r.ru_maxrss, file=sys.stderr);'
             ' sys.exit(os.waitstatus_to_exitcode(s))')


def run_cli(args, cwd=ROOT):
  """Runs a command; returns (wall seconds, peak RSS MiB, stderr)."""
  started = time.perf_counter()
  proc = subprocess.run([sys.executable, '-c', _LAUNCHER, *args], cwd=cwd,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True, check=False)
  wall = time.perf_counter() - started
  if proc.returncode != 0:
    raise SystemExit(f'{" ".join(args)} failed:\n{proc.stderr[-3000:]}')
  peak_kib = int(proc.stderr.strip().splitlines()[-1])
  return wall, peak_kib / 1024.0, proc.stderr


def retrain_py_phases(log):
  """retrain.py's bottleneck and training seconds, from its log's times.

  Bottlenecks: from the first "Creating bottleneck" line (or the module
  load, when all are cached) to the first training step; training: from
  there to the final test accuracy. '' when the log does not show them.
  """
  stamps = {}
  created = 0
  # TF1 logs every line twice, once as "INFO:tensorflow:..." and once in
  # absl's format "I1123 02:18:03.058477 ..."; only the latter has times.
  for line in log.splitlines():
    match = re.match(r'I\d{4} (\d+):(\d+):(\d+\.\d+)', line)
    if not match:
      continue
    created += 'Creating bottleneck at' in line
    h, m, sec = match.groups()
    t = int(h) * 3600 + int(m) * 60 + float(sec)
    for key, marker in (('first', ''), ('created', 'Creating bottleneck'),
                        ('step0', 'Step 0:'), ('final', 'Final test accuracy')):
      if marker in line and key not in stamps:
        stamps[key] = t
  if not {'first', 'step0', 'final'} <= set(stamps):
    return ''
  start = stamps.get('created', stamps['first'])
  bottlenecks = stamps['step0'] - start
  rate = f' ({created / bottlenecks:.1f} images/s)' if created else ''
  return (f'bottlenecks {bottlenecks:.1f} s{rate}, training '
          f'{stamps["final"] - stamps["step0"]:.1f} s')


def retrain_run(image_dir, module, work, cold, extra_args=()):
  if cold:
    shutil.rmtree(os.path.join(work, 'bottlenecks'), ignore_errors=True)
  args = [sys.executable, '-m', 'retrain', '--image_dir', image_dir,
          '--tfhub_module', module, *extra_args,
          '--bottleneck_dir', os.path.join(work, 'bottlenecks'),
          '--summaries_dir', os.path.join(work, 'logs'),
          '--saved_model_dir', os.path.join(work, 'saved_model'),
          '--output_labels', os.path.join(work, 'labels.txt'),
          '--report_dir', os.path.join(work, 'report')]
  wall, rss, _ = run_cli(args)
  # Keep no pile of earlier exports and logs from the benchmark itself.
  for name in os.listdir(work):
    if '.previous-' in name:
      shutil.rmtree(os.path.join(work, name), ignore_errors=True)
  with open(os.path.join(work, 'report', 'run_summary.json')) as f:
    summary = json.load(f)
  return wall, rss, summary


def precision_table(module_name, image_dir, count):
  """Prints bench/int8.py's float32 against int8 table (per member and for
  the ensemble: pipeline images/s, ceiling, % of it) on the first `count`
  photos of `image_dir`."""
  import int8 as int8_bench

  from retrain.data import discover
  from retrain.features import ensemble as ensemble_lib
  paths = [i.path for i in discover.discover_images(image_dir).images]
  print(f'Float32 against int8 bottlenecks ({min(count, len(paths))} '
        'photos):', flush=True)
  int8_bench.speed(paths[:count], ensemble_lib.member_handles(module_name),
                   os.environ.get('RETRAIN_MODULE_CACHE'),
                   int8_bench.SECONDS)


def single_module_rows(module, args, rows):
  """Rows 1-2 for one module: its limit on TF and TFLite and the bottleneck
  pipeline's rate against it; returns the image count."""
  from retrain.config import DEFAULTS
  from retrain.features import tflite_runtime
  batches = [int(b) for b in args.batch_sizes.split(',')]
  print('TensorFlow runtime:', flush=True)
  tf_limit, tf_batch = module_limit(module, batches)
  tflite_limit, tflite_batch = 0.0, None
  lite = tflite_runtime.with_runtime(module, 'tflite')
  if lite is not module:
    print(f'TFLite runtime (XNNPACK, {lite.parallel_calls} 1-thread '
          'interpreters):', flush=True)
    tflite_limit, tflite_batch = max(
        (module_limit(tflite_runtime.with_runtime(module, 'tflite',
                                                  invoke_batch=b), [b])
         for b in batches), key=lambda r: r[0])
  limit = max(tf_limit, tflite_limit)
  best = ('TFLite' if tflite_limit > tf_limit else 'TF',
          tflite_batch if tflite_limit > tf_limit else tf_batch)
  runner = tflite_runtime.with_runtime(module, DEFAULTS.cache.bottleneck_runtime)
  runtime = 'TFLite' if runner is not module else 'TF'
  rates = []
  for _ in range(args.repeats):
    rate, count, _ = pipeline_throughput(runner, args.image_dir,
                                         DEFAULTS.cache.bottleneck_batch_size)
    print(f'  bottleneck pipeline: {rate:7.1f} images/s', flush=True)
    rates.append(rate)
  rate = statistics.median(rates)
  rows.extend([
      ('images', f'{count}'),
      ('1. module alone, TF (best batch %d)' % tf_batch,
       f'{tf_limit:.1f} images/s'),
      ('   module alone, TFLite (best batch %s)' % tflite_batch,
       f'{tflite_limit:.1f} images/s'),
      ('   limit (%s, batch %s)' % best, f'{limit:.1f} images/s'),
      ('2. bottleneck pipeline (%s, batch %d%s, median of %d)' % (
          runtime, DEFAULTS.cache.bottleneck_batch_size,
          f' invoked {tflite_runtime.INVOKE_BATCH} at a time'
          if runtime == 'TFLite' else '', len(rates)),
       f'{rate:.1f} images/s ({100 * rate / limit:.0f}% of the limit; '
       f'runs {min(rates):.0f}-{max(rates):.0f})'),
  ])
  return count


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_dir', required=True)
  parser.add_argument('--tfhub_module', default=None,
                      help='default: the project default module')
  parser.add_argument('--batch_sizes', default='1,2,4,8,16,32')
  parser.add_argument('--repeats', type=int, default=3,
                      help='pipeline runs; the table gives their median')
  parser.add_argument('--retrain_py', default=None,
                      help='path of a retrain.py copy to compare against; '
                      'it runs through bench/tf1_compat.py')
  parser.add_argument('--retrain_py_python', default=None,
                      help='the Python that runs retrain.py (one with '
                      'tensorflow <= 2.15 and tensorflow-hub <= 0.15); '
                      'default: this one')
  parser.add_argument('--retrain_py_module', default=None,
                      help="retrain.py's --tfhub_module: a TF1 Hub module "
                      '(bench/make_tf1_hub_module.py makes one of the bundled '
                      'module); default: --tfhub_module when it is a URL')
  parser.add_argument('--work_dir', default=None)
  parser.add_argument('--bottleneck_precision', default=None,
                      help="the runs' --bottleneck_precision; default: the "
                      "project's default")
  parser.add_argument('--int8_images', type=int, default=200,
                      help='photos of the float32 against int8 table (6.); '
                      '0 skips it')
  parser.add_argument('--bottlenecks_only', action='store_true',
                      help='only the module limits and the bottleneck '
                      'pipeline against them (1, 2 and 6): no cold and warm '
                      'runs')
  args = parser.parse_args()

  from retrain.config import DEFAULTS
  module_name = args.tfhub_module or DEFAULTS.module.tfhub_module
  work = args.work_dir or tempfile.mkdtemp(prefix='retrain_bench_')
  os.makedirs(work, exist_ok=True)

  print(f'Machine: {os.cpu_count()} cores; module {module_name}; images '
        f'{args.image_dir}', flush=True)
  from retrain.features import ensemble as ensemble_lib
  module = ensemble_lib.load(module_name)
  rows = []
  if len(ensemble_lib.members(module)) > 1:
    # An ensemble's limit and pipeline are the precision table's rows (per
    # member and for the ensemble, float32 and int8).
    from retrain.data import discover
    count = len(discover.discover_images(args.image_dir).images)
    rows.append(('images', f'{count}'))
    del module
  else:
    count = single_module_rows(module, args, rows)
  if args.int8_images:
    precision_table(module_name, args.image_dir, args.int8_images)
  if args.bottlenecks_only:
    print_rows(rows, work)
    return
  extra = (('--bottleneck_precision', args.bottleneck_precision)
           if args.bottleneck_precision else ())
  cold_wall, cold_rss, cold = retrain_run(args.image_dir, module_name, work,
                                          True, extra)
  warm_wall, warm_rss, warm = retrain_run(args.image_dir, module_name, work,
                                          False, extra)

  for label, wall, summary, rss in (('cold', cold_wall, cold, cold_rss),
                                    ('warm', warm_wall, warm, warm_rss)):
    t = summary['timings_seconds']
    rows.append((f'3. {label} end to end', f'{wall:.1f} s wall'))
    rows.append((f'   {label} phases', ', '.join(
        f'{k} {v:.1f}' for k, v in t.items() if k != 'total')
                 + f' (in-process total {t["total"]:.1f} s)'))
    rows.append((f'5. {label} peak RSS', f'{rss:.0f} MiB'))
  rows.append(('4. training (warm run)',
               f'{warm["timings_seconds"]["training"]:.1f} s'))
  rows.append(('   test accuracy (warm run)',
               f'{100 * warm["test_accuracy"]:.1f}% (N={warm["test_count"]})'))

  if args.retrain_py:
    rp_module = args.retrain_py_module or (
        args.tfhub_module if args.tfhub_module and '://' in args.tfhub_module
        else None)
    base = [args.retrain_py_python or sys.executable,
            os.path.join(ROOT, 'bench', 'tf1_compat.py'), args.retrain_py,
            '--image_dir', args.image_dir,
            '--bottleneck_dir', os.path.join(work, 'rp_bottlenecks'),
            '--summaries_dir', os.path.join(work, 'rp_logs'),
            '--output_graph', os.path.join(work, 'rp_graph.pb'),
            '--output_labels', os.path.join(work, 'rp_labels.txt')]
    if rp_module:
      base += ['--tfhub_module', rp_module]
    shutil.rmtree(os.path.join(work, 'rp_bottlenecks'), ignore_errors=True)
    rp_cold, rp_cold_rss, rp_cold_log = run_cli(base)
    rp_warm, rp_warm_rss, rp_warm_log = run_cli(base)
    for label, log in (('cold', rp_cold_log), ('warm', rp_warm_log)):
      with open(os.path.join(work, f'retrain_py_{label}.log'), 'w') as f:
        f.write(log)
    rows.append(('7. retrain.py cold / warm', f'{rp_cold:.1f} s / '
                 f'{rp_warm:.1f} s; this project is {rp_cold / cold_wall:.1f}x'
                 f' / {rp_warm / warm_wall:.1f}x faster'))
    for label, log in (('cold', rp_cold_log), ('warm', rp_warm_log)):
      phases = retrain_py_phases(log)
      if phases:
        rows.append((f'   retrain.py {label} phases', phases))
    rows.append(('   retrain.py peak RSS cold / warm',
                 f'{rp_cold_rss:.0f} / {rp_warm_rss:.0f} MiB'))
    accuracy = re.findall(r'Final test accuracy = ([0-9.]+%) \(N=(\d+)\)',
                          rp_warm_log)
    if accuracy:
      rows.append(('   retrain.py test accuracy (warm run)',
                   f'{accuracy[-1][0]} (N={accuracy[-1][1]})'))

  print_rows(rows, work)


def print_rows(rows, work):
  """The table of (name, value) rows."""
  width = max(len(r[0]) for r in rows)
  print()
  for name, value in rows:
    print(f'{name:<{width}}  {value}')
  print(f'\n(work files in {work})')


if __name__ == '__main__':
  main()
