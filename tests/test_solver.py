"""The converging head solver: it converges, beats retrain.py's SGD
defaults where they stop short, chooses on validation (or k-fold) only, and
never sees the test set; the Wilson interval of the final line."""

import dataclasses

import numpy as np
import pytest

from retrain.config import DEFAULTS
from retrain.errors import DatasetError
from retrain.head import auto, folds, lbfgs, solver
from retrain.head import math as head_math
from retrain.head import train as train_lib
from retrain.report import confidence
from retrain.report import head_solver as solve

OPTIONS = solver.SolverOptions.from_config(DEFAULTS)


def _clusters(n_per_class, classes, dim, spread, seed, scale=1.0):
  """Gaussian clusters: float32 [n, dim] vectors, int64 [n] ids."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 1, (classes, dim))
  y = np.repeat(np.arange(classes), n_per_class)
  x = (centres[y] + rng.normal(0, spread, (len(y), dim))) * scale
  return x.astype(np.float32), y


def test_lbfgs_reaches_the_minimum_of_a_convex_quadratic():
  a = np.diag(np.linspace(1, 100, 20))
  target = np.linspace(-1, 1, 20)
  theta, iterations = lbfgs.lbfgs(
      lambda t: (0.5 * (t - target) @ a @ (t - target), a @ (t - target)),
      np.zeros(20), 200, 1e-12)
  np.testing.assert_allclose(theta, target, atol=1e-5)
  assert 0 < iterations < 200


def test_vectors_standardise_any_rows_as_their_own_pass_would():
  x, _ = _clusters(40, 3, 16, 0.5, seed=3, scale=7.0)
  x[:, 2] = 5.0  # a constant dimension gets scale 1 once centred
  rows = np.random.default_rng(1).random(len(x)) < 0.6
  for enabled in (False, True):
    vectors = lbfgs.Vectors(x, enabled)
    for chosen in (None, rows, slice(10, 90)):
      mean, scale = vectors.standardisation(chosen)
      want_mean, want_scale = lbfgs.standardisation(
          x if chosen is None else x[chosen], enabled)
      np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(scale, want_scale, rtol=1e-5)
  # One scale for every dimension, the rows' root mean square.
  _, scale = lbfgs.Vectors(x, False).standardisation(rows)
  assert np.all(scale == scale[0])
  assert scale[0] == pytest.approx(np.sqrt(np.mean(
      x[rows].astype(np.float64) ** 2)), rel=1e-6)
  assert np.all(lbfgs.Vectors(np.zeros((4, 3), np.float32), False
                              ).standardisation()[1] == 1.0)


def test_standard_skips_a_zero_mean_and_one_scale_with_the_same_bits():
  rng = np.random.default_rng(4)
  w = rng.normal(size=(16, 3))
  b, g = rng.normal(size=3), rng.normal(size=3)
  gx = rng.normal(size=(16, 3))
  # Unstandardised: zero mean, one scale; the shortcut gives the full
  # formulas' exact bits.
  mean, scale = np.zeros(16), np.full(16, 2.7)
  standard = lbfgs.Standard(mean, scale)
  assert standard.mean is None and standard.scale.shape == (1,)
  w_in = standard.weights(w)
  assert np.array_equal(w_in, w / scale[:, None])
  assert np.array_equal(standard.biases(b, w_in),
                        b - np.sum(mean[:, None] * w_in, axis=0))
  assert np.array_equal(standard.gradient(gx, g),
                        (gx - np.outer(mean, g)) / scale[:, None])
  # Standardised: every dimension its own mean and scale.
  mean, scale = rng.normal(size=16), rng.uniform(0.5, 2.0, 16)
  standard = lbfgs.Standard(mean, scale)
  w_in = standard.weights(w)
  np.testing.assert_allclose(standard.biases(b, w_in),
                             b - mean @ w_in, rtol=1e-12)
  np.testing.assert_allclose(standard.gradient(gx, g),
                             (gx - np.outer(mean, g)) / scale[:, None],
                             rtol=1e-12)
  # Side by side (the folds' [D, folds, N]): each fold's own scale.
  scales = np.stack([np.full(16, 2.0), np.full(16, 3.0)], 1)
  side = lbfgs.Standard(np.zeros((16, 2)), scales)
  stacked = np.stack([w, w], 1)
  np.testing.assert_array_equal(side.weights(stacked)[:, 1], w / 3.0)


def test_vectors_make_each_set_of_rows_a_tensor_once():
  x, y = _clusters(20, 3, 8, 0.5, seed=5)
  vectors = lbfgs.Vectors(x, False)
  assert vectors.tensor() is vectors.tensor()
  assert vectors.tensor(slice(0, 30)) is vectors.tensor(slice(0, 30))
  np.testing.assert_array_equal(vectors.tensor(slice(0, 30)).numpy(), x[:30])
  # A problem given the shared tensor computes what one given the array
  # does.
  mean, scale = vectors.standardisation(slice(0, 30))
  theta = np.random.default_rng(0).normal(size=(8 + 1) * 3)
  shared = lbfgs.Problem(vectors.tensor(slice(0, 30)), y[:30], 3, mean,
                         scale, 0.1, 0.0)(theta)
  own = lbfgs.Problem(x[:30], y[:30], 3, mean, scale, 0.1, 0.0)(theta)
  assert shared[0] == own[0]
  np.testing.assert_array_equal(shared[1], own[1])


def test_converges_on_separable_data():
  x, y = _clusters(30, 4, 16, 0.1, seed=0)
  result = solver.fit_head(x[::2], y[::2], 4, x[1::2], y[1::2], OPTIONS)
  head = result.head
  assert head.weights.shape == (16, 4) and head.weights.dtype == np.float32
  assert head.biases.shape == (4,)
  assert np.all(head.logits(x).argmax(axis=1) == y)
  # Converged: the objective's gradient at the chosen setting is ~0.
  fit_x = np.concatenate([x[::2], x[1::2]])
  fit_y = np.concatenate([y[::2], y[1::2]])
  mean, scale = lbfgs.standardisation(fit_x, OPTIONS.standardise)
  problem = lbfgs.Problem(fit_x, fit_y, 4, mean, scale, result.chosen.l2,
                            0.0)
  w_std = head.weights.astype(np.float64) * scale[:, None]
  b = head.biases + mean @ head.weights
  _, grad = problem(np.concatenate([w_std.ravel(), b]))
  assert np.max(np.abs(grad)) < 1e-3
  # The curve of the final fit ends at the final head's cross entropy on
  # the images it fitted (warm-started from the mean of the k folds' fits,
  # the cross entropy alone need not fall: the objective adds the L2 term).
  assert result.history[-1].cross_entropy == pytest.approx(
      head_math.cross_entropy(head.logits(fit_x), fit_y), rel=1e-4)
  assert result.history[-1].train_accuracy == 1.0


def test_beats_sgd_defaults_where_they_stop_short():
  # Features of small values (as a module far from its training domain can
  # give): SGD at retrain.py's learning rate 0.01 barely moves in 4,000
  # steps; the converging solver has no step size to get wrong.
  x, y = _clusters(60, 6, 16, 1.0, seed=1, scale=0.01)
  fold = folds.stratified_folds(y, 4, seed=0)
  tr, va, te = fold >= 2, fold == 1, fold == 0
  lbfgs = solver.fit_head(x[tr], y[tr], 6, x[va], y[va], OPTIONS).head
  d = DEFAULTS
  sgd = train_lib.train_head(x[tr], y[tr], 6, x[va], y[va], train_lib.Settings(
      steps=d.head.how_many_training_steps, learning_rate=d.head.learning_rate,
      batch_size=d.head.train_batch_size,
      eval_step_interval=d.head.how_many_training_steps,
      validation_batch_size=-1, seed=0)).head

  def acc(head):
    return np.mean(head.logits(x[te]).argmax(axis=1) == y[te])

  assert acc(lbfgs) >= 0.8
  assert acc(lbfgs) >= acc(sgd) + 0.2


def test_chooses_on_validation_and_scores_nothing_else(monkeypatch):
  x, y = _clusters(40, 3, 12, 1.0, seed=2)
  fold = folds.stratified_folds(y, 4, seed=0)
  train_x, train_y = x[fold >= 2], y[fold >= 2]
  val_x, val_y = x[fold == 1], y[fold == 1]
  scored = []
  real_score = solver._score

  def spy(head, sx, sy):
    scored.append(sx)
    return real_score(head, sx, sy)

  monkeypatch.setattr(solver, '_score', spy)
  options = dataclasses.replace(OPTIONS, min_validation_per_class=5)
  result = solver.fit_head(train_x, train_y, 3, val_x, val_y, options)
  assert result.selection == 'validation'
  assert len(scored) == len(OPTIONS.l2_grid)
  assert all(np.array_equal(s, val_x) for s in scored)
  # The winner is the best validation accuracy (ties: lower cross entropy).
  best = max(c.accuracy for c in result.candidates)
  assert result.chosen.accuracy == best
  assert result.chosen.cross_entropy == min(
      c.cross_entropy for c in result.candidates if c.accuracy == best)
  assert result.refit and 'refitted on training + validation' in result.reason


def test_the_grid_ranks_at_the_choice_tolerance_and_the_chosen_fits_at_the_full(
    monkeypatch):
  x, y = _clusters(40, 3, 12, 1.0, seed=2)
  fold = folds.stratified_folds(y, 4, seed=0)
  tolerances = []
  real_lbfgs = lbfgs.lbfgs

  def spy(fun, theta, max_iterations, tolerance, callback=None):
    tolerances.append(tolerance)
    return real_lbfgs(fun, theta, max_iterations, tolerance, callback)

  monkeypatch.setattr(lbfgs, 'lbfgs', spy)
  options = dataclasses.replace(OPTIONS, min_validation_per_class=5,
                                tolerance=1e-9, choice_tolerance=1e-3,
                                train_only_head=True)
  result = solver.fit_head(x[fold >= 2], y[fold >= 2], 3, x[fold == 1],
                           y[fold == 1], options)
  grid = len(OPTIONS.l2_grid)
  assert result.selection == 'validation'
  # The grid's fits, then the final fit, the cross-fitted folds and the
  # training-only head at the full tolerance.
  assert tolerances == [1e-3] * grid + [1e-9] * 3
  # Stopped early, the grid took fewer iterations than to the full one.
  exact = solver.fit_head(x[fold >= 2], y[fold >= 2], 3, x[fold == 1],
                          y[fold == 1], dataclasses.replace(
                              options, choice_tolerance=1e-9))
  assert (sum(c.iterations for c in result.candidates) <
          sum(c.iterations for c in exact.candidates))
  # A small validation set: k-fold, whose close scores keep the full one.
  tolerances.clear()
  val = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(3)])
  rest = np.setdiff1d(np.arange(len(y)), val)
  assert solver.fit_head(x[rest], y[rest], 3, x[val], y[val],
                         options).selection == 'k-fold'
  assert set(tolerances) == {1e-9}


def test_small_validation_means_k_fold_on_train_and_validation():
  x, y = _clusters(20, 3, 8, 0.8, seed=3)
  # Two validation images per class: too few to choose on.
  val = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(3)])
  rest = np.setdiff1d(np.arange(len(y)), val)
  result = solver.fit_head(x[rest], y[rest], 3, x[val], y[val], OPTIONS)
  assert result.selection == 'k-fold'
  assert 'only 2 image(s) in its smallest class' in result.reason
  assert all(0 <= c.accuracy <= 1 for c in result.candidates)
  # Too few images for 5 folds: one setting, fitted on what there is.
  tiny = solver.fit_head(x[:3], y[:3], 3, x[:0], y[:0], OPTIONS)
  assert tiny.selection == 'single' and len(tiny.candidates) == 1


def test_bad_grid_values_are_refused():
  with pytest.raises(DatasetError, match='solver_l2_grid=0.1,x'):
    solver.SolverOptions.from_config(DEFAULTS.replace(solver_l2_grid=('0.1', 'x')))
  with pytest.raises(DatasetError, match='label_smoothing_grid=1.5'):
    solver.check(dataclasses.replace(OPTIONS, label_smoothing_grid=(1.5,)))
  # The command line words the setting as its flag.
  with pytest.raises(DatasetError) as e:
    solver.check(dataclasses.replace(OPTIONS, l2_grid=(-1.0,)))
  assert e.value.worded(lambda f: f'--{f}').startswith('--solver_l2_grid=-1.0')
  with pytest.raises(DatasetError, match=r'solver_choice_tolerance=1\.5 must be '
                     r'in \[0, 1\)'):
    solver.check(dataclasses.replace(OPTIONS, choice_tolerance=1.5))
  with pytest.raises(DatasetError, match='solver_tolerance=-1 must be'):
    solver.check(dataclasses.replace(OPTIONS, tolerance=-1.0))


def test_auto_is_sgd_only_when_training_flags_are_given(caplog):
  assert auto.resolve('auto', []) == 'lbfgs'
  assert auto.resolve('sgd', []) == 'sgd'
  assert auto.resolve('lbfgs', ['learning_rate']) == 'lbfgs'
  with caplog.at_level('INFO', logger='absl'):
    assert auto.resolve('auto', ['learning_rate']) == 'sgd'
  assert 'because --learning_rate was given' in caplog.text
  assert auto.changed_training_fields(DEFAULTS.replace(train_batch_size=10), DEFAULTS) == ['train_batch_size']
  with pytest.raises(DatasetError, match="head_solver='adam'"):
    auto.resolve('adam', [])


def test_wilson_interval_and_final_line():
  assert confidence.format_accuracy(45 / 51, 51) == (
      'Final test accuracy = 88.2% (N=51, 95% CI 76.6-94.5%)')
  low, high = confidence.wilson_interval(10, 10)
  assert high == pytest.approx(1.0) and 0.72 < low < 0.73
  assert confidence.wilson_interval(0, 0) == (0.0, 1.0)
  assert confidence.format_accuracy(float('nan'), 0) == (
      'Final test accuracy = n/a (N=0)')
  needed = confidence.images_for_half_width(45 / 51, 51)
  low, high = confidence.wilson_interval(45 / 51 * needed, needed)
  assert (high - low) / 2 <= 0.02
  low, high = confidence.wilson_interval(45 / 51 * (needed - 1), needed - 1)
  assert (high - low) / 2 > 0.02
  assert f'about {needed - 51} more test images' in confidence.narrowing_hint(
      45 / 51, 51)
  assert confidence.narrowing_hint(0.9, 5000) is None


def test_pipeline_resolves_the_head_solver_once():
  from retrain import pipeline
  assert pipeline.resolve_head_solver(DEFAULTS).head.head_solver == 'lbfgs'
  changed = DEFAULTS.replace(learning_rate=0.1)
  assert pipeline.resolve_head_solver(changed).head.head_solver == 'sgd'
  chosen = changed.replace(head_solver='lbfgs')
  assert pipeline.resolve_head_solver(chosen).head.head_solver == 'lbfgs'
  with pytest.raises(DatasetError, match="head_solver='newton'"):
    pipeline.resolve_head_solver(DEFAULTS.replace(
                                                     head_solver='newton'))


def _imbalanced(seed=5):
  """Two overlapping classes, 300 vs 15 training images, and a balanced
  held-out set of 200 a class."""
  rng = np.random.default_rng(seed)
  centres = np.array([[0.0] * 8, [1.2] + [0.0] * 7])

  def draw(counts):
    y = np.repeat(np.arange(2), counts)
    return (centres[y] + rng.normal(0, 1, (len(y), 8))).astype(
        np.float32), y

  return draw([300, 15]), draw([200, 200])


def test_balanced_weights_raise_the_small_class_recall():
  (x, y), (test_x, test_y) = _imbalanced()
  options = dataclasses.replace(OPTIONS, l2_grid=(0.01,))
  weights = solve.lbfgs_class_weights(np.bincount(y), 'balanced', 'images')
  np.testing.assert_allclose(weights, [315 / (2 * 300), 315 / (2 * 15)])

  def recall(result):
    pred = result.head.logits(test_x).argmax(axis=1)
    return np.mean(pred[test_y == 1] == 1)

  plain = solver.fit_head(x, y, 2, x[:0], y[:0], options)
  weighted = solver.fit_head(x, y, 2, x[:0], y[:0], options,
                             class_weights=weights)
  assert recall(plain) < 0.35
  assert recall(weighted) > recall(plain) + 0.3


def test_weights_are_in_the_objective_and_the_choice():
  (x, y), _ = _imbalanced(seed=6)
  mean, scale = lbfgs.standardisation(x, False)
  theta = np.random.default_rng(0).normal(0, 0.1, 9 * 2)
  # Weight 2 on every image is the unweighted objective (a weighted mean).
  plain = lbfgs.Problem(x, y, 2, mean, scale, 0.1, 0.0)(theta)
  doubled = lbfgs.Problem(x, y, 2, mean, scale, 0.1, 0.0,
                            np.full(len(y), 2.0))(theta)
  assert doubled[0] == pytest.approx(plain[0])
  np.testing.assert_allclose(doubled[1], plain[1], rtol=1e-6, atol=1e-9)
  # Weight 3 on one image is that image three times.
  w = np.ones(len(y))
  w[0] = 3.0
  tripled = lbfgs.Problem(np.concatenate([x, x[:1], x[:1]]),
                            np.concatenate([y, y[:1], y[:1]]), 2, mean,
                            scale, 0.1, 0.0)(theta)
  weighted = lbfgs.Problem(x, y, 2, mean, scale, 0.1, 0.0, w)(theta)
  assert weighted[0] == pytest.approx(tripled[0])
  # The k-fold choice scores the weighted (here: balanced) accuracy.
  result = solver.fit_head(x, y, 2, x[:0], y[:0], OPTIONS,
                           class_weights=solve.lbfgs_class_weights(
                               np.bincount(y), 'none', 'classes'))
  assert result.selection == 'k-fold'
  for c in result.candidates:
    assert 0 <= c.accuracy <= 1


def test_class_balance_options_keep_lbfgs_and_say_so(caplog):
  assert solve.lbfgs_class_weights([50, 50], 'none', 'classes') is None
  assert solve.lbfgs_class_weights([90, 10], 'none', 'images') is None
  np.testing.assert_allclose(
      solve.lbfgs_class_weights([90, 10, 0], 'none', 'classes'),
      [100 / 180, 100 / 20, 1.0])
  changed = DEFAULTS.replace(class_weighting='balanced',
                                sampling='images')
  assert auto.changed_training_fields(changed, DEFAULTS) == []
  from retrain import pipeline
  assert pipeline.resolve_head_solver(changed).head.head_solver == 'lbfgs'
  assert solve.imbalance([30, 20], ['a', 'b']) is None
  assert solve.imbalance([90, 10, 0], ['a', 'b', 'c']) == (
      "The training set is strongly imbalanced: 'a' has 90 images, 'b' 10 "
      '(9.0x; strongly means 3x or more)')


def test_a_strongly_imbalanced_run_warns_and_weighs_classes(tmp_path, caplog):
  (x, y), _ = _imbalanced(seed=7)
  config = DEFAULTS.replace(head_solver='lbfgs',
                               report_dir=str(tmp_path),
                               solver_l2_grid=(0.1,))
  with caplog.at_level('INFO', logger='absl'):
    solve.maybe_solve(config, x, y, ['cats', 'dogs'], x[:0], y[:0])
  assert ("strongly imbalanced: 'cats' has 300 images, 'dogs' 15" in
          caplog.text)
  assert 'every class weighs the same' in caplog.text
  assert '--sampling images' in caplog.text
  import json
  report = json.loads((tmp_path / solve.REPORT_FILE).read_text())
  assert report['class_weights'] == pytest.approx([315 / 600, 315 / 30])


def test_one_fit_shape_for_the_solver_and_a_single_fit():
  x, y = _clusters(20, 3, 8, 0.8, seed=8)
  options = dataclasses.replace(OPTIONS, l2_grid=(0.01,),
                                label_smoothing_grid=(0.0,))
  fitted = lbfgs.SoftmaxLbfgs.of(0.01, 0.0, options).fit(x, y, 3)
  probs = fitted.predict_proba(x)
  assert probs.shape == (60, 3) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
  np.testing.assert_array_equal(probs, fitted.head().predict_proba(x))
  # fit_head with one setting and no validation is that same fit.
  chosen = solver.fit_head(x, y, 3, x[:0], y[:0], options)
  assert chosen.selection == 'single'
  np.testing.assert_allclose(chosen.head.weights, fitted.head().weights,
                             rtol=1e-5, atol=1e-6)

