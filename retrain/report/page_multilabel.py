"""The results page of a multi-label run (--multi_label): report.json and a
self-contained report.html, as a single-label run's (results.py), with the
multi-label metrics in place of the confusion matrix.

Sections, in order: the headline (mean AP, exact-match ratio, macro and
micro F1, N, how the photos were held out); per label its threshold,
precision, recall, F1, AP, the photos that have it (support) and the photos
it was predicted for; the out-of-fold figures the thresholds were chosen on
(when given); the settings of the run. A label no photo of the set has
shows '-' for recall, F1 and AP and is left out of the averages (see
retrain/report/multilabel.py). Every value from the data is escaped.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

from absl import logging

from retrain.common import atomic
from retrain.common import html as html_lib
from retrain.report import multilabel as report_lib
from retrain.report import results as results_lib

_e = html_lib.escape
KIND = 'multi_label'


def build(metrics: report_lib.MultiLabelMetrics, thresholds: Sequence[float],
          held_out: Optional[dict] = None, **about) -> dict:
  """The report dict of a multi-label set.

  Args:
    metrics: the set's metrics (retrain/report/multilabel.py `compute`).
    thresholds: float [L] in [0, 1], label j's threshold (label order of
      metrics.labels).
    held_out: the out-of-fold metrics the thresholds were chosen on (the
      JSON of retrain/report/multilabel.py's write_reports), or None.
    **about: added as they are (title, set, validation, model, seconds,
      settings).
  """
  data = metrics.to_json()
  for j, item in enumerate(data['labels']):
    item['threshold'] = float(thresholds[j])
  report = {'schema_version': results_lib.SCHEMA_VERSION, 'kind': KIND,
            'labels': list(metrics.labels), 'count': metrics.count,
            'multi_label': data,
            'out_of_fold': held_out}
  report.update(about)
  return report


def _figure(value) -> str:
  """A figure in [0, 1] with three decimals, '-' when it is None."""
  return '-' if value is None else f'{value:.3f}'


def _pct(value) -> str:
  return 'n/a' if value is None else f'{100 * value:.1f}%'


def _headline(report: dict) -> List[str]:
  m = report['multi_label']
  rows = [['mean AP', _figure(m['mean_ap'])],
          ['exact match', f'{_pct(m["exact_match"])} (N={m["count"]})'],
          ['macro F1', _figure(m['macro_avg']['f1'])],
          ['micro F1', _figure(m['micro_f1'])]]
  for key, what in (('validation', 'held out'), ('model', 'model'),
                    ('model_size', 'size')):
    if report.get(key):
      rows.append([what, report[key]])
  if report.get('seconds') is not None:
    rows.append(['time taken', f'{report["seconds"]:.1f} s'])
  return [f'<h1>{_e(report.get("title", "Results"))}</h1>',
          f'<p>Multi-label: {len(report["labels"])} labels, each with its '
          f'own sigmoid and threshold; {_e(report.get("set", "test"))} '
          'set.</p>',
          '<div class="head">' + html_lib.table(rows, ['', '']) + '</div>']


def _labels_table(m: dict, title: str, note: str) -> List[str]:
  rows = [[item['label'], f'{item["threshold"]:.3f}'
           if 'threshold' in item else '-'] +
          [_figure(item[k]) for k in ('precision', 'recall', 'f1', 'ap')] +
          [item['support'], item['predicted']] for item in m['labels']]
  macro = m['macro_avg']
  rows.append(['macro average / mean AP', ''] + [
      _figure(macro[k]) for k in ('precision', 'recall', 'f1')] +
              [_figure(m['mean_ap']), m['count'], ''])
  return [f'<h2>{_e(title)}</h2>', f'<p class="muted">{_e(note)}</p>',
          html_lib.table(rows, ['label', 'threshold', 'precision', 'recall',
                                'F1', 'AP', 'support', 'predicted'])]


def page(report: dict) -> str:
  """The HTML text of a multi-label report dict (see `build`)."""
  out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
         f'<title>{_e(report.get("title", "Results"))}</title>',
         f'<style>{html_lib.CSS}.head{{font-size:1.15em}}'
         '.muted{color:#777}</style></head><body>']
  out += _headline(report)
  out += _labels_table(
      report['multi_label'], 'Per-label metrics',
      'A label is predicted when its probability is at least its '
      'threshold. AP ranks the photos by probability and does not depend '
      'on the threshold. Support: photos that have the label; predicted: '
      'photos it was predicted for; "-": no photo of the set has the label.')
  if report.get('out_of_fold'):
    held = dict(report['out_of_fold'])
    out += _labels_table(
        held, 'Out-of-fold (training + validation)',
        f'The thresholds were chosen on these held-out predictions: mean AP '
        f'{_figure(held["mean_ap"])}, exact match '
        f'{_pct(held["exact_match"])} (N={held["count"]}).')
  settings = report.get('settings') or {}
  if settings:
    out += ['<h2>Settings</h2>', html_lib.table(
        [[k, v] for k, v in sorted(settings.items())], ['setting', 'value'])]
  out.append('</body></html>\n')
  return '\n'.join(out)


def write(report_dir: str, report: dict) -> List[str]:
  """Writes report.html and report.json into report_dir atomically;
  returns their paths [html, json]."""
  os.makedirs(report_dir, exist_ok=True)
  json_path = atomic.write_json(
      os.path.join(report_dir, results_lib.REPORT_JSON), report)
  html_path = atomic.write_text(
      os.path.join(report_dir, results_lib.REPORT_HTML), page(report))
  return [html_path, json_path]


def read_out_of_fold(report_dir: str) -> Optional[dict]:
  """<report_dir>/out_of_fold_multilabel_metrics.json (the run wrote it when
  it fitted the thresholds), or None when absent or unreadable."""
  path = os.path.join(report_dir, 'out_of_fold_multilabel_metrics.json')
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) and 'labels' in data else None


def write_run(report_dir: str, metrics: report_lib.MultiLabelMetrics,
              thresholds: Sequence[float], **about) -> str:
  """The page of a run's test set, with the out-of-fold figures the run
  left in report_dir; logs and returns the page's path."""
  report = build(metrics, thresholds, read_out_of_fold(report_dir), **about)
  path = write(report_dir, report)[0]
  logging.info('Results page: %s', path)
  return path
