"""The results page of a multi-label run (retrain/report/page_multilabel.py):
per-label precision, recall, F1 and AP, mean AP and the exact-match ratio."""

import json
import re

import numpy as np

from retrain.report import multilabel as report_lib
from retrain.report import page_multilabel


def _metrics():
  truth = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 1, 0]], bool)
  probs = np.array([[0.9, 0.2, 0.1], [0.8, 0.4, 0.3], [0.3, 0.7, 0.2],
                    [0.6, 0.9, 0.1]])
  return report_lib.compute(truth, probs, [0.5, 0.5, 0.5],
                            ['a', 'b<script>', 'c'])


def _row(text, first_cell):
  """The cells of the table row starting with first_cell, as text."""
  match = re.search(r'<tr><td>' + re.escape(first_cell) + r'</td>(.*?)</tr>',
                    text)
  assert match, first_cell
  return re.findall(r'<td>(.*?)</td>', match.group(1))


def test_the_page_shows_each_labels_metrics_map_and_exact_match(tmp_path):
  m = _metrics()
  held = json.loads(json.dumps(m.to_json()))
  report = page_multilabel.build(m, [0.5, 0.45, 0.5], held, title='Bloods',
                                 settings={'multi_label': 'True'})
  html_path, json_path = page_multilabel.write(str(tmp_path), report)
  text = open(html_path, encoding='utf-8').read()
  # b is missed on photo 1 (0.4 < 0.5): 3 of 4 photos exact; a and b AP 1.
  assert 'exact match</td><td>75.0% (N=4)' in text
  assert 'mean AP</td><td>1.000' in text
  assert _row(text, 'a') == ['0.500', '1.000', '1.000', '1.000', '1.000',
                             '3', '3']
  assert _row(text, 'b&lt;script&gt;')[:5] == ['0.450', '1.000', '0.667',
                                               '0.800', '1.000']
  # c: no photo has it: undefined, shown '-', left out of the averages.
  assert _row(text, 'c')[1:5] == ['-', '-', '-', '-']
  assert '<script>' not in text and 'Out-of-fold' in text
  data = json.load(open(json_path, encoding='utf-8'))
  assert data['kind'] == 'multi_label'
  assert data['multi_label']['exact_match'] == 0.75
  assert [x['threshold'] for x in data['multi_label']['labels']] == [
      0.5, 0.45, 0.5]
  assert data['multi_label']['labels'][2]['ap'] is None


def test_the_run_page_reads_the_out_of_fold_figures_when_present(tmp_path):
  m = _metrics()
  path = page_multilabel.write_run(str(tmp_path), m, [0.5] * 3)
  assert 'Out-of-fold' not in open(path, encoding='utf-8').read()
  report_lib.write_reports(str(tmp_path), 'out_of_fold', m, [0.5] * 3)
  path = page_multilabel.write_run(str(tmp_path), m, [0.5] * 3)
  assert 'Out-of-fold (training + validation)' in open(
      path, encoding='utf-8').read()
