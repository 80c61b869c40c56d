"""Fine-tuning from cached activations against full fine-tuning.

  python bench/fine_tune.py DIR [--boundaries 11,13,15] [--epochs 6]
      [--default]

For each boundary (block of the bundled EfficientNet-Lite0 where the cut
is), in its own process so that peak memory is its own: a cold run of the
whole pipeline with --fine_tune (the activations computed), then a warm
re-run (activations read from the cache, training again from the head
under a fresh checkpoint). Then one epoch of full fine-tuning through the
whole network (the Lite0 SavedModel loaded as a plain TF-Hub module, so
hub.KerasLayer(trainable=True) on decoded images), for the ratio; with
--full_batches N it is timed on N batches and scaled to the epoch.

Both use a flipped copy of each training image (--flip_left_right,
--distorted_copies 1), the default fine-tuning settings otherwise. With
--default, a row of the plain `--fine_tune` (every setting its default:
the default ensemble, its first member's top trained) comes first. Prints
wall time per phase, peak RSS, and validation/test accuracy before and
after fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(args, work, boundary, run_name, module='efficientnet_lite0',
            epochs=None):

  from retrain.config import DEFAULTS
  out = os.path.join(work, run_name)
  return DEFAULTS.replace(image_dir=args.dir, tfhub_module=module,
      bottleneck_dir=os.path.join(work, 'cache'),
      summaries_dir=os.path.join(out, 'logs'),
      output_labels=os.path.join(out, 'labels.txt'),
      saved_model_dir=os.path.join(out, 'saved_model'),
      report_dir=os.path.join(out, 'report'), output_graph='',
      projector_max_images=0, checkpoint_path=os.path.join(out, 'ckpt'),
      flip_left_right=True, distorted_copies=1, fine_tune=True,
      fine_tune_from=boundary,
      fine_tune_epochs=epochs or args.epochs,
      module_cache_dir=os.environ.get('RETRAIN_MODULE_CACHE'))


def _run(config):
  """pipeline.run, returning (result, the FineTuned it produced)."""
  from retrain import pipeline
  result = pipeline.run(config)
  return result, result.fine_tuned


def _default_config(args, work, run_name):
  """The plain --fine_tune: every other setting its default."""

  from retrain.config import DEFAULTS
  return _config(args, work, DEFAULTS.finetune.fine_tune_from, run_name,
              module=DEFAULTS.module.tfhub_module, epochs=DEFAULTS.finetune.fine_tune_epochs).replace(
      flip_left_right=False, distorted_copies=DEFAULTS.distort.distorted_copies)


def one_boundary(args, work, boundary) -> dict:
  """Cold and warm runs from `boundary` (a block of Lite0, or 'default')."""
  from retrain.common import phases
  row = {'boundary': boundary}
  for run_name in ('cold',) if args.skip_warm else ('cold', 'warm'):
    result, tuned = _run(
        _default_config(args, work, f'default-{run_name}')
        if boundary == 'default' else
        _config(args, work, boundary, f'b{boundary}-{run_name}'))
    history = tuned.fit.history
    trained = [p for p in history if p.epoch]
    row[run_name] = {
        'total_s': result.timings['total'],
        'fine_tune_s': sum(tuned.timings.values()),
        'activations_s': tuned.timings.get('activations'),
        'train_s_per_epoch': (sum(p.seconds for p in trained) /
                              max(1, len(trained))),
        'epochs_run': len(trained),
        'best_epoch': tuned.fit.best_epoch,
        'val_before': history[0].validation_accuracy,
        'val_after': tuned.fit.best_validation_accuracy,
        'test_before': tuned.test_before,
        'test_after': tuned.test_after,
    }
  what = tuned.metadata['fine_tuned']
  row['activation_shape'] = ' + '.join(
      'x'.join(map(str, m.get('activation_shape', ['vectors'])))
      for m in what.get('members', [what]))
  row['peak_rss_mib'] = phases.peak_rss_mib()
  return row


def full_fine_tuning(args, work) -> dict:
  """One epoch through hub.KerasLayer(trainable=True) on the Lite0 SavedModel
  (timed on --full_batches batches when given)."""
  from retrain.common import phases
  from retrain.features import presets
  from retrain.finetune import hub_full
  module_dir = presets.resolve_module('efficientnet_lite0',
                                      os.environ.get('RETRAIN_MODULE_CACHE'))
  if args.full_batches:
    real = hub_full.image_batches

    def limited(*a, **k):
      for i, batch in enumerate(real(*a, **k)):
        if i >= args.full_batches:
          return
        yield batch

    hub_full.image_batches = limited
  started = time.monotonic()
  result, tuned = _run(_config(args, work, -1, 'full', module=module_dir,
                               epochs=1))
  point = [p for p in tuned.fit.history if p.epoch][0]
  counts = result.counts
  train_images = counts['train']
  batches = -(-train_images // 32)
  measured = min(batches, args.full_batches or batches)
  return {
      'train_s_measured': point.seconds,
      'batches_measured': measured,
      'train_s_per_epoch': point.seconds * batches / measured,
      'total_s': time.monotonic() - started,
      'peak_rss_mib': phases.peak_rss_mib(),
      'test_before': tuned.test_before,
      'test_after': tuned.test_after if not args.full_batches else None,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('dir')
  parser.add_argument('--boundaries', default='11,13,15')
  parser.add_argument('--epochs', type=int, default=6)
  parser.add_argument('--full_batches', type=int, default=0,
                      help='time full fine-tuning on this many batches and '
                      'scale to one epoch (0: the whole epoch)')
  parser.add_argument('--work', default='')
  parser.add_argument('--one', default='', help=argparse.SUPPRESS)
  parser.add_argument('--skip_full', action='store_true')
  parser.add_argument('--default', action='store_true',
                      help='first a row of the plain --fine_tune (the '
                      'default ensemble, default settings, no flips)')
  parser.add_argument('--skip_warm', action='store_true',
                      help='no warm re-run (halves the time)')
  args = parser.parse_args()
  from absl import logging
  logging.set_verbosity('warning')
  work = args.work or tempfile.mkdtemp(prefix='bench_fine_tune_')
  if args.one:
    out = (full_fine_tuning(args, work) if args.one == 'full' else
           one_boundary(args, work, args.one if args.one == 'default'
                        else int(args.one)))
    sys.stdout.write('RESULT ' + json.dumps(out) + '\n')
    return

  rows = []
  jobs = (['default'] if args.default else []) + list(
      filter(None, args.boundaries.split(','))) + ([] if args.skip_full
                                                    else ['full'])
  for job in jobs:
    cmd = [sys.executable, __file__, args.dir, '--one', job, '--work', work,
           '--epochs', str(args.epochs), '--full_batches',
           str(args.full_batches)] + (['--skip_warm'] if args.skip_warm
                                      else [])
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    lines = [x for x in done.stdout.splitlines() if x.startswith('RESULT ')]
    if not lines:
      sys.stderr.write(done.stderr[-3000:])
      raise SystemExit(f'{job} failed')
    rows.append((job, json.loads(lines[0][len('RESULT '):])))
    sys.stdout.write(f'{job}: {lines[0][len("RESULT "):]}\n')
    sys.stdout.flush()

  print(f'\n{args.dir} (work dir {work}), {args.epochs} epochs max:')
  print('| boundary | activations | act. s (cold) | train s/epoch | epochs '
        '| cold total s | warm total s | peak RSS MiB | val before -> after '
        '| test before -> after |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  full = None
  for job, r in rows:
    if job == 'full':
      full = r
      continue
    c, w = r['cold'], r.get('warm', {'total_s': float('nan')})
    print(f'| {job} | {r["activation_shape"]} '
          f'| {c["activations_s"]:.1f} | {c["train_s_per_epoch"]:.1f} '
          f'| {c["epochs_run"]} (best {c["best_epoch"]}) '
          f'| {c["total_s"]:.0f} | {w["total_s"]:.0f} '
          f'| {r["peak_rss_mib"]:.0f} '
          f'| {100 * c["val_before"]:.1f} -> {100 * c["val_after"]:.1f} '
          f'| {100 * c["test_before"]:.1f} -> {100 * c["test_after"]:.1f} |')
  if full is not None:
    print(f'| full (hub.KerasLayer) | images | - '
          f'| {full["train_s_per_epoch"]:.1f} (from '
          f'{full["batches_measured"]} batches) | 1 | {full["total_s"]:.0f} '
          f'| - | {full["peak_rss_mib"]:.0f} | - | - |')
    for job, r in rows:
      if job not in ('full', 'default'):
        print(f'Train time per epoch, full / from block {job}: '
              f'{full["train_s_per_epoch"] / r["cold"]["train_s_per_epoch"]:.1f}x')


if __name__ == '__main__':
  main()
