"""Per-class metrics, confusion matrices and the report files of a run.

Everything here is numpy and the standard library (no TensorFlow), so it can
be tested on hand-written predictions.

Conventions used throughout:
  * class ids are int in [0, N); `labels[i]` is the name of class id i;
  * a confusion matrix is int64 [N, N] with rows = true class and columns =
    predicted class, so `cm[i, j]` counts images of class i predicted as j;
  * precision, recall and F1 are fractions in [0, 1]. A class that is never
    predicted has precision 0, as scikit-learn's `zero_division=0`, and is
    still counted in the macro average, so it shows that something is
    missing. A class with no images in the set has no recall: its precision,
    recall and F1 are nan (null in JSON, '-' in CSV and the log) and it is
    left out of the macro averages (counting it as 0 would blame the model
    for photos it was never shown);
  * the balanced accuracy is the macro recall: the mean over the classes
    with images of the fraction of each class predicted right, so every
    class counts the same however many images it has.

Files written to --report_dir by `write_reports` (each written atomically,
replacing the previous run's file of the same name):
  <subset>_metrics.csv / .json          per-class precision, recall, F1,
                                        support; macro and weighted averages
  <subset>_confusion_matrix.csv / .json the confusion matrix with labels
  misclassified_<subset>.csv            every wrong prediction: file, true
                                        label, predicted label, probabilities
for <subset> in validation and test.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from retrain.common import atomic, safe_text, strict_json


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """int64 [N, N]: cm[i, j] = number of images of class i predicted as j."""
  y_true = np.asarray(y_true, np.int64).ravel()
  y_pred = np.asarray(y_pred, np.int64).ravel()
  if y_true.shape != y_pred.shape:
    raise ValueError(f'{len(y_true)} true labels but {len(y_pred)} '
                     'predictions.')
  flat = np.bincount(y_true * num_classes + y_pred,
                     minlength=num_classes * num_classes)
  return flat.reshape(num_classes, num_classes).astype(np.int64)


@dataclasses.dataclass
class Metrics:
  """Per-class and averaged metrics of one set, from its confusion matrix.

  Attributes:
    labels: class names, row i of every array is class id i.
    confusion: int64 [N, N], rows true, columns predicted.
    precision, recall, f1: float64 [N] in [0, 1]; nan for a class with no
      images in the set.
    support: int64 [N], images of each class in the set.
    accuracy: fraction correct in [0, 1] (nan for an empty set).
    macro: {'precision', 'recall', 'f1'}: unweighted means over the classes
      with images in the set.
    weighted: the same, each class weighted by its support.
  """
  labels: List[str]
  confusion: np.ndarray
  precision: np.ndarray
  recall: np.ndarray
  f1: np.ndarray
  support: np.ndarray
  accuracy: float
  macro: Dict[str, float]
  weighted: Dict[str, float]

  @property
  def count(self) -> int:
    return int(self.support.sum())

  @property
  def balanced_accuracy(self) -> float:
    """Mean recall over the classes with images, in [0, 1] (nan: none)."""
    return self.macro['recall']

  def to_json(self) -> dict:
    return {
        'count': self.count,
        'accuracy': _num(self.accuracy),
        'balanced_accuracy': _num(self.balanced_accuracy),
        'macro_f1': _num(self.macro['f1']),
        'classes': [{'label': name,
                     'precision': _num(self.precision[i]),
                     'recall': _num(self.recall[i]),
                     'f1': _num(self.f1[i]),
                     'support': int(self.support[i])}
                    for i, name in enumerate(self.labels)],
        'macro_avg': {k: _num(v) for k, v in self.macro.items()},
        'weighted_avg': {k: _num(v) for k, v in self.weighted.items()},
    }


def _num(value: float):
  """JSON has no nan: None stands for 'undefined' (an empty set)."""
  return None if value != value else float(value)  # nan != nan


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  num = num.astype(np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def metrics_from_confusion(confusion: np.ndarray,
                           labels: Sequence[str]) -> Metrics:
  """Precision, recall, F1 and support per class, and their averages."""
  cm = np.asarray(confusion, np.int64)
  tp = np.diag(cm)
  support = cm.sum(axis=1)
  predicted = cm.sum(axis=0)
  precision = _ratio(tp, predicted)
  recall = _ratio(tp, support)
  f1 = _ratio(2 * precision * recall, precision + recall)
  absent = support == 0
  for values in (precision, recall, f1):
    values[absent] = np.nan
  total = int(support.sum())
  accuracy = float(tp.sum() / total) if total else float('nan')
  per_class = {'precision': precision, 'recall': recall, 'f1': f1}
  macro = {k: float(v[~absent].mean()) if (~absent).any() else float('nan')
           for k, v in per_class.items()}
  weighted = {k: float(np.sum(v[~absent] * support[~absent]) / total)
              if total else float('nan') for k, v in per_class.items()}
  return Metrics(list(labels), cm, precision, recall, f1,
                 support.astype(np.int64), accuracy, macro, weighted)


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                    labels: Sequence[str]) -> Metrics:
  """Metrics of predictions y_pred int [n] against class ids y_true int [n]."""
  return metrics_from_confusion(
      confusion_matrix(y_true, y_pred, len(labels)), labels)


# --- Text tables for the log -------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
  """Right-aligned columns except the first, which is left-aligned."""
  widths = [max(len(str(r[c])) for r in [header, *rows])
            for c in range(len(header))]
  lines = []
  for row in [header, *rows]:
    cells = [str(row[0]).ljust(widths[0])]
    cells += [str(v).rjust(w) for v, w in zip(row[1:], widths[1:])]
    lines.append('  '.join(cells).rstrip())
  return lines


def _cell(value: float, digits: int = 3) -> str:
  """A number for the tables, '-' for nan (undefined)."""
  return '-' if value != value else f'{value:.{digits}f}'


def _metric_rows(metrics: Metrics, digits: int) -> List[list]:
  """Per-class rows, then the macro and weighted averages."""
  keys = ('precision', 'recall', 'f1')
  rows = [[name, *[_cell(getattr(metrics, k)[i], digits) for k in keys],
           int(metrics.support[i])] for i, name in enumerate(metrics.labels)]
  for name, avg in (('macro avg', metrics.macro),
                    ('weighted avg', metrics.weighted)):
    rows.append([name, *[_cell(avg[k], digits) for k in keys],
                 metrics.count])
  return rows


def format_metrics(metrics: Metrics) -> List[str]:
  """The per-class table with macro and weighted averages, one str a line
  ('-' where a class has no images)."""
  return _table(['class', 'precision', 'recall', 'f1', 'support'],
                [[str(v) for v in row] for row in _metric_rows(metrics, 3)])


def format_summary(metrics: Metrics) -> str:
  """'accuracy 90.0%, balanced accuracy 88.1%, macro F1 0.874 (5 of 5
  classes with images)'."""
  present = int(np.sum(metrics.support > 0))
  return (f'accuracy {_cell(100 * metrics.accuracy, 1)}%, balanced accuracy '
          f'{_cell(100 * metrics.balanced_accuracy, 1)}%, macro F1 '
          f'{_cell(metrics.macro["f1"])} ({present} of {len(metrics.labels)} '
          'classes with images)')


