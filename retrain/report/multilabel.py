"""Metrics and report files of a multi-label run (numpy, no TensorFlow).

Conventions: truth bool [n, L] (truth[i, j]: photo i has label j);
probabilities float [n, L] in [0, 1], each label on its own; thresholds
float [L]: label j is predicted when its probability is at least
thresholds[j]. Per label, on one set of photos:

- precision, recall, F1 of the predicted labels at the thresholds; support
  the photos that have the label;
- AP (average precision): the mean, over the photos that have the label,
  of the precision among the photos ranked at or above it by probability
  (the area under the precision-recall curve, as scikit-learn's
  average_precision_score); it does not depend on the threshold.

A label no photo of the set has gets nan (null in JSON, '-' in the log)
for recall, F1 and AP, and is left out of the macro averages and the mean
AP. Over the set: mAP (mean AP), macro precision / recall / F1, micro F1
(all photo-label pairs pooled) and the exact-match ratio (the fraction of
photos whose predicted labels are exactly their labels).

Files in --report_dir: <subset>_multilabel_metrics.json and .csv.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Dict, List, Sequence

import numpy as np

from retrain.common import atomic


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
  """AP of one label: truth bool [n], scores float [n]; nan when no photo
  has the label. Photos of equal score count as ranked together."""
  truth = np.asarray(truth, bool)
  positives = int(truth.sum())
  if not positives:
    return float('nan')
  order = np.argsort(-np.asarray(scores, np.float64), kind='stable')
  s, t = np.asarray(scores, np.float64)[order], truth[order]
  tp = np.cumsum(t)
  # At a run of equal scores every member sees the run's last counts.
  last = np.append(s[1:] != s[:-1], True)
  ends = np.flatnonzero(last)
  run_end = ends[np.searchsorted(ends, np.arange(len(s)))]
  precision = tp[run_end] / (run_end + 1)
  return float(np.sum(precision[t]) / positives)


@dataclasses.dataclass
class MultiLabelMetrics:
  """The metrics of one set (see the module docstring).

  Attributes:
    labels: label names, row j is label j.
    precision, recall, f1, ap: float64 [L] (nan where undefined).
    support: int64 [L] photos with each label; predicted: int64 [L]
      photos each label was predicted for.
    count: photos in the set.
    exact_match: fraction of photos predicted exactly (nan: no photo).
    micro_f1: F1 over all photo-label pairs.
  """
  labels: List[str]
  precision: np.ndarray
  recall: np.ndarray
  f1: np.ndarray
  ap: np.ndarray
  support: np.ndarray
  predicted: np.ndarray
  count: int
  exact_match: float
  micro_f1: float

  def _mean(self, values: np.ndarray) -> float:
    present = (self.support > 0) & ~np.isnan(values)
    return float(values[present].mean()) if present.any() else float('nan')

  @property
  def mean_ap(self) -> float:
    return self._mean(self.ap)

  @property
  def macro(self) -> Dict[str, float]:
    return {k: self._mean(getattr(self, k)) for k in ('precision', 'recall',
                                                      'f1')}

  def to_json(self) -> dict:
    return {'count': self.count, 'exact_match': _num(self.exact_match),
            'mean_ap': _num(self.mean_ap), 'micro_f1': _num(self.micro_f1),
            'macro_avg': {k: _num(v) for k, v in self.macro.items()},
            'labels': [{'label': name, 'precision': _num(self.precision[j]),
                        'recall': _num(self.recall[j]),
                        'f1': _num(self.f1[j]), 'ap': _num(self.ap[j]),
                        'support': int(self.support[j]),
                        'predicted': int(self.predicted[j])}
                       for j, name in enumerate(self.labels)]}


def _num(value: float):
  return None if value != value else float(value)


def _cell(value: float) -> str:
  return '-' if value != value else f'{value:.3f}'


def compute(truth: np.ndarray, probabilities: np.ndarray,
            thresholds: np.ndarray, labels: Sequence[str]
            ) -> MultiLabelMetrics:
  """The metrics of predictions at `thresholds` (module docstring)."""
  truth = np.asarray(truth, bool).reshape(-1, len(labels))
  probabilities = np.asarray(probabilities, np.float64).reshape(truth.shape)
  pred = probabilities >= np.asarray(thresholds, np.float64)[None, :]
  tp = np.sum(pred & truth, axis=0)
  support, predicted = truth.sum(axis=0), pred.sum(axis=0)
  nan = np.full(len(labels), np.nan)
  precision = np.divide(tp, predicted, out=np.zeros(len(labels)),
                        where=predicted > 0)
  recall = np.divide(tp, support, out=nan.copy(), where=support > 0)
  f1 = np.divide(2 * tp, support + predicted, out=nan.copy(),
                 where=support > 0)
  precision[(support == 0) & (predicted == 0)] = np.nan
  ap = np.array([average_precision(truth[:, j], probabilities[:, j])
                 for j in range(len(labels))])
  total = support.sum() + predicted.sum()
  return MultiLabelMetrics(
      list(labels), precision, recall, f1, ap, support.astype(np.int64),
      predicted.astype(np.int64), len(truth),
      float(np.mean(np.all(pred == truth, axis=1))) if len(truth)
      else float('nan'),
      float(2 * tp.sum() / total) if total else float('nan'))


def format_metrics(m: MultiLabelMetrics, thresholds) -> List[str]:
  """The per-label table and the set's summary line, one str a line."""
  rows = [['label', 'threshold', 'precision', 'recall', 'f1', 'AP',
           'support']]
  rows += [[name, f'{thresholds[j]:.3f}', _cell(m.precision[j]),
            _cell(m.recall[j]), _cell(m.f1[j]), _cell(m.ap[j]),
            str(int(m.support[j]))] for j, name in enumerate(m.labels)]
  macro = m.macro
  rows.append(['macro avg / mAP', '', _cell(macro['precision']),
               _cell(macro['recall']), _cell(macro['f1']), _cell(m.mean_ap),
               str(m.count)])
  widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
  lines = ['  '.join([r[0].ljust(widths[0])] + [
      v.rjust(w) for v, w in zip(r[1:], widths[1:])]).rstrip() for r in rows]
  return lines + [summary_line(m)]


