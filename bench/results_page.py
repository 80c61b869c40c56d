"""What the results page (report.html, with its heat maps) adds to a run.

Runs the default pipeline on one folder, with a warm bottleneck cache,
without the page and with it, side by side (alternating, `--repeats`
pairs), and prints each run's wall time, the page's own phase (the heat
maps are drawn during the export, so the phase is only what is left) and
the ratio:

  python bench/make_scaled_copy.py ../shared/datasets/flowers_sample /tmp/fl4000 --copies 8
  python bench/results_page.py --image_dir /tmp/fl4000 --bottleneck_dir /tmp/bn --out /tmp/bench_page

The first run warms the cache (not counted). The exports are the default
run's (SavedModel and frozen graph), under --out.
"""

from __future__ import annotations

import argparse
import os
import time


def _run(config, with_page: bool):
  from retrain import pipeline
  from retrain.steps import outputs
  originals = outputs.start_results_page, outputs.results_page
  if not with_page:
    outputs.start_results_page = lambda *args, **kwargs: None
    outputs.results_page = lambda *args, **kwargs: None
  try:
    started = time.monotonic()
    result = pipeline.run(config)
    return time.monotonic() - started, result
  finally:
    outputs.start_results_page, outputs.results_page = originals


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_dir', required=True)
  parser.add_argument('--bottleneck_dir', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--repeats', type=int, default=1)
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from absl import logging
  # The run's INFO lines on stderr: among them 'Results page: 12 heat maps
  # (Grad-CAM) in X s', the time of the thread that overlaps the export.
  logging.set_verbosity(logging.INFO)
  from retrain.config import DEFAULTS

  def config(name):
    out = os.path.join(args.out, name)
    return DEFAULTS.replace(image_dir=args.image_dir,
        bottleneck_dir=args.bottleneck_dir,
        module_cache_dir=os.environ.get('RETRAIN_MODULE_CACHE',
                                        DEFAULTS.module.module_cache_dir),
        saved_model_dir=os.path.join(out, 'saved_model'),
        output_graph=os.path.join(out, 'output_graph.pb'),
        output_labels=os.path.join(out, 'labels.txt'),
        report_dir=os.path.join(out, 'report'),
        summaries_dir=os.path.join(out, 'logs'))

  _run(config('warm'), with_page=False)
  rows = []
  for k in range(args.repeats):
    for with_page in (False, True):
      seconds, result = _run(config(f'{k}_{with_page}'), with_page)
      rows.append((with_page, seconds, result.timings.get('results_page', 0.0),
                   result.test_count))
  for with_page, seconds, page, count in rows:
    print(f'{"with" if with_page else "without"} page: {seconds:7.1f} s '
          f'(page phase {page:5.1f} s, N test={count})')
  without = [s for w, s, _, _ in rows if not w]
  with_ = [s for w, s, _, _ in rows if w]
  mean_without = sum(without) / len(without)
  mean_with = sum(with_) / len(with_)
  pages = [p for w, _, p, _ in rows if w]
  print(f'mean without {mean_without:.1f} s, with {mean_with:.1f} s: '
        f'+{100 * (mean_with / mean_without - 1):.1f}% '
        f'(page phase {sum(pages) / len(pages):.1f} s = '
        f'{100 * sum(pages) / len(pages) / mean_without:.1f}% of a run '
        'without it)')


if __name__ == '__main__':
  main()
