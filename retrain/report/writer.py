"""The end-of-run report and the TensorBoard views that explain the model.

The pipeline calls three things from here:
  * `write_run_config` before training: the run's configuration as text in
    TensorBoard (`train/run_config`);
  * `ValidationImages` as the trainer's `on_eval_head`: the validation
    confusion matrix as an image at (at most `_MAX_EVAL_IMAGES`) evaluation
    steps;
  * `finish` after the final test evaluation: per-class metrics and
    confusion matrices in the log and in --report_dir (retrain/report/metrics.py),
    and in TensorBoard the final confusion-matrix images, PR curves, test
    scalars and the embedding projector (retrain/report/tensorboard.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.data import split as split_lib
from retrain.head.model import Head
from retrain.head.train import spread
from retrain.report import metrics as metrics_lib
from retrain.report import tensorboard as tb

# A confusion image is 10-40 kB; 4000 steps at retrain.py's interval of 10
# would be 400 of them. TensorBoard's slider shows how the matrix settles
# just as well with about this many, evenly spread.
_MAX_EVAL_IMAGES = 10


def class_counts(labels: Sequence[str], y: np.ndarray,
                 split) -> Dict[str, Dict[str, int]]:
  """{label: {'train': n, 'validation': n, 'test': n}}."""
  return {name: {s: int(np.sum(y[split.subset(s)] == i))
                 for s in split_lib.SUBSETS}
          for i, name in enumerate(labels)}


def write_run_config(writer, settings: Dict, module, labels: Sequence[str],
                     y: np.ndarray, split, skipped: Sequence) -> str:
  """Writes text `run_config` at step 0; returns the markdown."""
  text = tb.config_markdown(settings, module.identity(), labels,
                            class_counts(labels, y, split), skipped)
  tb.write_text(writer, 'run_config', text, step=0)
  return text


class ValidationImages:
  """`on_eval_head` callback: the validation confusion image at evenly spread
  evaluation steps. The last step is left to `finish`, which draws the
  final head (after early stopping, the restored best weights).

  Attributes:
    steps: the steps it draws; train_head calls it at these only, and runs
      the steps in between without returning to Python.
  """

  def __init__(self, writer, val_x: np.ndarray, val_y: np.ndarray,
               labels: Sequence[str], eval_steps: Sequence[int]):
    self.writer, self.labels = writer, list(labels)
    self.val_x, self.val_y = val_x, np.asarray(val_y, np.int64)
    self.steps = set(spread(list(eval_steps)[:-1], _MAX_EVAL_IMAGES - 1))

  def __call__(self, step: int, head: Head) -> None:
    if step not in self.steps or not len(self.val_y):
      return
    pred = head.probabilities(self.val_x).argmax(axis=1)
    cm = metrics_lib.confusion_matrix(self.val_y, pred, len(self.labels))
    tb.write_confusion_image(self.writer, cm, self.labels, step,
                             title=f'Validation, step {step}')


@dataclasses.dataclass
class Explained:
  """What `finish` produced.

  Attributes:
    metrics: {'validation': Metrics, 'test': Metrics} (sets that had images).
    misclassified: the wrong test predictions, most confident first.
    report_files: paths written under --report_dir.
    projector_images: images shown in the projector.
  """
  metrics: Dict[str, metrics_lib.Metrics]
  misclassified: List[metrics_lib.Misclassified]
  report_files: List[str]
  projector_images: int


@dataclasses.dataclass
class HeldOutSet:
  """The set `finish` reports as validation: rows int64 [n] into the
  images, their held-out probabilities float32 [n, N] (column j is class
  id j) and how they were obtained (one phrase, logged with the figures;
  '' says nothing)."""
  rows: np.ndarray
  probabilities: np.ndarray
  how: str


def _log_lines(title: str, lines: Sequence[str]) -> None:
  logging.info('%s\n%s', title, '\n'.join(lines))


def finish(options, labels: Sequence[str], trained, images,
           split, test, validation: Optional[HeldOutSet] = None
           ) -> Explained:
  """Reports on the trained head.

  Args:
    options: where the reports go.
    labels: class names in class id order.
    trained: the retrain.head.train.TrainResult: its head, the last
      training step (where final summaries are written) and the step whose
      weights early stopping restored, if any.
    images: the retrain.bottlenecks.usable.UsableImages: vectors float32
      [n, D], labels int [n], paths and rel_paths [n] (full and relative
      to --image_dir).
    split: index arrays into images (train, validation, test).
    test: the retrain.head.evaluate.Evaluation of the test set (rows index
      split.test).
    validation: what the validation reports are made of (with the head
      trained on the validation images, the out-of-fold predictions of
      every training and validation photo); None: the head's own
      predictions of the validation images (it did not train on them).
  """
  head, vectors, y, paths = (trained.head, images.vectors, images.labels,
                             images.paths)
  step = trained.history[-1].step if trained.history else 0
  if validation is None:
    val_x = vectors[split.validation]
    validation = HeldOutSet(
        np.asarray(split.validation, np.int64),
        head.probabilities(val_x) if len(val_x) else
        np.zeros((0, len(labels)), np.float32), '')
  sets = {
      'validation': (y[validation.rows], validation.probabilities,
                     [paths[i] for i in validation.rows]),
      'test': (test.labels, test.probabilities,
               [paths[split.test[r]] for r in test.rows]),
  }
  metrics, wrong, files = set_reports(options, labels, sets, step,
                                      trained.best_step,
                                      how={'validation': validation.how})
  shown = _projector(options, labels, head, vectors, y, split, paths,
                     images.rel_paths)
  return Explained(metrics, wrong, files, shown)


def set_reports(options, labels: Sequence[str], sets: dict,
                step: int, best_step: Optional[int] = None, note: str = '',
                how: Optional[Dict[str, str]] = None):
  """The per-class metrics, confusion matrix and misclassified images of
  each set, logged, written to report_dir and to TensorBoard at `step`.

  Args:
    sets: {'validation' or 'test': (class ids int64 [n], probabilities
      float32 [n, N], files [n])}.
    note: added to the TensorBoard titles (e.g. ', fine-tuned').
    how: {set: how its predictions were obtained}, logged with its
      figures and written into its <set>_metrics.json (`how`).

  Returns:
    (metrics by set, the test set's misclassified images, files written).
  """
  metrics, files, wrong = {}, [], []
  summaries = options.summaries_dir
  writers = {s: tf.summary.create_file_writer(os.path.join(summaries, s))
             for s in ('validation', 'test')}
  try:
    for subset, (truth, probs, files_of_rows) in sets.items():
      if not len(truth):
        logging.info('The %s set is empty: no %s report.', subset, subset)
        continue
      m = metrics_lib.compute_metrics(truth, probs.argmax(axis=1), labels)
      metrics[subset] = m
      said = (how or {}).get(subset)
      _log_lines(f'Per-class metrics, {subset} set (N={m.count}'
                 f'{"; " + said if said else ""}){note}:',
                 metrics_lib.format_metrics(m))
      logging.info('%s set%s%s: %s.', subset.capitalize(),
                   f' ({said})' if said else '', note,
                   metrics_lib.format_summary(m))
      _log_lines(f'Confusion matrix, {subset} set (rows: true class, '
                 f'columns: predicted){note}:',
                 metrics_lib.format_confusion(m.confusion, labels))
      mis = metrics_lib.misclassified(files_of_rows, truth, probs, labels)
      if subset == 'test':
        wrong = mis
      files += metrics_lib.write_reports(options.report_dir, subset, m, mis,
                                         said)
      writer = writers[subset]
      title = f'{subset.capitalize()}, final{note}'
      if best_step is not None:
        title += f' (best weights, step {best_step})'
      tb.write_confusion_image(writer, m.confusion, labels, step, title=title)
      tb.write_pr_curves(writer, truth, probs, labels, step)
      if subset == 'test':
        tb.write_scalars(writer, {'accuracy': m.accuracy,
                                  'balanced_accuracy': m.balanced_accuracy,
                                  'precision_macro': m.macro['precision'],
                                  'recall_macro': m.macro['recall'],
                                  'f1_macro': m.macro['f1']}, step)
    if files:
      logging.info('Wrote the per-class metrics, confusion matrices and '
                   'misclassified images%s to %s.', note,
                   options.report_dir)
  finally:
    for w in writers.values():
      w.close()
  return metrics, wrong, files


def _projector(options, labels, head, vectors, y, split, paths,
               rel_paths) -> int:
  """The embedding projector over a capped, evenly spread sample of all
  usable images (every subset, so mislabelled training images show too)."""
  rows = tb.sample_rows(len(y), options.projector_max_images)
  if not len(rows):
    return 0
  started = time.monotonic()
  subset_of = np.empty(len(y), dtype=object)
  for s in split_lib.SUBSETS:
    subset_of[split.subset(s)] = s
  pred = head.probabilities(vectors[rows]).argmax(axis=1)
  run_dir = os.path.join(options.summaries_dir, 'projector')
  logging.info('Making the embedding projector: %d thumbnails...', len(rows))
  tb.write_projector(
      run_dir, vectors[rows],
      {'label': [labels[y[i]] for i in rows],
       'predicted': [labels[p] for p in pred],
       'subset': [subset_of[i] for i in rows],
       'correct': ['yes' if p == y[i] else 'no' for p, i in zip(pred, rows)],
       'file': [rel_paths[i] for i in rows]},
      [paths[i] for i in rows])
  # An event file makes the folder a run TensorBoard lists, and says what
  # the projector shows.
  writer = tf.summary.create_file_writer(run_dir)
  try:
    tb.write_text(writer, 'about',
                  f'{len(rows)} of {len(y)} images: bottleneck vectors, '
                  'coloured by `label`, `predicted`, `subset` or `correct` '
                  '(open the PROJECTOR tab).')
  finally:
    writer.close()
  logging.info('Embedding projector written to %s in %.1f s (its sprite of '
               'thumbnails while the run goes on).', run_dir,
               time.monotonic() - started)
  return len(rows)
