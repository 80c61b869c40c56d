"""The head's steps: train, evaluate on the test set, fine-tune, calibrate."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np
from absl import logging

from retrain.bottlenecks import precision as precision_lib
from retrain.bottlenecks import usable as usable_lib
from retrain.common.progress import Progress
from retrain.config import Config
from retrain.data import split as split_lib
from retrain.export import formats as export_formats
from retrain.finetune import plans as plans_lib
from retrain.finetune import run as finetune_lib
from retrain.head import calibration as calibration_lib
from retrain.head import evaluate as evaluate_lib
from retrain.head import train as train_lib
from retrain.report import confidence
from retrain.report import deployment as deployment_report
from retrain.report import head_solver as solve_lib
from retrain.report import summaries as summaries_lib
from retrain.report import writer as explain_lib


@dataclasses.dataclass
class Reported:
  """The test evaluation and reports of a head.

  Attributes:
    test: the Evaluation of the test set.
    misclassified: a line describing each wrong test prediction.
    explained: per-class metrics and report files (retrain.report.writer).
  """
  test: evaluate_lib.Evaluation
  misclassified: List[str]
  explained: Optional[explain_lib.Explained]


@dataclasses.dataclass
class Tuned:
  """What `fine_tune` hands on.

  Attributes:
    module: the feature module the exports hold (fine-tuned or as given).
    trained: the head the exports hold.
    reported: the test evaluation and reports of module and head.
    validation: the arguments calibrate reads after the head (see
      held_out_validation).
    fine_tuned: the retrain.finetune.run.FineTuned, or None without
      config.finetune.fine_tune.
  """
  module: object
  trained: train_lib.TrainResult
  reported: Reported
  validation: tuple
  fine_tuned: Optional[finetune_lib.FineTuned]


# How the validation figures were obtained when the exported head trained
# on the validation photos but some class had too few photos to cross-fit.
TRAIN_ONLY = ('the validation photos, predicted by the chosen setting '
              'fitted on the training photos alone (too few photos of some '
              'class to cross-fit the exported head)')


def held_out_validation(trained: train_lib.TrainResult,
                        images: usable_lib.UsableImages,
                        split: split_lib.Split) -> tuple:
  """What calibration and the validation reports read, never predictions of
  a head on images it trained on: (vectors float32 [n, D] or None, class
  ids int64 [n], logits float32 [n, N] or None, how they were held out).

  Without trained.held_out: the validation vectors (the head did not train
  on them) and no logits, or with trained.train_only_head (the head
  trained on validation, too few photos to cross-fit) that head's logits
  of the validation photos. With it (the head trained on validation): the
  out-of-fold logits of the training photos (copies left out) and of the
  validation photos, in that order (the images of validation_rows).
  """
  val_y = images.labels[split.validation]
  held = trained.held_out
  if held is None and trained.train_only_head is not None:
    return (None, val_y, trained.train_only_head.logits(
        images.vectors[split.validation]), TRAIN_ONLY)
  if held is None:
    return (images.vectors[split.validation], val_y, None,
            calibration_lib.VALIDATION_HELD_OUT)
  return (None, images.labels[validation_rows(trained, split)],
          held.logits[held.photo_rows], held.method)


def _fitted_photos(held, rows: np.ndarray) -> np.ndarray:
  """Indices into [split.train; split.validation] of held's photo rows
  (rows of [train_x; val_x]: the training photos in split order, then
  their distorted copies, then the validation photos)."""
  copies = held.n_train - int(np.sum(rows < held.n_train))
  return np.where(rows < held.n_train, rows, rows - copies)


def validation_rows(trained: train_lib.TrainResult,
                    split: split_lib.Split) -> np.ndarray:
  """int64 indices into the images of the rows held_out_validation gives:
  the validation images, or with trained.held_out every training and
  validation photo (the out-of-fold predictions)."""
  if trained.held_out is None:
    return np.asarray(split.validation, np.int64)
  fitted = np.concatenate([split.train, split.validation]).astype(np.int64)
  return fitted[_fitted_photos(trained.held_out,
                               trained.held_out.photo_rows)]


def validation_predictions(trained: train_lib.TrainResult,
                           images: usable_lib.UsableImages,
                           split: split_lib.Split
                           ) -> explain_lib.HeldOutSet:
  """The predictions every figure called validation is computed on: the
  head's own of the validation images (it did not train on them), or
  with trained.held_out the out-of-fold ones of every training and
  validation photo (validation_rows), and how they were obtained."""
  held = trained.held_out
  if held is None:
    rows = np.asarray(split.validation, np.int64)
    judge = trained.train_only_head or trained.head
    return explain_lib.HeldOutSet(
        rows, judge.probabilities(images.vectors[rows]) if len(rows)
        else np.zeros((0, len(judge.biases)), np.float32),
        calibration_lib.VALIDATION_HELD_OUT if judge is trained.head else
        TRAIN_ONLY)
  return explain_lib.HeldOutSet(
      validation_rows(trained, split), calibration_lib.softmax(
          held.logits[held.photo_rows]).astype(np.float32), held.method)


def describe_figures(trained: train_lib.TrainResult, tuned=None,
                     novelty=None) -> dict:
  """How each figure called validation, and each threshold, was obtained
  (for the log and run_summary.json); with novelty (the fitted
  retrain.head.novelty.Novelty) its threshold's too."""
  held = trained.held_out
  if tuned is not None and tuned.metadata['fine_tuned'].get(
      'kept_frozen_head'):
    tuned = None
  if tuned is not None:
    source = ('the fine-tuned network on the validation images (it trained '
              'on the training images only; the epoch was chosen on them)')
  elif held is None:
    source = (calibration_lib.VALIDATION_HELD_OUT
              if trained.train_only_head is None else TRAIN_ONLY)
  else:
    source = held.method
  return {
      'validation_metrics': source,
      'temperature_and_threshold': source,
      'test_metrics': 'the exported head on the test images, which nothing '
                      'was fitted or chosen on',
      **({'novelty_threshold': novelty.held_out} if novelty is not None
         else {}),
  }


