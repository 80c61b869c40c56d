"""Finite numbers and clean text in what retrain and label_image write:
strict JSON, CSV cells a spreadsheet will not run, names that cannot
drive the terminal."""

import csv
import io
import json
import math

from retrain.common import atomic, safe_text, strict_json
from retrain.report import skipped as skipped_lib
from tools import label_image


def test_json_is_strict_nan_written_as_null(tmp_path):
  value = {'a': float('nan'), 'b': [1.0, float('inf')], 'c': (2, 'x')}
  text = strict_json.dumps(value)
  assert json.loads(text, parse_constant=lambda c: 1 / 0) == {
      'a': None, 'b': [1.0, None], 'c': [2, 'x']}
  atomic.write_json(str(tmp_path / 'm.json'), {'test_accuracy': math.nan})
  assert 'NaN' not in (tmp_path / 'm.json').read_text()


def test_label_image_json_has_no_nan():
  records = [label_image.Record('a.jpg', [('x', float('nan'))])]
  text = label_image.format_records(records, 'json')
  assert 'NaN' not in text and json.loads(text)[0]['predictions'][0][
      'probability'] is None


def test_csv_cells_that_a_spreadsheet_would_run_are_text(tmp_path):
  assert safe_text.csv_cell('=HYPERLINK("http://x","y")') == (
      '\'=HYPERLINK("http://x","y")')
  for start in '+-@\t\r':
    assert safe_text.csv_cell(start + 'cmd').startswith("'")
  assert safe_text.csv_cell('roses') == 'roses' and safe_text.csv_cell(-1) == -1
  skipped_lib.write_skipped_report(str(tmp_path), [('=cmd|calc.jpg', '@SUM(1)')])
  rows = list(csv.reader(io.StringIO(
      (tmp_path / skipped_lib.SKIPPED_CSV).read_text())))
  assert rows[1] == ["'=cmd|calc.jpg", "'@SUM(1)"]
  records = [label_image.Record('-x.jpg', [('=HYPERLINK(1)', 0.9)])]
  row = list(csv.reader(io.StringIO(label_image.format_records(records,
                                                               'csv'))))[1]
  assert row[0] == "'-x.jpg" and row[2] == "'=HYPERLINK(1)"


def test_label_image_table_escapes_control_characters():
  records = [label_image.Record('\x1b]0;pwned\x07a.jpg',
                                [('\u202eroses', 0.9)]),
             label_image.Record('b\x1b[2J.jpg', error='bad \x1b[31m')]
  table = label_image.format_records(records, 'table')
  assert '\x1b' not in table and '\u202e' not in table
  assert '\\x1b]0;pwned\\x07a.jpg' in table and '\\u202eroses' in table
