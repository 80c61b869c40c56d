"""The head's formulas (retrain/head/math.py): numpy and TensorFlow agree
with each other and with the definitions, and numpy users load no
TensorFlow."""

import subprocess
import sys

import numpy as np
import pytest

from retrain.head import math as head_math

LOGITS = np.array([[4.0, 0.0, -1.0], [0.5, 2.0, 0.0], [1000.0, 0.0, 999.0]])
LABELS = np.array([0, 2, 2])


def test_softmax_and_log_softmax_are_the_definitions_without_overflow():
  p = head_math.softmax(LOGITS)
  e = np.exp(LOGITS[:2])
  np.testing.assert_allclose(p[:2], e / e.sum(axis=1, keepdims=True))
  np.testing.assert_allclose(p[2], [1 / (1 + np.exp(-1)), 0,
                                    np.exp(-1) / (1 + np.exp(-1))])
  np.testing.assert_allclose(np.exp(head_math.log_softmax(LOGITS)), p)
  assert head_math.softmax(LOGITS.astype(np.float32)).dtype == np.float32
  assert head_math.softmax(LOGITS.astype(int)).dtype == np.float64


def test_cross_entropy_weights_and_smoothing():
  each = head_math.cross_entropies(LOGITS, LABELS)
  np.testing.assert_allclose(
      each, -np.log(head_math.softmax(LOGITS)[np.arange(3), LABELS]))
  assert head_math.cross_entropy(LOGITS, LABELS) == pytest.approx(each.mean())
  w = np.array([2.0, 0.0, 1.0])
  assert head_math.cross_entropy(LOGITS, LABELS, w, total=True) == (
      pytest.approx(2 * each[0] + each[2]))
  assert np.isnan(head_math.cross_entropy(LOGITS[:0], LABELS[:0]))
  np.testing.assert_allclose(head_math.smoothed_targets([0, 1], 3, 0.3),
                             [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])


def test_accuracy_and_correct():
  assert head_math.accuracy(LOGITS, LABELS) == pytest.approx(1 / 3)
  assert head_math.correct(LOGITS, LABELS) == 1
  assert head_math.correct(LOGITS, LABELS, np.array([0.5, 1, 1])) == 0.5
  assert np.isnan(head_math.accuracy(LOGITS[:0], LABELS[:0]))


def test_evenly_spread_keeps_the_ends_and_never_repeats():
  assert head_math.evenly_spread(4, 10).tolist() == [0, 1, 2, 3]
  assert head_math.evenly_spread(11, 3).tolist() == [0, 5, 10]
  assert head_math.evenly_spread(5, 0).tolist() == []
  assert head_math.evenly_spread(5, 1).tolist() == [0]
  for count in range(1, 60):
    for k in range(2, 12):
      picked = head_math.evenly_spread(count, k)
      assert len(set(picked.tolist())) == len(picked) == min(count, k)
      assert picked[0] == 0 and picked[-1] == count - 1


def test_tensorflow_versions_match_numpy():
  import tensorflow as tf
  logits = tf.constant(LOGITS, tf.float32)
  labels = tf.constant(LABELS, tf.int64)
  np.testing.assert_allclose(head_math.tf_softmax(logits).numpy(),
                             head_math.softmax(LOGITS), atol=1e-6)
  np.testing.assert_allclose(
      head_math.tf_cross_entropy(logits, labels).numpy(),
      head_math.cross_entropies(LOGITS, LABELS), rtol=1e-5)
  targets = head_math.smoothed_targets(LABELS, 3, 0.2)
  np.testing.assert_allclose(
      head_math.tf_cross_entropy(logits, labels, 0.2).numpy(),
      -(targets * head_math.log_softmax(LOGITS)).sum(axis=1), rtol=1e-5)
  weights = tf.constant([1.0, 3.0, 0.5])
  np.testing.assert_allclose(
      head_math.tf_cross_entropy(logits, labels, 0.0, weights).numpy(),
      head_math.cross_entropies(LOGITS, LABELS) * [1.0, 0.5, 0.5],
      rtol=1e-5)
  assert float(head_math.tf_accuracy(logits, labels)) == pytest.approx(1 / 3)


def test_numpy_users_do_not_load_tensorflow():
  code = ('import sys; from retrain.head import math as m; '
          'm.softmax([[1.0, 2.0]]); m.accuracy([[1.0, 2.0]], [1]); '
          'print("tensorflow" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == 'False'
