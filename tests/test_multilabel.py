"""--multi_label: labels from a ';' CSV, VOC objects and photos in several
class folders; one sigmoid per label with thresholds chosen out of fold;
per-label metrics; the real CLI, exports and label_image."""

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from retrain.config import DEFAULTS
from retrain.data import multilabel as data_lib
from retrain.errors import DatasetError
from retrain.head import multilabel as head_lib
from retrain.head import solver as solver_lib
from retrain.report import multilabel as report_lib
from tests.conftest import COLOURS, shrunk_config, write_image

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every label set a patch photo can have: one colour, or two side by side.
COMBOS = (('red',), ('green',), ('blue',), ('red', 'blue'),
          ('red', 'green'), ('green', 'blue'))


def write_patches(path, colours, seed):
  """A 40x40 photo: the left half colours[0], the right half colours[-1]."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  pixels = np.zeros((40, 40, 3), np.float32)
  pixels[:, :20] = COLOURS[colours[0]]
  pixels[:, 20:] = COLOURS[colours[-1]]
  pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels.astype(np.uint8)).save(path)
  return path


def patch_csv(root, per_combo=8, start=0):
  """root/photos/*.jpg and root/labels.csv ('path, a;b' rows)."""
  root = pathlib.Path(root)
  rows = [('path', 'labels')]
  for c, combo in enumerate(COMBOS):
    for k in range(start, start + per_combo):
      name = f'photos/{"_".join(combo)}_{k}.jpg'
      write_patches(root / name, combo, seed=100 * c + k)
      rows.append((name, ';'.join(combo)))
  with open(root / 'labels.csv', 'w', newline='', encoding='utf-8') as f:
    csv.writer(f).writerows(rows)
  return root / 'labels.csv'


def _load(config):
  return data_lib.load(config.data, config.crop, config.cache.bottleneck_dir)


def test_csv_labels_split_on_semicolons(tmp_path):
  path = patch_csv(tmp_path, per_combo=2)
  found = _load(DEFAULTS.replace(image_labels_csv=str(path),
                                    bottleneck_dir=str(tmp_path / 'bn')))
  assert found.layout.dataset.labels == ('blue', 'green', 'red')
  assert found.targets.shape == (12, 3)
  by_name = {os.path.basename(image.rel_path): found.targets[i]
             for i, image in enumerate(found.layout.dataset.images)}
  assert by_name['red_blue_0.jpg'].tolist() == [True, False, True]
  assert by_name['green_0.jpg'].tolist() == [False, True, False]
  # Each photo's stratum is one of its own labels (its rarest).
  for i, image in enumerate(found.layout.dataset.images):
    assert found.targets[i, image.label]
  assert data_lib.split_labels(' a ; b;;a ', 'x.csv:2') == ['a', 'b']
  with pytest.raises(DatasetError, match='x.csv:3'):
    data_lib.split_labels('a;b\x01c', 'x.csv:3')


def test_the_same_photo_in_two_class_folders_has_both_labels(tmp_path):
  images = tmp_path / 'images'
  write_image(images / 'cat' / 'a.jpg', (200, 20, 20), seed=1)
  write_image(images / 'cat' / 'b.jpg', (200, 20, 20), seed=2)
  write_image(images / 'dog' / 'c.jpg', (20, 20, 200), seed=3)
  shutil.copy(images / 'cat' / 'a.jpg', images / 'dog' / 'a_copy.jpg')
  found = _load(DEFAULTS.replace(image_dir=str(images),
                                    bottleneck_dir=str(tmp_path / 'bn')))
  rel = [image.rel_path for image in found.layout.dataset.images]
  assert sorted(rel) == ['cat/a.jpg', 'cat/b.jpg', 'dog/c.jpg']
  both = found.targets[rel.index('cat/a.jpg')]
  assert both.tolist() == [True, True]


def test_voc_objects_are_a_photos_labels(tmp_path):
  images = tmp_path / 'images'
  for name, objects in (('one', ['cat']), ('two', ['cat', 'dog', 'cat']),
                        ('three', ['dog'])):
    write_image(images / f'{name}.jpg', (100, 100, 100), seed=len(name))
    xml = ''.join(f'<object><name>{o}</name><bndbox><xmin>1</xmin><ymin>1'
                  '</ymin><xmax>30</xmax><ymax>30</ymax></bndbox></object>'
                  for o in objects)
    (images / f'{name}.xml').write_text(f'<annotation>{xml}</annotation>')
  write_image(images / 'bare.jpg', (0, 0, 0))
  found = _load(DEFAULTS.replace(image_dir=str(images),
                                    bottleneck_dir=str(tmp_path / 'bn')))
  targets = {image.rel_path: found.targets[i].tolist()
             for i, image in enumerate(found.layout.dataset.images)}
  assert targets == {'one.jpg': [True, False], 'two.jpg': [True, True],
                     'three.jpg': [False, True]}
  assert found.layout.skipped == ((str(images / 'bare.jpg'),
                                   'no annotation'),)


def test_average_precision_and_metrics_by_hand():
  # Ranked: T F T F -> precision at the positives 1/1 and 2/3.
  assert report_lib.average_precision(
      np.array([1, 0, 1, 0], bool), np.array([0.9, 0.8, 0.7, 0.1])
  ) == pytest.approx((1 + 2 / 3) / 2)
  assert np.isnan(report_lib.average_precision(np.zeros(3, bool),
                                               np.ones(3)))
  truth = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], bool)
  probs = np.array([[0.9, 0.2, 0.1], [0.8, 0.4, 0.3], [0.3, 0.7, 0.2]])
  m = report_lib.compute(truth, probs, [0.5, 0.5, 0.5], ['a', 'b', 'c'])
  # b is missed on photo 1: photos 0 and 2 exact, 2 of 3.
  assert m.exact_match == pytest.approx(2 / 3)
  assert m.recall[:2].tolist() == [1.0, 0.5]
  assert m.ap[:2].tolist() == [1.0, 1.0]
  # c: no photo has it and none predicts it: undefined, left out.
  assert np.isnan([m.precision[2], m.recall[2], m.f1[2], m.ap[2]]).all()
  assert m.mean_ap == 1.0 and m.macro['f1'] == pytest.approx((1 + 2 / 3) / 2)
  data = json.loads(json.dumps(m.to_json()))
  assert data['labels'][2]['ap'] is None
  assert report_lib.format_metrics(m, [0.5] * 3)[3].split()[2:] == [
      '-', '-', '-', '-', '0']
  # The F1-best threshold lies between the scores it separates.
  assert head_lib.choose_threshold(np.array([0.9, 0.6, 0.4, 0.1]),
                                   np.array([1, 1, 0, 0], bool)) == 0.5


def test_sigmoid_heads_learn_each_label_and_thresholds_out_of_fold():
  rng = np.random.default_rng(0)
  targets = rng.random((240, 3)) < [0.5, 0.3, 0.15]
  centres = rng.normal(0, 1, (3, 10))
  x = (targets @ centres + rng.normal(0, 0.3, (240, 10))).astype(np.float32)
  strata = np.argmax(targets, axis=1)
  options = solver_lib.SolverOptions.from_config(DEFAULTS)
  fitted = head_lib.fit_multilabel(x[:180], targets[:180], strata[:180],
                                   options)
  assert fitted.selection == 'k-fold'
  assert fitted.head.multi_label and fitted.head.weights.shape == (10, 3)
  assert fitted.out_of_fold.shape == (180, 3)
  assert np.all((fitted.thresholds > 0) & (fitted.thresholds < 1))
  probs = head_lib.probabilities(fitted.head, x[180:])
  np.testing.assert_allclose(probs, fitted.head.probabilities(x[180:]),
                             atol=1e-6)
  m = report_lib.compute(targets[180:], probs, fitted.thresholds,
                         ['a', 'b', 'c'])
  assert m.mean_ap > 0.95 and m.exact_match > 0.8
  # Probabilities are per label: photos with two labels have two near 1.
  assert np.sum(probs[np.sum(targets[180:], axis=1) == 2] > 0.5, axis=1
                ).mean() > 1.8


def test_refuses_fine_tune_and_box_crops(tmp_path, fake_module):
  from retrain import pipeline
  config = shrunk_config(tmp_path / 'images', tmp_path / 'out', fake_module,
                         multi_label=True, fine_tune=True)
  with pytest.raises(DatasetError, match='--multi_label with --fine_tune'):
    pipeline.run(config)
  with pytest.raises(DatasetError, match='--crop_to_boxes'):
    pipeline.run(config.replace(fine_tune=False,
                                     crop_to_boxes=True))


def test_label_image_formats_every_label_at_or_above_its_threshold():
  from retrain.predict import classify, load
  from tools import label_image
  model = label_image.Model('saved_model', 'm', ['a', 'b', 'c'], (8, 8),
                            lambda x: x, label_thresholds=[0.5, 0.3, 0.9])
  probs = np.array([0.6, 0.3, 0.95])
  order = np.argsort(-probs)
  assert classify._above(model, probs, order) == [('c', 0.95), ('a', 0.6),
                                                     ('b', 0.3)]
  records = [label_image.Record('x.jpg', [('c', 0.95)], labels=[
      ('c', 0.95), ('a', 0.6)]), label_image.Record('y.jpg', [('a', 0.4)],
                                                    labels=[])]
  rows = list(csv.DictReader(label_image.format_records(
      records, 'csv').splitlines()))
  assert [r['prediction'] for r in rows] == ['c;a', '']
  items = json.loads(label_image.format_records(records, 'json'))
  assert items[0]['labels'] == ['c', 'a'] and items[1]['prediction'] == ''
  table = label_image.format_records(records, 'table')
  assert '  labels: c, a\n' in table
  assert '  labels: (none at or above its threshold)' in table
  with pytest.raises(label_image.LabelImageError, match='2 label thresholds '
                     'for 3 labels'):
    load._stored_label_thresholds(
        {'multi_label': {'thresholds': [0.5, 0.5]}}, 3)
  assert load._stored_label_thresholds({'confidence': {}}, 3) is None


def _run(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, cwd=ROOT, env=env)


@pytest.mark.slow
def test_cli_trains_exports_and_label_image_lists_every_label(
    tmp_path, fake_module):
  labels_csv = patch_csv(tmp_path / 'data', per_combo=10)
  out = tmp_path / 'out'
  proc = _run(['-m', 'retrain', '--multi_label', '--image_labels_csv',
               str(labels_csv), '--tfhub_module', fake_module,
               '--bottleneck_dir', str(out / 'bn'),
               '--saved_model_dir', str(out / 'model'),
               '--output_graph', str(out / 'graph.pb'),
               '--output_labels', str(out / 'labels.txt'),
               '--report_dir', str(out / 'report'),
               '--summaries_dir', str(out / 'logs'),
               '--testing_percentage', '20', '--flip_left_right'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Per-label metrics, test set' in proc.stderr
  report = json.loads((out / 'report' / 'test_multilabel_metrics.json')
                      .read_text())
  assert report['mean_ap'] > 0.9 and report['exact_match'] > 0.7
  assert [x['label'] for x in report['labels']] == ['blue', 'green', 'red']
  meta = json.loads((out / 'model' / 'retrain_metadata.json').read_text())
  assert len(meta['multi_label']['thresholds']) == 3
  new = tmp_path / 'new'
  for k, combo in enumerate((('red', 'blue'), ('green',), ('red', 'green'))):
    write_patches(new / f'{k}.jpg', combo, seed=900 + k)
  for model in (['--saved_model_dir', str(out / 'model')],
                ['--graph', str(out / 'graph.pb')]):
    proc = _run(['-m', 'tools.label_image', *model, '--output_format', 'csv',
                 str(new)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {pathlib.Path(r['image']).name: r['prediction']
            for r in csv.DictReader(proc.stdout.splitlines())}
    assert {k: set(v.split(';')) for k, v in rows.items()} == {
        '0.jpg': {'red', 'blue'}, '1.jpg': {'green'},
        '2.jpg': {'red', 'green'}}
  proc = _run(['-m', 'tools.label_image', '--saved_model_dir',
               str(out / 'model'), str(new / '0.jpg')])
  assert 'labels: ' in proc.stdout
  assert set(proc.stdout.split('labels: ')[1].split('\n')[0].split(', ')
             ) == {'red', 'blue'}


@pytest.mark.slow
def test_python_api_runs_a_multi_label_ensemble(tmp_path, fake_module):
  import retrain
  from tests.conftest import export_fake_module
  labels_csv = patch_csv(tmp_path / 'data', per_combo=8)
  small = export_fake_module(tmp_path / 'pool24', size=24, scale=2.0)
  out = tmp_path / 'out'
  result = retrain.run(
      multi_label=True, image_labels_csv=str(labels_csv),
      tfhub_module=f'{fake_module},{small}', bottleneck_dir=str(out / 'bn'),
      summaries_dir=str(out / 'logs'), report_dir=str(out / 'report'),
      output_labels=str(out / 'labels.txt'),
      saved_model_dir=str(out / 'model'), testing_percentage=20)
  assert result.labels == ['blue', 'green', 'red']
  assert result.multi_label.count == result.test_count > 0
  assert result.multi_label.mean_ap > 0.9
  summary = json.loads((out / 'report' / 'run_summary.json')
                       .read_text())
  assert summary['multi_label_test']['mean_ap'] == pytest.approx(
      result.multi_label.mean_ap)
  # The results page shows the run's multi-label test metrics.
  assert result.results_page == str(out / 'report' / 'report.html')
  page = (out / 'report' / 'report.html').read_text(encoding='utf-8')
  assert f'mean AP</td><td>{result.multi_label.mean_ap:.3f}' in page
  assert all(f'<tr><td>{name}</td>' in page for name in result.labels)
  assert json.loads((out / 'report' / 'report.json').read_text())[
      'multi_label']['exact_match'] == pytest.approx(
          result.multi_label.exact_match)


class _ArrayReader:
  """A ChunkReader over an array, its rows 'on disk' in a shuffled order;
  it records the largest read."""

  def __init__(self, x, seed=0):
    self.x, self.dim = x, x.shape[1]
    self.shard = np.zeros(len(x), np.int32)
    self.row = np.random.default_rng(seed).permutation(len(x)).astype(
        np.int32)
    self.largest = 0

  def read(self, items):
    self.largest = max(self.largest, len(items))
    return self.x[np.asarray(items)]


def test_streamed_rows_fit_the_same_head_a_chunk_at_a_time():
  rng = np.random.default_rng(1)
  targets = rng.random((200, 3)) < [0.5, 0.3, 0.2]
  x = (targets @ rng.normal(0, 1, (3, 8)) + 3 +
       rng.normal(0, 0.4, (200, 8))).astype(np.float32)
  strata = np.argmax(targets, axis=1)
  options = solver_lib.SolverOptions.from_config(DEFAULTS)
  reader = _ArrayReader(x)
  rows = head_lib.StreamedRows(reader, np.arange(200), capacity=23)
  for enabled in (True, False):
    np.testing.assert_allclose(rows.standardisation(enabled),
                               head_lib.Rows(x).standardisation(enabled),
                               rtol=1e-4, atol=1e-5)
  memory = head_lib.fit_multilabel(x, targets, strata, options)
  streamed = head_lib.fit_multilabel(rows, targets, strata, options)
  assert reader.largest == 23
  assert streamed.selection == memory.selection == 'k-fold'
  np.testing.assert_array_equal(streamed.l2, memory.l2)
  np.testing.assert_allclose(streamed.thresholds, memory.thresholds,
                             atol=0.05)
  np.testing.assert_allclose(head_lib.probabilities(streamed.head, rows),
                             head_lib.probabilities(memory.head, x),
                             atol=0.01)


@pytest.mark.slow
def test_a_run_past_the_memory_budget_streams_and_matches_memory(
    tmp_path, fake_module, capfd):
  import retrain
  labels_csv = patch_csv(tmp_path / 'data', per_combo=8)
  results, metadata = {}, {}
  for name, budget in (('memory', 0), ('cache', 10)):
    out = tmp_path / name
    capfd.readouterr()
    results[name] = retrain.run(
        multi_label=True, image_labels_csv=str(labels_csv),
        tfhub_module=fake_module, bottleneck_dir=str(tmp_path / 'bn'),
        summaries_dir=str(out / 'logs'), report_dir=str(out / 'report'),
        output_labels=str(out / 'labels.txt'),
        output_graph=str(out / 'graph.pb'),
        saved_model_dir=str(out / 'model'), testing_percentage=20,
        flip_left_right=True, distorted_copies=1,
        max_vectors_in_memory=budget)
    log = capfd.readouterr().err
    assert ('reads its' in log) == (name == 'cache'), log[-2000:]
    metadata[name] = json.loads((out / 'model' / 'retrain_metadata.json')
                                .read_text())['multi_label']
  memory, cache = results['memory'], results['cache']
  assert cache.labels == memory.labels == ['blue', 'green', 'red']
  assert cache.counts == memory.counts
  assert cache.multi_label.mean_ap == pytest.approx(
      memory.multi_label.mean_ap, abs=0.02)
  assert cache.multi_label.exact_match == pytest.approx(
      memory.multi_label.exact_match, abs=0.1)
  np.testing.assert_allclose(metadata['cache']['thresholds'],
                             metadata['memory']['thresholds'], atol=0.1)
  assert metadata['cache']['l2'] == metadata['memory']['l2']

  def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob('*')
                  if p.is_file() and 'events.out' not in p.name
                  and p.suffix != '.log')

  for part in ('report', 'model'):
    assert files(tmp_path / 'cache' / part) == files(
        tmp_path / 'memory' / part)
  assert (tmp_path / 'cache' / 'graph.pb').stat().st_size > 0