def summary_line(m: MultiLabelMetrics) -> str:
  """'mAP 0.912, exact match 71.0% (N=72), macro F1 0.850, micro F1 0.9'."""
  exact = '-' if m.exact_match != m.exact_match else (
      f'{100 * m.exact_match:.1f}%')
  return (f'mAP {_cell(m.mean_ap)}, exact match {exact} (N={m.count}), '
          f'macro F1 {_cell(m.macro["f1"])}, micro F1 {_cell(m.micro_f1)}')


def write_reports(report_dir: str, subset: str, m: MultiLabelMetrics,
                  thresholds) -> List[str]:
  """Writes <subset>_multilabel_metrics.json and .csv; returns the paths."""
  os.makedirs(report_dir, exist_ok=True)
  data = dict(subset=subset, **m.to_json())
  for j, item in enumerate(data['labels']):
    item['threshold'] = float(thresholds[j])
  json_path = os.path.join(report_dir, f'{subset}_multilabel_metrics.json')
  atomic.write_text(json_path, json.dumps(data, indent=2) + '\n')
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['label', 'threshold', 'precision', 'recall', 'f1', 'ap',
                   'support'])
  for item in data['labels']:
    writer.writerow([item['label'], f'{item["threshold"]:.6f}'] + [
        '-' if item[k] is None else f'{item[k]:.6f}'
        for k in ('precision', 'recall', 'f1', 'ap')] + [item['support']])
  csv_path = os.path.join(report_dir, f'{subset}_multilabel_metrics.csv')
  atomic.write_text(csv_path, out.getvalue())
  return [json_path, csv_path]
