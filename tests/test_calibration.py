"""Temperature scaling, expected calibration error and the rejection
threshold (retrain/head/calibration.py), and the quantization gate
(retrain/export/quantization_check.py), on numbers made up to have known
answers."""

import numpy as np
import pytest

from retrain.errors import OutputError
from retrain.export import quantization_check
from retrain.head import calibration
from retrain.head.model import Head


def _overconfident(n=600, classes=4, seed=0, sharpness=6.0):
  """Vectors, labels and a head whose probabilities are far too sure.

  The true logits are log-probabilities of a noisy model (about 70 %
  right); the head multiplies them by `sharpness`.
  """
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  true_logits = rng.normal(0, 1, (n, classes))
  true_logits[np.arange(n), y] += 1.5
  x = true_logits.astype(np.float32)
  head = Head((sharpness * np.eye(classes)).astype(np.float32),
              np.zeros(classes, np.float32))
  return x, y, head


def test_ece_of_a_hand_made_example():
  # Two images at confidence 0.9, one right: ECE = |0.9 - 0.5| = 0.4.
  probs = np.array([[0.9, 0.1], [0.9, 0.1]])
  assert calibration.expected_calibration_error(
      probs, np.array([0, 1])) == pytest.approx(0.4)
  # Perfectly calibrated bins: confidence 0.75 and 3 of 4 right.
  probs = np.tile([[0.25, 0.75]], (4, 1))
  assert calibration.expected_calibration_error(
      probs, np.array([1, 1, 1, 0])) == pytest.approx(0.0)


def test_temperature_scaling_fixes_an_overconfident_head():
  x, y, head = _overconfident()
  result = calibration.calibrate(head, x, y, target_precision=0.9,
                                 min_images=30)
  # Sharpened 6x, so the fitted temperature should undo most of it.
  assert 3.0 < result.temperature < 9.0, result.temperature
  assert result.ece_before > 0.15
  assert result.ece_after < result.ece_before / 3
  assert result.cross_entropy_after < result.cross_entropy_before
  # Same predictions, softer probabilities; the head is W / T, b / T.
  before, after = head.probabilities(x), result.head.probabilities(x)
  np.testing.assert_array_equal(before.argmax(1), after.argmax(1))
  assert after.max(1).mean() < before.max(1).mean()
  np.testing.assert_allclose(result.head.weights,
                             head.weights / result.temperature, rtol=1e-6)
  meta = result.metadata()
  assert 'head' not in meta and meta['temperature'] == result.temperature


def test_temperature_sharpens_a_timid_head():
  x, y, head = _overconfident(sharpness=0.3)
  result = calibration.calibrate(head, x, y, 0.9, 30)
  assert result.temperature < 1.0
  assert result.ece_after < result.ece_before


def test_threshold_reaches_the_target_precision_on_validation():
  x, y, head = _overconfident(n=2000, seed=3)
  result = calibration.calibrate(head, x, y, target_precision=0.9,
                                 min_images=30)
  assert result.target_met
  probs = result.head.probabilities(x)
  accepted = probs.max(1) >= result.threshold
  precision = np.mean(probs.argmax(1)[accepted] == y[accepted])
  assert precision >= 0.9
  assert precision == pytest.approx(result.precision)
  assert accepted.mean() == pytest.approx(result.coverage)
  # The lowest such threshold: going one image lower breaks the target.
  below = probs.max(1)[~accepted].max()
  wider = probs.max(1) >= below
  assert np.mean(probs.argmax(1)[wider] == y[wider]) < 0.9


def test_threshold_corner_cases():
  def probs(conf):
    return np.stack([conf, 1 - np.asarray(conf)], axis=1)

  conf = [0.99, 0.9, 0.8, 0.7, 0.6]
  right = np.array([0, 0, 1, 0, 1])  # Class 0 is predicted everywhere.
  assert calibration.rejection_threshold(probs(conf), right, 0.95) == (
      0.9, 1.0, 0.4, True)
  # Every image already meets a low target: nothing is rejected.
  t, p, c, met = calibration.rejection_threshold(probs(conf), right, 0.5)
  assert (t, c, met) == (0.0, 1.0, True) and p == pytest.approx(0.6)
  # Unreachable (the most confident is wrong): the most precise cut.
  t, p, c, met = calibration.rejection_threshold(
      probs([0.9, 0.8]), np.array([1, 0]), 0.95)
  assert (t, p, c, met) == (0.8, 0.5, 1.0, False)


def test_too_few_validation_images_calibrate_nothing():
  x, y, head = _overconfident(n=12)
  result = calibration.calibrate(head, x, y, 0.95, min_images=30)
  assert result.head is head and result.temperature == 1.0
  assert result.threshold == 0.0
  assert '12 validation images; at least 30' in result.skipped_reason


def _check(loss_points, quantization='int8'):
  return quantization_check.QuantizationCheck(
      quantization=quantization, subset='test', count=50, float_accuracy=0.9,
      quantized_accuracy=0.9 - loss_points / 100, agreement=0.9,
      max_probability_difference=0.3, loss_points=loss_points,
      max_loss_points=1.0)


def test_gate_refuses_a_lossy_model_with_figures_and_alternatives():
  gate = quantization_check.Gate([], [], calibration_count=100)
  quantization_check.enforce(_check(0.5), gate)  # Within the limit.
  with pytest.raises(OutputError) as e:
    quantization_check.enforce(_check(6.0), gate)
  text = str(e.value)
  for part in ('int8 TFLite on 50 test images', 'top-1 84.0 %',
               'float model 90.0 %', '6.0 points lost',
               'max_quantization_loss=1', 'more calibration images',
               'tflite_calibration_images, now 100',
               "tflite_quantization='float16'", "tflite_quantization='dynamic'",
               'keep_lossy_quantization'):
    assert part in text, (part, text)
  # The command line words the settings as its flags.
  flags = e.value.worded(lambda field: f'--{field}')
  assert "--tflite_quantization='float16'" in flags
  assert '--max_quantization_loss=1' in flags
  with pytest.raises(OutputError) as e:
    quantization_check.enforce(_check(3.0, 'float16'), gate)
  assert 'calibration images' not in str(e.value)
  assert "tflite_quantization='float16'" not in str(e.value)

  keep = quantization_check.Gate([], [], keep_lossy=True)
  check = _check(6.0)
  quantization_check.enforce(check, keep)
  assert check.kept_despite_loss


def test_compare_measures_accuracy_agreement_and_difference(tmp_path):
  from tests.conftest import write_image
  paths = [str(write_image(tmp_path / f'{k}.png', (10 * k, 0, 0), fmt='PNG'))
           for k in range(4)]
  gate = quantization_check.Gate(paths + [str(tmp_path / 'missing.png')],
                                 [0, 0, 1, 1, 0])
  good = np.array([[0.8, 0.2], [0.7, 0.3], [0.1, 0.9], [0.4, 0.6]])
  worse = np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9], [0.45, 0.55]])
  calls = {'float': 0}

  def float_predict(batch):
    calls['float'] += 1
    return good[:len(batch)]

  check = quantization_check.compare('dynamic', float_predict,
                                     lambda batch: worse[:len(batch)], gate,
                                     (8, 8))
  # The missing file is passed over: 4 images, not 5.
  assert check.count == 4 and calls['float'] == 1
  assert check.float_accuracy == 1.0 and check.quantized_accuracy == 0.75
  assert check.agreement == 0.75 and check.loss_points == pytest.approx(25)
  assert check.max_probability_difference == pytest.approx(0.3)
