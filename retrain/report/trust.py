"""How far the model's own words can be trusted: calibration and novelty.

`<report_dir>/trust.json` (read by programs: keys below, numbers in
[0, 1] unless said otherwise):

  how_measured        {figure: how its images were held out}
  calibration         temperature, rejection threshold, held_out_count,
                      held_out_ece_before / _after, test_count,
                      test_ece_before / _after (test: used for nothing
                      else), held_out (how), reliability: {'test':
                      [{'bin_low', 'bin_high', 'count', 'confidence',
                      'accuracy'}, ...]} of the calibrated probabilities
  novelty             null without a novelty score; else threshold, keep,
                      components, shrinkage, held_out (how), and per set
                      ('held_out': out-of-fold scores of the training and
                      validation images, 'test', 'unknown' for
                      --unknown_dir): {'count', 'flagged', 'kept',
                      'flagged_fraction'}; 'unknown_auroc' (AUROC of the
                      score, unknown photos against the test photos, or
                      the held-out ones without test), 'histogram': {
                      'edges': [...], 'held_out': [...], 'test': [...],
                      'unknown': [...]} (counts per bin)
  figures             {'reliability': file, 'novelty_histogram': file}
                      (PNG files in report_dir)

TensorBoard, run `validation/`: the two figures as images
(`trust/reliability`, `trust/novelty_histogram`) and scalars
`trust/test_ece_after`, `trust/novelty_flagged_test`,
`trust/novelty_flagged_unknown`, `trust/novelty_auroc`.
"""

from __future__ import annotations

import io
import os
from typing import Dict, Optional, Sequence

import numpy as np
from absl import logging

from retrain.common import atomic, background
from retrain.head import calibration as calibration_lib
from retrain.head import math as head_math

REPORT_FILE = 'trust.json'
RELIABILITY_FILE = 'reliability.png'
HISTOGRAM_FILE = 'novelty_histogram.png'
HISTOGRAM_BINS = 30


def reliability_bins(probabilities: np.ndarray, y: np.ndarray,
                     bins: int = calibration_lib.ECE_BINS) -> list:
  """The reliability diagram's rows: for each equal-width bin of top
  probability (as expected_calibration_error bins them), its count, mean
  confidence and accuracy (None when empty)."""
  confidence = np.asarray(probabilities).max(axis=1)
  correct = head_math.hits(probabilities, y)
  index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
  rows = []
  for k in range(bins):
    members = index == k
    rows.append({'bin_low': k / bins, 'bin_high': (k + 1) / bins,
                 'count': int(members.sum()),
                 'confidence': float(confidence[members].mean())
                               if members.any() else None,
                 'accuracy': float(correct[members].mean())
                             if members.any() else None})
  return rows


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
  """Probability that a positive scores above a negative (ties: half), in
  [0, 1]; nan when either is empty."""
  positive, negative = np.asarray(positive), np.asarray(negative)
  if not len(positive) or not len(negative):
    return float('nan')
  both = np.concatenate([negative, positive])
  order = both.argsort(kind='stable')
  ranks = np.empty(len(both))
  ranks[order] = np.arange(1, len(both) + 1)
  for value in np.unique(both):  # Average ranks of ties.
    tied = both == value
    if tied.sum() > 1:
      ranks[tied] = ranks[tied].mean()
  mine = ranks[len(negative):].sum() - len(positive) * (len(positive) + 1) / 2
  return float(mine / (len(positive) * len(negative)))


def flagged(scores: np.ndarray, threshold: float) -> dict:
  """Counts of scores above (flagged) and at or below (kept) threshold."""
  scores = np.asarray(scores)
  count, above = int(len(scores)), int(np.sum(scores > threshold))
  return {'count': count, 'flagged': above, 'kept': count - above,
          'flagged_fraction': above / count if count else None}


def novelty_section(novelty, sets: Dict[str, np.ndarray]) -> dict:
  """trust.json's `novelty`: novelty.metadata(), per set flagged counts
  (sets: {'held_out' / 'test' / 'unknown': scores float [n]}), the AUROC
  and the histogram."""
  data = dict(novelty.metadata())
  for name, scores in sets.items():
    data[name] = flagged(scores, novelty.threshold)
  known = sets.get('test')
  if known is None or not len(known):
    known = sets.get('held_out', np.zeros(0))
  data['unknown_auroc'] = (auroc(sets['unknown'], known)
                           if 'unknown' in sets else None)
  everything = np.concatenate([s for s in sets.values() if len(s)] +
                              [[novelty.threshold]])
  top = float(np.quantile(everything, 0.99)) * 1.2
  edges = np.linspace(0.0, max(top, 2 * novelty.threshold), HISTOGRAM_BINS + 1)
  data['histogram'] = {'edges': edges.tolist(), **{
      name: np.histogram(np.minimum(scores, edges[-1]), edges)[0].tolist()
      for name, scores in sets.items()}}
  return data


def load_matplotlib() -> None:
  """Imports matplotlib, most of the charts' time (about 0.4 s of Python
  on a quiet core). The pipeline calls it on its worker thread while the
  head trains (the solver's products leave the interpreter free), so the
  charts drawn beside the export do not import it there."""
  _pyplot()


def _pyplot():
  import matplotlib
  matplotlib.use('Agg', force=True)
  from matplotlib import pyplot
  return pyplot


def _png(figure) -> bytes:
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=90)
  _pyplot().close(figure)
  return buffer.getvalue()