def train_settings(config: Config) -> train_lib.Settings:
  """What to train, from the config (also the streaming path's)."""
  return train_lib.Settings(
      steps=config.head.how_many_training_steps,
      learning_rate=config.head.learning_rate,
      batch_size=config.head.train_batch_size,
      eval_step_interval=config.head.eval_step_interval,
      validation_batch_size=config.head.validation_batch_size,
      seed=config.head.random_seed,
      options=config.head)


@dataclasses.dataclass
class Trained:
  """What `train` hands on.

  Attributes:
    result: the head, its history and held-out predictions
      (retrain.head.train.TrainResult).
    intermediate: the intermediate-graph hook (its files are exported), or
      None.
  """
  result: train_lib.TrainResult
  intermediate: Optional[object]


def train(config: Config, module, found, split: split_lib.Split,
          training, groups: Optional[np.ndarray] = None) -> Trained:
  """Trains the head on `training` (a retrain.steps.vectors.TrainingSet of
  found's images: a retrain.steps.vectors.Vectors), writing TensorBoard
  summaries. groups: training_groups."""
  labels, images = found.labels, found.images
  train_x, train_y = training.x, training.y
  precision_lib.close(module)  # every vector is computed: fewer MiB below
  writers = summaries_lib.Writers(config.outputs.summaries_dir)
  intermediate = export_formats.intermediate_hook(
      config.outputs, module, labels)
  explain_lib.write_run_config(writers.train, config.flat(),
                               module, labels, images.labels, split,
                               found.computed.failures)
  val_x = images.vectors[split.validation]
  val_y = images.labels[split.validation]
  points = train_lib.eval_steps(config.head.how_many_training_steps,
                                config.head.eval_step_interval)
  log = train_lib.EvalLog(points)
  settings = train_settings(config)
  progress = None  # SGD's bar (steps, rate, time left), made when SGD runs

  def on_eval(point):
    log(point)
    progress.update_to(point.step + 1)

  hooks = train_lib.Hooks(
      writers=writers, on_eval=on_eval,
      head_every=config.outputs.intermediate_store_frequency, on_head=intermediate,
      on_eval_head=explain_lib.ValidationImages(writers.validation, val_x,
                                                val_y, labels, points))
  try:
    # The converging solver (None: this run trains with SGD).
    trained = solve_lib.maybe_solve(config, train_x, train_y, labels, val_x,
                                    val_y, writers, groups=groups)
    if trained is None:
      progress = Progress('Training', config.head.how_many_training_steps,
                          unit='steps')
      trained = train_lib.train_head(train_x, train_y, len(labels), val_x,
                                     val_y, settings, hooks)
  finally:
    writers.close()
    if progress is not None:
      progress.finish()
  log.finish()
  return Trained(trained, intermediate)


