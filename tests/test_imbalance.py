"""A strongly imbalanced training set: the L-BFGS head's class biases tuned
for balanced accuracy on held-out predictions (retrain/head/imbalance.py);
balanced (and mildly imbalanced) sets keep the head bit for bit."""


import numpy as np
import pytest

from retrain.config import DEFAULTS
from retrain.head import imbalance
from retrain.report import head_solver as solve

LABELS = ['a', 'b', 'c']


def _classes(counts, seed, shift=1.2, dim=8):
  """Overlapping Gaussian classes, counts[c] vectors of class c: float32
  [n, dim] and int64 ids [n]."""
  rng = np.random.default_rng(seed)
  centres = np.zeros((len(counts), dim))
  centres[np.arange(len(counts)), np.arange(len(counts)) % dim] = shift
  y = np.repeat(np.arange(len(counts)), counts)
  return (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(
      np.float32), y


def _config(tmp_path, **changes):
  return DEFAULTS.replace(head_solver='lbfgs',
                             report_dir=str(tmp_path),
                             solver_l2_grid=(0.01, 0.001), **changes)


def test_the_strength_is_chosen_for_held_out_balanced_accuracy():
  # Held-out logits that under-score class 1 (the small one) by 1.5 nats.
  rng = np.random.default_rng(0)
  y = np.repeat([0, 1], [300, 30])
  z = np.zeros((len(y), 2))
  z[np.arange(len(y)), y] = 1.0
  z += rng.normal(0, 0.8, z.shape)
  z[:, 1] -= 1.5
  counts = [300, 30]
  chosen = imbalance.choose(z, y, counts)
  assert chosen.tau > 0
  assert chosen.after > chosen.before + 0.1
  assert chosen.after == pytest.approx(imbalance.balanced_accuracy(
      z + chosen.biases, y))
  # The small class's bias goes up by tau * log(300 / 30).
  assert chosen.biases[1] - chosen.biases[0] == pytest.approx(
      chosen.tau * np.log(10), rel=1e-5)
  # Equal classes: the log prior is flat, nothing moves; NaN rows are skipped.
  assert not imbalance.log_prior_biases([40, 40, 40], 1.0).any()
  assert imbalance.choose(np.full((3, 2), np.nan), [0, 1, 0], counts) is None


@pytest.mark.parametrize('counts', [[60, 60, 60], [80, 60, 40]])
def test_balanced_and_mildly_imbalanced_sets_keep_the_head_bit_for_bit(
    tmp_path, counts):
  x, y = _classes(counts, seed=1)
  heads = {}
  for mode in ('auto', 'none'):
    trained = solve.maybe_solve(_config(tmp_path, imbalance_adjustment=mode),
                                x, y, LABELS, x[:0], y[:0])
    heads[mode] = trained
  for part in ('weights', 'biases'):
    assert np.array_equal(getattr(heads['auto'].head, part),
                          getattr(heads['none'].head, part))
  np.testing.assert_array_equal(heads['auto'].held_out.logits,
                                heads['none'].held_out.logits)


@pytest.mark.slow
def test_a_strongly_imbalanced_run_shifts_the_biases_and_says_so(
    tmp_path, caplog):
  # 64 dimensions, 12 images of the small class: its images are fitted
  # closely, its new photos under-scored.
  x, y = _classes([300, 300, 12], seed=2, shift=2.0, dim=64)
  test_x, test_y = _classes([300, 300, 300], seed=3, shift=2.0, dim=64)
  with caplog.at_level('INFO', logger='absl'):
    adjusted = solve.maybe_solve(_config(tmp_path), x, y, ['a', 'b', 'small'], x[:0],
                                 y[:0])
  assert 'Class-bias adjustment for the imbalance' in caplog.text
  assert '--imbalance_adjustment none' in caplog.text
  plain = solve.maybe_solve(_config(tmp_path, imbalance_adjustment='none'),
                            x, y, LABELS, x[:0], y[:0])
  # Only the biases move, and the held-out logits with them.
  assert np.array_equal(adjusted.head.weights, plain.head.weights)
  delta = adjusted.head.biases - plain.head.biases
  assert delta[2] > delta[0] and delta[2] > delta[1]
  np.testing.assert_allclose(adjusted.held_out.logits - delta,
                             plain.held_out.logits, atol=1e-5)

  def recalls(trained):
    pred = trained.head.logits(test_x).argmax(axis=1)
    return [np.mean(pred[test_y == c] == c) for c in range(3)]

  # On balanced test photos: the small class's recall and the balanced
  # accuracy go up.
  assert recalls(adjusted)[2] > recalls(plain)[2] + 0.3
  assert np.mean(recalls(adjusted)) > np.mean(recalls(plain))
  # Every image weighing the same (the user keeps the training prior): no
  # adjustment.
  caplog.clear()
  with caplog.at_level('INFO', logger='absl'):
    kept = solve.maybe_solve(_config(tmp_path, sampling='images'), x, y, LABELS,
                             x[:0], y[:0])
  assert 'Class-bias adjustment' not in caplog.text
  unweighted = solve.maybe_solve(
      _config(tmp_path, sampling='images', imbalance_adjustment='none'),
      x, y, LABELS, x[:0], y[:0])
  assert np.array_equal(kept.head.biases, unweighted.head.biases)


def test_head_solver_json_records_the_class_bias_adjustment(tmp_path):
  import json
  x, y = _classes([200, 200, 8], seed=2, shift=2.0, dim=32)
  solve.maybe_solve(_config(tmp_path), x, y, ['a', 'b', 'small'], x[:0],
                    y[:0])
  report = json.loads((tmp_path / solve.REPORT_FILE).read_text())
  adjustment = report['imbalance_adjustment']
  assert adjustment['applied'] and adjustment['tau'] > 0
  assert adjustment['held_out_count'] == len(y)
  assert (adjustment['held_out_balanced_accuracy_after'] >
          adjustment['held_out_balanced_accuracy_before'])
  assert len(adjustment['biases']) == 3
  # A balanced set: no adjustment considered, and the report says so.
  x, y = _classes([60, 60, 60], seed=1)
  solve.maybe_solve(_config(tmp_path), x, y, LABELS, x[:0], y[:0])
  report = json.loads((tmp_path / solve.REPORT_FILE).read_text())
  assert report['imbalance_adjustment'] is None
