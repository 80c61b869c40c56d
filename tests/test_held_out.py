"""Figures called validation, the temperature and the rejection threshold
come from predictions of heads that did not train on the image: the
solver's out-of-fold logits when the final head trained on validation."""

import dataclasses
import json
import types

import numpy as np
import pytest

from retrain import pipeline
from retrain.config import DEFAULTS
from retrain.head import calibration, held_out, lbfgs, solver
from retrain.head import folds as folds_lib
from retrain.head import train as train_lib
from retrain.report import head_solver as solve
from retrain.steps import head, vectors

OPTIONS = solver.SolverOptions.from_config(DEFAULTS)


def _overlapping(n_per_class, classes=3, dim=120, spread=5.0, seed=0):
  """Gaussian classes that overlap (a held-out head is right about 2/3 of
  the time) in so many dimensions that a head fitted on them is right on
  every one of its own images."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 1, (classes, dim))
  y = np.repeat(np.arange(classes), n_per_class)
  x = centres[y] + rng.normal(0, spread, (len(y), dim))
  return x.astype(np.float32), y


def test_cross_fit_never_predicts_an_image_with_a_head_that_trained_on_it():
  x, y = _overlapping(12, dim=6, spread=1.0)
  # An image and its distorted copy share one group.
  groups = np.concatenate([np.arange(len(y)), np.arange(0, len(y), 3)])
  y = np.concatenate([y, y[::3]])
  x = np.concatenate([x, x[::3] + 0.01])
  tight = dataclasses.replace(OPTIONS, tolerance=1e-13, max_iterations=3000)
  chosen = solver.Candidate(0.1, 0.0)
  logits, folds, _ = held_out.cross_fit(
      lbfgs.Vectors(x, tight.standardise), y, groups, 3, chosen, tight)
  assert folds == OPTIONS.folds
  assert not np.isnan(logits).any()
  fold = folds_lib.group_folds(y, groups, folds, OPTIONS.seed)
  fitter = lbfgs.SoftmaxLbfgs.of(chosen.l2, chosen.label_smoothing, tight)
  for k in range(folds):
    held = fold == k
    # Copies held out with their source.
    assert held.any() and not set(groups[held]) & set(groups[~held])
    # The fold's logits are those of a head fitted on the other folds
    # alone (all folds are fitted as one problem).
    alone = fitter.fit(x[~held], y[~held], 3).head().logits(x[held])
    np.testing.assert_allclose(logits[held], alone, atol=2e-3)


def test_the_k_fold_grid_scores_each_fold_by_a_head_fitted_on_the_others():
  """fold_grid fits every fold of each candidate as one problem, warm
  started along the grid: each fold's logits are those of the candidate
  fitted cold on the other folds alone."""
  x, y = _overlapping(10, dim=8, spread=1.0)
  tight = dataclasses.replace(OPTIONS, tolerance=1e-13, max_iterations=3000,
                              folds=3)
  fold = folds_lib.stratified_folds(y, 3, 0)
  candidates = [solver.Candidate(1.0, 0.0), solver.Candidate(0.01, 0.0)]
  scored = held_out.fold_grid(candidates, lbfgs.Vectors(x, tight.standardise),
                              y, 3, fold, tight)
  assert len(scored) == 2
  for c, (logits, mean_theta, iterations) in zip(candidates, scored):
    assert iterations > 0 and mean_theta.shape == ((8 + 1) * 3,)
    fitter = lbfgs.SoftmaxLbfgs.of(c.l2, c.label_smoothing, tight)
    for k in range(3):
      held = fold == k
      alone = fitter.fit(x[~held], y[~held], 3).head().logits(x[held])
      np.testing.assert_allclose(logits[held], alone, atol=2e-3)


def _solved(tmp_path, overlap_seed=0, **settings):
  """A run's pieces after the default solver (or `settings`) on
  overlapping classes: the refitted head is right on all its validation
  images."""
  x, y = _overlapping(45, seed=overlap_seed)
  fold = folds_lib.stratified_folds(y, 3, seed=1)
  train, val, test = (np.flatnonzero(fold == k) for k in range(3))
  config = DEFAULTS.replace(head_solver='lbfgs', solver_l2_grid=(1e-3, 1e-4),
      distorted_copies=0, report_dir=str(tmp_path / 'reports'),
      summaries_dir=str(tmp_path / 'summaries'), projector_max_images=0,
      **settings)
  trained = solve.maybe_solve(config, x[train], y[train], ['a', 'b', 'c'],
                              x[val], y[val])
  paths = [str(tmp_path / f'{i}.jpg') for i in range(len(y))]
  images = types.SimpleNamespace(
      vectors=x, labels=y, paths=paths, rel_paths=paths,
      paths_of=lambda rows: [paths[i] for i in rows])
  split = types.SimpleNamespace(train=train, validation=val, test=test)
  return config, trained, images, split


def test_a_saturated_validation_set_cannot_drive_the_temperature_to_its_floor(
    tmp_path):
  config, trained, images, split = _solved(tmp_path)
  val_x, val_y = images.vectors[split.validation], images.labels[
      split.validation]
  # The planted fault: the exported head trained on the validation images,
  # so on them it is right and sure every time.
  assert np.all(trained.head.logits(val_x).argmax(1) == val_y)
  floor = calibration.calibrate(trained.head, val_x, val_y, 0.95, 30)
  assert floor.temperature < 1.5 * calibration.MIN_TEMPERATURE
  # What the run calibrates on (head.fine_tune without --fine_tune hands
  # calibration the validation set it reads).
  validation = head.fine_tune(
      config, None, ['a', 'b', 'c'], trained, None, images, split).validation
  confidence = head.calibrate(config, trained, *validation)
  assert confidence.temperature > 0.5, confidence.temperature
  assert 'out-of-fold' in confidence.metadata()['method']
  assert confidence.threshold > 0.5 and confidence.coverage < 1.0
  # The held-out validation accuracy is far from the refitted head's 100 %.
  report = json.loads((tmp_path / 'reports' / solve.REPORT_FILE).read_text())
  assert 0.4 < report['held_out']['validation_accuracy'] < 0.9
  assert report['held_out']['folds'] == OPTIONS.folds


def test_held_out_logits_come_from_other_heads_and_test_ece_is_reported(
    tmp_path):
  config, trained, images, split = _solved(tmp_path, overlap_seed=1)
  x, y, logits, how = head.held_out_validation(trained, images, split)
  assert x is None and len(y) == len(split.train) + len(split.validation)
  own = trained.head.logits(images.vectors[split.validation])
  held = logits[len(split.train):]
  assert np.mean(held.argmax(1) == y[len(split.train):]) < 0.9
  assert not np.allclose(own, held)
  assert 'cross-fitting' in how
  test = head.evaluate_lib.evaluate(
      trained.head, images.vectors[split.test], images.labels[split.test])
  confidence = head.calibrate(config, trained, x, y, logits, how,
                                  test=test)
  assert confidence.test_count == len(split.test)
  # Calibrated on held-out logits, the test ECE falls well below the
  # overconfident head's.
  assert confidence.test_ece_after < confidence.test_ece_before / 2
  figures = head.describe_figures(trained)
  assert 'out-of-fold' in figures['validation_metrics']


def test_the_report_gives_the_out_of_fold_accuracy_of_every_fitted_image(
    tmp_path):
  _, trained, images, split = _solved(tmp_path, overlap_seed=2)
  report = json.loads((tmp_path / 'reports' / solve.REPORT_FILE).read_text())
  section = report['held_out']
  fitted = np.concatenate([split.train, split.validation])
  assert section['held_out_count'] == len(fitted)
  # The out-of-fold logits of every training and validation image, not
  # the refitted head's own (right on nearly all of them).
  expected = np.mean(trained.held_out.logits.argmax(1) ==
                     images.labels[fitted])
  assert section['held_out_accuracy'] == expected
  own = np.mean(trained.head.logits(images.vectors[fitted]).argmax(1) ==
                images.labels[fitted])
  assert section['held_out_accuracy'] < own - 0.05


def test_every_validation_figure_is_out_of_fold_over_every_fitted_photo(
    tmp_path):
  # Planted: the refitted head is right on nearly every photo it trained
  # on, the out-of-fold predictions on about 2/3 of them.
  config, trained, images, split = _solved(tmp_path, overlap_seed=3)
  fitted = np.concatenate([split.train, split.validation])
  truth = images.labels[fitted]
  out_of_fold = float(np.mean(trained.held_out.logits.argmax(1) == truth))
  own = float(np.mean(trained.head.logits(images.vectors[fitted]).argmax(1)
                      == truth))
  assert out_of_fold < own - 0.05
  reported = head.evaluate(config, ['a', 'b', 'c'], trained, images, split)
  # The run's validation metrics, confusion and files: every training and
  # validation photo, each predicted by a head that did not train on it.
  metrics = reported.explained.metrics['validation']
  assert metrics.count == len(fitted) == 90
  assert metrics.accuracy == pytest.approx(out_of_fold)
  assert metrics.confusion.sum() == len(fitted)
  written = json.loads((tmp_path / 'reports' /
                        'validation_metrics.json').read_text())
  assert written['how'].startswith('out-of-fold predictions of the 90 '
                                   'training and validation photos, 5 folds')
  # head_solver.json gives the same figure as its validation accuracy, and
  # the validation photos alone beside it.
  section = json.loads((tmp_path / 'reports' /
                        solve.REPORT_FILE).read_text())['held_out']
  assert section['validation_count'] == len(fitted)
  assert section['validation_accuracy'] == pytest.approx(out_of_fold)
  assert section['validation_split_only']['count'] == len(split.validation)
  figures = head.describe_figures(trained)
  assert figures['validation_metrics'] == figures['temperature_and_threshold']
  assert '90 training and validation photos' in figures['validation_metrics']
  summary = pipeline._validation_figures(types.SimpleNamespace(
      explained=reported.explained))
  assert summary == {'validation_accuracy': metrics.accuracy,
                     'validation_count': 90}


def test_distorted_copies_are_not_validation_photos():
  x, y = _overlapping(30, seed=4)
  fold = folds_lib.stratified_folds(y, 3, seed=1)
  train, val, _ = (np.flatnonzero(fold == k) for k in range(3))
  source = np.arange(0, len(train), 2)  # a copy of every other photo
  train_x = np.concatenate([x[train], x[train][source] + 0.01])
  train_y = np.concatenate([y[train], y[train][source]])
  groups = np.concatenate([np.arange(len(train)), source])
  fit = solver.fit_head(train_x, train_y, 3, x[val], y[val], OPTIONS,
                        groups=held_out.Groups(groups))
  held = fit.held_out
  assert held.summary()['validation_count'] == len(train) + len(val)
  trained = train_lib.TrainResult(fit.head, fit.history, None, held,
                                  fit.train_only_head)
  images = types.SimpleNamespace(vectors=x, labels=y)
  split = types.SimpleNamespace(train=train, validation=val)
  rows = head.validation_rows(trained, split)
  np.testing.assert_array_equal(rows, np.concatenate([train, val]))
  _, truth, logits, _ = head.held_out_validation(trained, images, split)
  np.testing.assert_array_equal(truth, y[rows])
  np.testing.assert_array_equal(logits[:len(train)],
                                held.logits[:len(train)])
  np.testing.assert_array_equal(logits[len(train):], held.validation_logits)


def test_a_head_not_refitted_reports_its_own_validation_predictions(
    tmp_path):
  config, trained, images, split = _solved(tmp_path, overlap_seed=3,
                                           solver_refit=False)
  assert trained.held_out is None  # it never trained on validation
  val_x, val_y = (images.vectors[split.validation],
                  images.labels[split.validation])
  reported = head.evaluate(config, ['a', 'b', 'c'], trained, images, split)
  metrics = reported.explained.metrics['validation']
  assert metrics.count == len(split.validation)
  assert metrics.accuracy == pytest.approx(np.mean(
      trained.head.logits(val_x).argmax(1) == val_y))
  written = json.loads((tmp_path / 'reports' /
                        'validation_metrics.json').read_text())
  assert written['how'] == calibration.VALIDATION_HELD_OUT


def test_too_few_photos_to_cross_fit_judges_validation_with_a_train_only_head(
    tmp_path):
  x, y = _overlapping(45, seed=5)
  fold = folds_lib.stratified_folds(y, 3, seed=1)
  train, val, test = (np.flatnonzero(fold == k) for k in range(3))
  # One photo of a fourth class: nothing of it to hold out, so no
  # cross-fitting; the exported head still trains on validation.
  x = np.concatenate([x, x[:1] + 3.0])
  y = np.append(y, 3)
  train = np.append(train, len(y) - 1)
  config = DEFAULTS.replace(head_solver='lbfgs', solver_l2_grid=(1e-3, 1e-4),
      report_dir=str(tmp_path / 'reports'), projector_max_images=0,
      summaries_dir=str(tmp_path / 'summaries'))
  labels = ['a', 'b', 'c', 'd']
  trained = solve.maybe_solve(config, x[train], y[train], labels, x[val],
                              y[val])
  assert trained.held_out is None and trained.train_only_head is not None
  right = {name: np.mean(h.logits(x[val]).argmax(1) == y[val]) for name, h in
           (('own', trained.head), ('train_only', trained.train_only_head))}
  assert right['train_only'] < right['own'] - 0.05  # planted
  paths = [str(tmp_path / f'{i}.jpg') for i in range(len(y))]
  images = types.SimpleNamespace(
      vectors=x, labels=y, paths=paths, rel_paths=paths,
      paths_of=lambda rows: [paths[i] for i in rows])
  split = types.SimpleNamespace(train=train, validation=val, test=test)
  reported = head.evaluate(config, labels, trained, images, split)
  assert reported.explained.metrics['validation'].accuracy == pytest.approx(
      right['train_only'])
  _, truth, logits, how = head.held_out_validation(trained, images, split)
  assert how == head.TRAIN_ONLY == head.describe_figures(trained)[
      'validation_metrics']
  assert np.mean(logits.argmax(1) == truth) == pytest.approx(
      right['train_only'])


def test_near_duplicates_are_held_out_together():
  """Each training photo has a near-duplicate (a second shot: the same
  vector up to noise). Held out apart, a photo is predicted by a head that
  trained on its twin and the figure is flattering; held out together it
  is the honest one, about what new photos get."""
  x, y = _overlapping(40, seed=6)
  rng = np.random.default_rng(0)
  fold = folds_lib.stratified_folds(y, 4, seed=2)
  train, val, new = np.flatnonzero(fold < 2), np.flatnonzero(fold == 2), \
      np.flatnonzero(fold == 3)
  train_x = np.concatenate([x[train], x[train] + rng.normal(
      0, 0.05, (len(train), x.shape[1])).astype(np.float32)])
  train_y = np.concatenate([y[train], y[train]])
  twin = np.concatenate([np.arange(len(train))] * 2)
  n = len(train_y)

  def held_accuracy(groups):
    fit = solver.fit_head(train_x, train_y, 3, x[val], y[val], OPTIONS,
                          groups=groups)
    summary = fit.held_out.summary()
    assert summary['validation_count'] == n + len(val)  # every photo
    return summary['validation_accuracy'], fit

  apart, _ = held_accuracy(held_out.Groups(np.arange(n)))
  together, fit = held_accuracy(held_out.Groups(
      np.arange(n), fold=np.concatenate([twin, len(train) + np.arange(
          len(val))])))
  truth = np.mean(fit.head.logits(x[new]).argmax(1) == y[new])
  assert apart > together + 0.08 and apart > truth + 0.08  # flattered
  assert abs(together - truth) < 0.05


def test_training_groups_hold_near_duplicates_and_copies_together():
  split_ = types.SimpleNamespace(train=np.array([0, 1, 2]),
                                 validation=np.array([3, 4]))
  paths = ['/d/a/x_nohash_1.jpg', '/d/a/y.jpg', '/d/a/x_nohash_2.jpg',
           '/d/b/z_nohash_1.jpg', '/d/b/z_nohash_2.jpg']
  images = types.SimpleNamespace(paths_of=lambda rows: [paths[r] for r in rows])
  copies = types.SimpleNamespace(source=np.array([1, 2]))
  groups = vectors.training_groups(
      split_, copies, vectors.near_duplicates(images, split_))
  np.testing.assert_array_equal(groups.photo, [0, 1, 2, 1, 2])
  fold = groups.fold  # rows: 3 photos, 2 copies, then 2 validation photos
  assert fold.shape == (7,)
  assert fold[0] == fold[2] == fold[4]  # x_nohash_1, x_nohash_2, copy of 2
  assert fold[1] == fold[3] and fold[1] != fold[0]  # y and its copy
  assert fold[5] == fold[6] and fold[5] not in fold[:5]


def test_folds_count_groups_per_class_as_group_folds_deals_them():
  y = np.array([0, 0, 0, 1, 1, 1, 1, 2])
  groups = np.array([5, 5, 6, 7, 7, 7, 8, 9])  # class 0: 2, class 1: 2
  np.testing.assert_array_equal(
      folds_lib.groups_per_class(y, groups, 4), [2, 2, 1, 0])
  np.testing.assert_array_equal(
      folds_lib.groups_per_class(y, None, 4), [3, 4, 1, 0])
  # The smallest class with rows bounds the folds; a class without rows
  # does not; no rows at all: none.
  assert folds_lib.usable_folds(y[:7], groups[:7], 4, 5) == 2
  assert folds_lib.usable_folds(y[:7], None, 4, 5) == 3
  assert folds_lib.usable_folds(y, groups, 4, 5) == 1
  assert folds_lib.usable_folds(y[:0], groups[:0], 4, 5) == 0
  # Every fold group_folds deals for those counts holds each class.
  fold = folds_lib.group_folds(y[:7], groups[:7], 2, 0)
  for k in range(2):
    assert set(y[:7][fold == k]) == {0, 1}


def test_the_train_only_head_is_fitted_when_fine_tuning_needs_it(tmp_path):
  x, y = _overlapping(45, seed=5)
  fold = folds_lib.stratified_folds(y, 3, seed=1)
  train, val = np.flatnonzero(fold >= 1), np.flatnonzero(fold == 0)
  config = DEFAULTS.replace(head_solver='lbfgs', solver_l2_grid=(1e-3, 1e-4),
      report_dir=str(tmp_path / 'reports'), projector_max_images=0,
      summaries_dir=str(tmp_path / 'summaries'))
  labels = ['a', 'b', 'c']
  trained = {tune: solve.maybe_solve(config.replace(fine_tune=tune), x[train],
                                     y[train], labels, x[val], y[val])
             for tune in (False, True)}
  # Held-out predictions judge validation, so without fine-tuning nothing
  # reads a head fitted on training alone, and none is fitted.
  assert trained[False].held_out is not None
  assert trained[False].train_only_head is None
  # Fine-tuning starts from it: the chosen setting on the training rows.
  only = trained[True].train_only_head
  assert only is not None
  direct = solver.fit_head(x[train], y[train], 3, x[val], y[val],
                           dataclasses.replace(solver.SolverOptions.from_config(
                               config), train_only_head=True))
  np.testing.assert_array_equal(only.weights, direct.train_only_head.weights)
  assert not np.array_equal(only.weights, trained[True].head.weights)
  np.testing.assert_array_equal(trained[False].head.weights,
                                trained[True].head.weights)