def report_test(config: Config, labels: Sequence[str],
                test: evaluate_lib.Evaluation,
                images: usable_lib.UsableImages, split: split_lib.Split,
                test_paths: Optional[Sequence[str]] = None,
                after: str = '') -> List[str]:
  """Logs the test accuracy (and each mistake when asked); returns the
  misclassified lines. Also the streaming path's (retrain/steps/streamed.py).
  test_paths: the file of each row test was evaluated on (default: the
  split's test images); after: ' after fine-tuning' or ''."""
  # Retrain.py's line plus the Wilson 95% interval.
  logging.info('%s', confidence.format_accuracy(
      test.accuracy, test.count, prefix=f'Final test accuracy{after} ='))
  hint = confidence.narrowing_hint(test.accuracy, test.count)
  if hint:
    logging.info('%s', hint)
  misclassified = evaluate_lib.format_misclassified(
      test, images.paths_of(split.test) if test_paths is None else test_paths,
      labels)
  if config.outputs.print_misclassified_test_images:
    logging.info('=== MISCLASSIFIED TEST IMAGES%s ===', after.upper())
    for line in misclassified:
      logging.info(line)
  return misclassified


def evaluate(config: Config, labels: Sequence[str],
             trained: train_lib.TrainResult, images: usable_lib.UsableImages,
             split: split_lib.Split):
  """The test accuracy and the reports of the head."""
  test = evaluate_lib.evaluate(trained.head, images.vectors[split.test],
                               images.labels[split.test],
                               config.head.test_batch_size, seed=config.head.random_seed)
  misclassified = report_test(config, labels, test, images, split)
  explained = explain_lib.finish(
      config.outputs, labels, trained, images, split, test,
      validation=validation_predictions(trained, images, split))
  for name, how in describe_figures(trained).items():
    logging.info('How the run measured %s: %s.', name.replace('_', ' '), how)
  return Reported(test, misclassified, explained)


def fine_tune(config: Config, module, labels: Sequence[str],
              trained: train_lib.TrainResult, reported: Reported,
              images: usable_lib.UsableImages, split: split_lib.Split,
              copies=None) -> Tuned:
  """Fine-tunes the top of the module with the head.

  Args:
    reported: what `evaluate` returned for the head alone.
    copies: the training images' distorted copies (what ensemble members
      left out by fine_tune_members train on), or None.

  Returns:
    Tuned: the fine-tuned feature extractor and head; the test evaluation
    and reports of the fine-tuned network (its reports written over the
    head's); the validation set calibration reads: (vectors float32 [n, D]
    from the fine-tuned network, their class ids int64 [n]). Without
    config.finetune.fine_tune: its arguments, held_out_validation, and None (an
    earlier run's fine_tune report is moved aside).
  """
  if not config.finetune.fine_tune:
    finetune_lib.retire_report(config.outputs.report_dir)
    return Tuned(module, trained, reported, held_out_validation(
        trained, images, split), None)
  # Fine-tuning chooses its epoch on validation, so it starts from a head
  # that did not train on validation (the frozen head may have).
  start = trained.train_only_head or trained.head
  if trained.train_only_head is not None:
    logging.info('Fine-tuning starts from the head fitted on the training '
                 'images alone, so that its validation set stays held out.')
  tuned = finetune_lib.fine_tune(
      config, module, start, labels,
      plans_lib.Images(images.paths, images.digests, images.labels,
                            split),
      fixed=finetune_lib.FixedFeatures(images.vectors, copies))
  versus = _versus_frozen(trained, images, split, tuned)
  tuned.metadata['fine_tuned']['versus_frozen'] = versus
  if not versus['keep']:
    logging.info(
        'Fine-tuning: the run keeps the frozen head: on the same %d held-out '
        'validation images the fine-tuned network (epoch %d) scores %.1f%%, '
        'the frozen head %.1f%%; fine-tuning is kept only when it is more '
        'than %.1f points ahead (one standard deviation of the difference).',
        versus['validation_count'], tuned.fit.best_epoch,
        100 * versus['fine_tuned_validation_accuracy'],
        100 * versus['frozen_validation_accuracy'], 100 * versus['margin'])
    tuned.metadata['fine_tuned']['kept_frozen_head'] = True
    finetune_lib.write_report(config.outputs.report_dir, tuned)
    return Tuned(module, trained, reported, held_out_validation(
        trained, images, split), tuned)
  trained = dataclasses.replace(trained, head=tuned.head, held_out=None,
                                train_only_head=None)
  return Tuned(tuned.module, trained, report_fine_tuned(
      config, labels, trained, reported.explained, images, split, tuned),
               (tuned.validation_features, tuned.validation_labels), tuned)


