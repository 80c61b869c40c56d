"""Per-class metrics against hand-computed values, the text tables, and the
report files."""

import csv
import json
import math

import numpy as np
import pytest

from retrain.report import metrics as report

LABELS = ['cat', 'dog', 'fox']
# 10 predictions worked out by hand below.
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]


def test_confusion_matrix_rows_true_columns_predicted():
  cm = report.confusion_matrix(Y_TRUE, Y_PRED, 3)
  assert cm.dtype == np.int64
  assert cm.tolist() == [[2, 1, 1],
                         [1, 2, 0],
                         [0, 1, 2]]


def test_metrics_match_hand_computed_values():
  m = report.compute_metrics(Y_TRUE, Y_PRED, LABELS)
  # cat: tp 2, predicted 3, support 4 -> p 2/3, r 1/2, f1 = 2pr/(p+r) = 4/7
  # dog: tp 2, predicted 4, support 3 -> p 1/2, r 2/3, f1 4/7
  # fox: tp 2, predicted 3, support 3 -> p 2/3, r 2/3, f1 2/3
  np.testing.assert_allclose(m.precision, [2 / 3, 1 / 2, 2 / 3])
  np.testing.assert_allclose(m.recall, [1 / 2, 2 / 3, 2 / 3])
  np.testing.assert_allclose(m.f1, [4 / 7, 4 / 7, 2 / 3])
  assert m.support.tolist() == [4, 3, 3]
  assert m.accuracy == pytest.approx(0.6)
  assert m.macro['precision'] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
  assert m.macro['f1'] == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)
  # Weighted recall is always the accuracy.
  assert m.weighted['recall'] == pytest.approx(0.6)
  assert m.weighted['precision'] == pytest.approx(
      (4 * 2 / 3 + 3 * 1 / 2 + 3 * 2 / 3) / 10)


def test_never_predicted_scores_zero_and_absent_classes_are_left_out():
  m = report.compute_metrics([0, 0, 1], [0, 0, 0], ['a', 'b', 'c'])
  # b has an image but is never predicted: 0, counted in the averages.
  assert m.precision.tolist()[:2] == [2 / 3, 0.0]
  assert m.recall.tolist()[:2] == [1.0, 0.0]
  assert m.support.tolist() == [2, 1, 0]
  assert not np.isnan(m.f1[:2]).any()
  # c has no images: undefined, not 0, and left out of the macro averages.
  assert np.isnan([m.precision[2], m.recall[2], m.f1[2]]).all()
  assert m.macro['recall'] == pytest.approx(1 / 2)
  assert m.balanced_accuracy == pytest.approx(1 / 2)
  assert m.macro['f1'] == pytest.approx((0.8 + 0.0) / 2)
  data = json.loads(json.dumps(m.to_json()))
  assert data['classes'][2] == {'label': 'c', 'precision': None,
                                'recall': None, 'f1': None, 'support': 0}
  assert data['balanced_accuracy'] == pytest.approx(0.5)
  assert data['macro_f1'] == pytest.approx(0.4)
  assert report.format_metrics(m)[3].split() == ['c', '-', '-', '-', '0']
  assert report.format_summary(m) == (
      'accuracy 66.7%, balanced accuracy 50.0%, macro F1 0.400 (2 of 3 '
      'classes with images)')


def test_balanced_accuracy_is_the_mean_recall():
  # 8 of class 0 all right, 2 of class 1 both wrong: accuracy 0.8 but
  # the balanced accuracy shows that class 1 is never recognised.
  m = report.compute_metrics([0] * 8 + [1] * 2, [0] * 10, ['big', 'small'])
  assert m.accuracy == pytest.approx(0.8)
  assert m.balanced_accuracy == pytest.approx(0.5)


def test_empty_set_has_nan_accuracy_and_null_in_json():
  m = report.compute_metrics([], [], LABELS)
  assert math.isnan(m.accuracy)
  assert json.loads(json.dumps(m.to_json()))['accuracy'] is None


def test_tables_are_aligned():
  m = report.compute_metrics(Y_TRUE, Y_PRED, LABELS)
  lines = report.format_metrics(m)
  assert lines[0].split() == ['class', 'precision', 'recall', 'f1', 'support']
  assert lines[1].split() == ['cat', '0.667', '0.500', '0.571', '4']
  assert lines[-1].split()[-1] == '10'
  # Numbers end in the same column on every line.
  assert len({len(line) for line in lines}) == 1
  cm_lines = report.format_confusion(m.confusion, LABELS)
  assert cm_lines[1].split() == ['cat', '2', '1', '1']
  assert len({len(line) for line in cm_lines}) == 1


def test_misclassified_most_confident_first():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])
  wrong = report.misclassified(['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg'],
                               [0, 0, 0, 1], probs, ['x', 'y'])
  assert [w.path for w in wrong] == ['b.jpg', 'c.jpg']
  assert wrong[0].predicted_label == 'y' and wrong[0].true_label == 'x'
  assert wrong[0].predicted_probability == pytest.approx(0.8)
  assert wrong[0].true_probability == pytest.approx(0.2)


def test_report_files(tmp_path):
  m = report.compute_metrics(Y_TRUE, Y_PRED, LABELS)
  probs = np.eye(3)[Y_PRED] * 0.7 + 0.1
  paths = [f'/data/{LABELS[t]}/img,{k}.jpg' for k, t in enumerate(Y_TRUE)]
  wrong = report.misclassified(paths, Y_TRUE, probs, LABELS)
  out = tmp_path / 'report'
  assert not out.exists()
  written = report.write_reports(str(out), 'test', m, wrong)
  assert sorted(p.name for p in out.iterdir()) == sorted([
      'test_metrics.csv', 'test_metrics.json', 'test_confusion_matrix.csv',
      'test_confusion_matrix.json', 'misclassified_test.csv'])
  assert len(written) == 5

  rows = list(csv.reader(open(out / 'test_confusion_matrix.csv')))
  assert rows == [['true \\ predicted', 'cat', 'dog', 'fox'],
                  ['cat', '2', '1', '1'], ['dog', '1', '2', '0'],
                  ['fox', '0', '1', '2']]
  cm = json.loads((out / 'test_confusion_matrix.json').read_text())
  assert cm['labels'] == LABELS and cm['matrix'][0] == [2, 1, 1]

  metrics = json.loads((out / 'test_metrics.json').read_text())
  assert metrics['count'] == 10 and metrics['accuracy'] == pytest.approx(0.6)
  assert metrics['classes'][1] == {'label': 'dog', 'precision': 0.5,
                                   'recall': pytest.approx(2 / 3),
                                   'f1': pytest.approx(4 / 7), 'support': 3}
  rows = list(csv.DictReader(open(out / 'test_metrics.csv')))
  assert [r['class'] for r in rows] == LABELS + ['macro avg', 'weighted avg']
  assert float(rows[-1]['recall']) == pytest.approx(0.6)

  mis = list(csv.DictReader(open(out / 'misclassified_test.csv')))
  assert len(mis) == 4  # the 4 wrong predictions of Y_PRED
  assert {r['path'] for r in mis} == {paths[k] for k in (2, 3, 6, 9)}
  assert mis[0]['path'] in paths  # the comma in the name survives quoting
  row = next(r for r in mis if r['path'] == paths[3])
  assert (row['true_label'], row['predicted_label']) == ('cat', 'fox')
  assert float(row['predicted_probability']) == pytest.approx(0.8)
  # No temporary files left behind.
  assert not list(out.glob('.tmp-*'))