def reliability_png(rows: Sequence[dict], title: str) -> bytes:
  """The reliability diagram: accuracy per confidence bin against the
  diagonal, bar width showing the bin; counts in the title."""
  plt = _pyplot()
  figure, axes = plt.subplots(figsize=(4.5, 4.5))
  full = [r for r in rows if r['count']]
  axes.bar([r['bin_low'] for r in full], [r['accuracy'] for r in full],
           width=[r['bin_high'] - r['bin_low'] for r in full], align='edge',
           edgecolor='black', alpha=0.7, label='accuracy')
  axes.plot([0, 1], [0, 1], 'k--', label='perfect calibration')
  axes.plot([r['confidence'] for r in full], [r['accuracy'] for r in full],
            'o', color='tab:red', label='mean confidence')
  axes.set(xlim=(0, 1), ylim=(0, 1), xlabel='top probability',
           ylabel='accuracy', title=title)
  axes.legend(loc='upper left', fontsize=8)
  return _png(figure)


def histogram_png(section: dict) -> bytes:
  """Novelty scores per set, with the threshold."""
  plt = _pyplot()
  figure, axes = plt.subplots(figsize=(6, 4))
  edges = np.asarray(section['histogram']['edges'])
  for name, counts in section['histogram'].items():
    if name == 'edges':
      continue
    counts = np.asarray(counts, np.float64)
    axes.stairs(counts / max(counts.sum(), 1), edges, label=name,
                fill=name == 'held_out', alpha=0.5 if name == 'held_out'
                else 1.0)
  axes.axvline(section['threshold'], color='k', linestyle='--',
               label=f'threshold (keeps {100 * section["keep"]:.0f} %)')
  axes.set(xlabel='novelty score', ylabel='fraction of the set',
           title='Novelty: above the threshold is "not like any class"')
  axes.legend(fontsize=8)
  return _png(figure)


def write(report_dir: str, summaries_dir: str, step: int, figures: dict,
          confidence, test=None, novelty=None,
          novelty_sets: Optional[Dict[str, np.ndarray]] = None) -> str:
  """Writes trust.json and its figures (report_dir) and TensorBoard
  (summaries_dir/validation), inside background.deferred while the run
  goes on; returns the JSON's path.

  Args:
    figures: how each figure was obtained (retrain.steps.head.describe_figures).
    confidence: the run's retrain.head.calibration.Confidence.
    test: the retrain.head.evaluate.Evaluation of the trained
      (uncalibrated) head on the test set: probabilities float [n, N],
      class ids labels [n]; None or empty without test images.
    novelty, novelty_sets: the Novelty and its scores per set, or None.
  """
  calibration = confidence.metadata()
  charts = {}
  if test is not None and test.count:
    test_y = test.labels
    calibrated = calibration_lib.softmax(np.log(np.maximum(
        np.asarray(test.probabilities, np.float64), 1e-300)) /
                                         confidence.temperature)
    calibration['reliability'] = {'test': reliability_bins(calibrated,
                                                           test_y)}
    charts[RELIABILITY_FILE] = lambda: reliability_png(
        calibration['reliability']['test'],
        f'Test set after calibration (N={len(test_y)}), ECE '
        f'{confidence.test_ece_after:.3f}')
  section = None
  if novelty is not None:
    section = novelty_section(novelty, novelty_sets or {})
    charts[HISTOGRAM_FILE] = lambda: histogram_png(section)
  path = os.path.join(report_dir, REPORT_FILE)
  report = {
      'how_measured': figures, 'calibration': calibration,
      'novelty': section,
      'figures': {'reliability': RELIABILITY_FILE
                  if RELIABILITY_FILE in charts else None,
                  'novelty_histogram': HISTOGRAM_FILE
                  if HISTOGRAM_FILE in charts else None}}

  # matplotlib's import and drawing are most of this step's time: done
  # while the run goes on (retrain/common/background.py), the figures
  # first, so that the JSON never names a figure not yet written.
  def write_files():
    pngs = {name: draw() for name, draw in charts.items()}
    os.makedirs(report_dir, exist_ok=True)
    for name, data in pngs.items():
      atomic.write_bytes(os.path.join(report_dir, name), data)
    atomic.write_json(path, report)
    _tensorboard(summaries_dir, step, pngs, confidence, section)
    logging.info('Calibration and novelty figures (JSON, PNG): %s.', path)

  background.run(write_files)
  return path


def _tensorboard(summaries_dir: str, step: int, pngs: dict, confidence,
                 section: Optional[dict]) -> None:
  if not summaries_dir:
    return
  import tensorflow as tf
  writer = tf.summary.create_file_writer(os.path.join(summaries_dir,
                                                      'validation'))
  scalars = {'test_ece_after': confidence.test_ece_after}
  if section is not None:
    for name in ('test', 'unknown'):
      if name in section:
        scalars[f'novelty_flagged_{name}'] = section[name]['flagged_fraction']
    scalars['novelty_auroc'] = section['unknown_auroc']
  with writer.as_default():
    for name, data in pngs.items():
      image = tf.image.decode_png(data, channels=3)[None]
      tf.summary.image(f'trust/{name[:-4]}', image, step=step)
    for name, value in scalars.items():
      if value is not None and np.isfinite(value):
        tf.summary.scalar(f'trust/{name}', value, step=step)
  writer.close()