def _versus_frozen(trained: train_lib.TrainResult,
                   images: usable_lib.UsableImages, split: split_lib.Split,
                   tuned: finetune_lib.FineTuned) -> dict:
  """finetune_lib.versus_frozen on the validation images both predicted:
  the fine-tuned network's kept epoch against the frozen head's held-out
  predictions; never keep when fine-tuning kept epoch 0 (its start)."""
  held = trained.held_out
  frozen_logits = ((trained.train_only_head or trained.head).logits(
      images.vectors[split.validation]) if held is None else
                   held.validation_logits)
  position = {int(row): i for i, row in enumerate(split.validation)}
  at = np.array([position[int(r)] for r in tuned.validation_rows], np.int64)
  frozen_right = frozen_logits[at].argmax(1) == images.labels[split.validation][at]
  tuned_right = (tuned.head.logits(tuned.validation_features).argmax(1) ==
                 tuned.validation_labels)
  versus = finetune_lib.versus_frozen(tuned_right, frozen_right)
  # Epoch 0 is the starting head on the unchanged network: nothing tuned.
  versus['keep'] = versus['keep'] and tuned.fit.best_epoch > 0
  return versus


def report_fine_tuned(config: Config, labels: Sequence[str],
                      trained: train_lib.TrainResult, explained,
                      images: usable_lib.UsableImages, split: split_lib.Split,
                      tuned: finetune_lib.FineTuned) -> Reported:
  """The test evaluation and reports of the fine-tuned network: the test
  accuracy line and the validation and test reports again, as `evaluate`
  gave them for the head alone."""
  test = evaluate_lib.evaluate(trained.head, tuned.test_features,
                               tuned.test_labels, config.head.test_batch_size,
                               seed=config.head.random_seed)
  test_paths = [images.paths[i] for i in tuned.test_rows]
  misclassified = report_test(config, labels, test, images, split,
                              test_paths, after=' after fine-tuning')
  sets = {'validation': (tuned.validation_labels, trained.head.probabilities(
      tuned.validation_features), [images.paths[i]
                                   for i in tuned.validation_rows]),
          'test': (test.labels, test.probabilities,
                   [test_paths[r] for r in test.rows])}
  metrics, wrong, files = explain_lib.set_reports(
      config.outputs, labels, sets,
      trained.history[-1].step if trained.history else 0, note=', fine-tuned')
  return Reported(test, misclassified, dataclasses.replace(
      explained, metrics=metrics, misclassified=wrong, report_files=files))


def calibrate(config: Config, trained: train_lib.TrainResult,
              validation_x: Optional[np.ndarray], validation_y: np.ndarray,
              logits: Optional[np.ndarray] = None,
              held_out: str = calibration_lib.VALIDATION_HELD_OUT,
              test: Optional[evaluate_lib.Evaluation] = None
              ) -> calibration_lib.Confidence:
  """The temperature and the rejection threshold, chosen on
  held-out images: validation vectors float32 [n, D] the head did not train
  on, or out-of-fold `logits` float32 [n, N] (held_out_validation), with
  class ids [n]; the test ECE before and after from `test`. Logged and
  written to TensorBoard."""
  options = config.deploy
  confidence = calibration_lib.calibrate(
      trained.head, validation_x, validation_y, options.target_precision,
      options.calibration_min_images, options.calibrate_confidence,
      logits=logits, held_out=held_out)
  if test is not None and test.count:
    confidence = confidence.with_test(
        np.log(np.maximum(test.probabilities.astype(np.float64), 1e-300)),
        test.labels)
  deployment_report.log_confidence(confidence)
  deployment_report.write_tensorboard(
      config.outputs.summaries_dir, confidence,
      trained.history[-1].step if trained.history else 0)
  return confidence
