"""Reports of what makes the exports safe to deploy.

`<report_dir>/deployment.json`: the calibration (temperature, expected
calibration error before and after on the validation set, rejection
threshold with its validation precision and coverage) and each quantised
export's check against the float model (top-1 of both, agreement, largest
probability difference); the same figures go to the log and into every
export's metadata.

TensorBoard, run `validation/`: scalars `calibration/ece_before`,
`calibration/ece_after`, `calibration/temperature` and
`calibration/rejection_threshold`, written at the last training step.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from absl import logging

from retrain.common import atomic
from retrain.head.calibration import Confidence

REPORT_FILE = 'deployment.json'


def log_confidence(confidence: Confidence) -> None:
  """One log line (or a warning) about calibration and the threshold."""
  if confidence.skipped_reason:
    logging.info('Confidence not calibrated and no rejection threshold '
                 'chosen: %s.', confidence.skipped_reason)
    return
  logging.info(
      'Calibration on %d held-out images (%s): temperature %.3f, expected '
      'calibration error (ECE) %.4f before, %.4f after.',
      confidence.validation_count, confidence.held_out,
      confidence.temperature, confidence.ece_before, confidence.ece_after)
  if confidence.test_ece_after is not None:
    logging.info('Test set (N=%d, used for nothing else): ECE %.4f before '
                 'calibration, %.4f after.', confidence.test_count,
                 confidence.test_ece_before, confidence.test_ece_after)
  text = (f'Rejection threshold {confidence.threshold:.4f}: held-out '
          f'precision {100 * confidence.precision:.1f} % on the '
          f'{100 * confidence.coverage:.1f} % of images at or above it '
          f'(target {100 * confidence.target_precision:.1f} %)')
  if confidence.target_met:
    logging.info('%s. Below it label_image reports "unknown".', text)
  else:
    logging.warning('%s: the target is not reached at any threshold; this '
                    'is the most precise one. Lower --target_precision or '
                    'add validation images.', text)


def write_tensorboard(summaries_dir: str, confidence: Confidence,
                      step: int) -> None:
  """The calibration scalars in <summaries_dir>/validation."""
  if confidence.skipped_reason or not summaries_dir:
    return
  import tensorflow as tf
  writer = tf.summary.create_file_writer(os.path.join(summaries_dir,
                                                      'validation'))
  with writer.as_default():
    for name, value in (('ece_before', confidence.ece_before),
                        ('ece_after', confidence.ece_after),
                        ('temperature', confidence.temperature),
                        ('rejection_threshold', confidence.threshold)):
      tf.summary.scalar(f'calibration/{name}', value, step=step)
  writer.close()


def write_report(report_dir: str, confidence: Confidence,
                 checks: Sequence, exports: Optional[dict] = None) -> str:
  """Writes <report_dir>/deployment.json atomically; returns its path."""
  path = os.path.join(report_dir, REPORT_FILE)
  data = {
      'calibration': confidence.metadata(),
      'quantization_checks': [c.metadata() for c in checks],
      'exports': exports or {},
  }
  return atomic.write_json(path, data)