def format_confusion(confusion: np.ndarray,
                     labels: Sequence[str]) -> List[str]:
  """The confusion matrix as an aligned table: rows true, columns predicted."""
  rows = [[f'{name}'] + [str(int(v)) for v in confusion[i]]
          for i, name in enumerate(labels)]
  return _table(['true \\ predicted', *labels], rows)


# --- Files -------------------------------------------------------------------


def _csv_text(rows: Sequence[Sequence]) -> str:
  out = io.StringIO()
  csv.writer(out, lineterminator='\n').writerows(
      safe_text.csv_row(row) for row in rows)
  return out.getvalue()


@dataclasses.dataclass
class Misclassified:
  """One wrong prediction.

  Attributes:
    path: the image file.
    true_label, predicted_label: class names.
    predicted_probability: the model's probability of predicted_label.
    true_probability: the model's probability of true_label.
  """
  path: str
  true_label: str
  predicted_label: str
  predicted_probability: float
  true_probability: float


def misclassified(paths: Sequence[str], y_true: np.ndarray,
                  probabilities: np.ndarray,
                  labels: Sequence[str]) -> List[Misclassified]:
  """Wrong predictions, most confident first (the likeliest mislabelled
  images and the model's worst mistakes come first).

  Args:
    paths: [n] image files; y_true: int [n] class ids.
    probabilities: float [n, N], columns in label order.
  """
  probabilities = np.asarray(probabilities, np.float64).reshape(
      len(paths), len(labels))
  y_true = np.asarray(y_true, np.int64)
  pred = probabilities.argmax(axis=1) if len(paths) else np.zeros(0, np.int64)
  wrong = np.flatnonzero(pred != y_true)
  order = wrong[np.argsort(-probabilities[wrong, pred[wrong]], kind='stable')]
  return [Misclassified(paths[i], labels[y_true[i]], labels[pred[i]],
                        float(probabilities[i, pred[i]]),
                        float(probabilities[i, y_true[i]])) for i in order]


def write_reports(report_dir: str, subset: str, metrics: Metrics,
                  wrong: Optional[List[Misclassified]] = None,
                  how: Optional[str] = None) -> List[str]:
  """Writes the metric, confusion-matrix and misclassified files of one set.
  how: how the set's predictions were obtained (written as `how` in
  <subset>_metrics.json when given).

  Returns the paths written. See the module docstring for the file layout.
  """
  labels = metrics.labels
  written = []

  def put(name, text):
    path = os.path.join(report_dir, name)
    atomic.write_text(path, text)
    written.append(path)

  rows = [['class', 'precision', 'recall', 'f1', 'support']]
  rows += _metric_rows(metrics, 6)
  put(f'{subset}_metrics.csv', _csv_text(rows))
  put(f'{subset}_metrics.json',
      strict_json.dumps({'subset': subset, **({'how': how} if how else {}),
                         **metrics.to_json()}, indent=2) +
      '\n')

  cm_rows = [['true \\ predicted', *labels]]
  cm_rows += [[name, *[int(v) for v in metrics.confusion[i]]]
              for i, name in enumerate(labels)]
  put(f'{subset}_confusion_matrix.csv', _csv_text(cm_rows))
  put(f'{subset}_confusion_matrix.json', json.dumps({
      'subset': subset,
      'labels': labels,
      'rows': 'true class',
      'columns': 'predicted class',
      'matrix': metrics.confusion.tolist(),
  }, indent=2) + '\n')

  if wrong is not None:
    mis_rows = [['path', 'true_label', 'predicted_label',
                 'predicted_probability', 'true_probability']]
    mis_rows += [[m.path, m.true_label, m.predicted_label,
                  f'{m.predicted_probability:.6f}',
                  f'{m.true_probability:.6f}'] for m in wrong]
    put(f'misclassified_{subset}.csv', _csv_text(mis_rows))
  return written
