"""Labels: refused when they cannot round-trip, exact everywhere otherwise."""

import csv
import glob
import json
import os
import pathlib

import pytest

from retrain import pipeline
from retrain.data import discover, sources
from retrain.data import labels as labels_lib
from retrain.errors import DatasetError
from tests.conftest import COLOURS, shrunk_config, write_image
from tools import label_image

# Commas, quotes, apostrophes, non-ASCII, a slash, a backslash, a pipe.
ODD = ['tulips, "quoted" ünï/code', "it's \\ a | pipe", 'ßpace 東京']


@pytest.mark.parametrize('label,problem', [
    ('line1\nline2', 'a line break'),
    ('a\rb', 'a carriage return'),
    ('a\tb', 'a tab'),
    ('bell\x07', 'U+0007'),
    ('sep\u2028x', 'U+2028'),
    ('', 'empty or only spaces'),
    ('   ', 'empty or only spaces'),
])
def test_unusable_labels_are_named(label, problem):
  assert problem in labels_lib.label_problem(label)


@pytest.mark.parametrize('label', ODD + ['a/b', 'x,y', '"'])
def test_usable_labels_pass(label):
  assert labels_lib.label_problem(label) is None


@pytest.mark.parametrize('name', ['line1\nline2', ' ', 'tab\there'])
def test_class_folder_with_unusable_name_is_refused(tmp_path, name):
  for cls in ('ok', name):
    write_image(tmp_path / cls / 'a.jpg', (10, 20, 30))
  with pytest.raises(DatasetError) as e:
    discover.discover_images(str(tmp_path))
  text = str(e.value)
  assert repr(str(tmp_path / name)) in text and 'Rename the folder' in text


def test_csv_label_with_line_break_names_the_line(tmp_path):
  write_image(tmp_path / 'a.jpg', (10, 20, 30))
  write_image(tmp_path / 'b.jpg', (10, 20, 30))
  with open(tmp_path / 'l.csv', 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(['path', 'label'])
    w.writerow(['a.jpg', 'ok'])
    w.writerow(['b.jpg', 'line1\nline2'])
  with pytest.raises(DatasetError, match=r"l\.csv:3: the label "
                     r"'line1\\nline2' contains a line break.*Fix that row"):
    sources.read_labels_csv(str(tmp_path / 'l.csv'))
  with open(tmp_path / 'm.csv', 'w', encoding='utf-8') as f:
    f.write('a.jpg, ok\nb.jpg,"   "\n')
  with pytest.raises(DatasetError, match=r'm\.csv:2'):
    sources.read_labels_csv(str(tmp_path / 'm.csv'))


@pytest.mark.slow
def test_odd_labels_round_trip_through_every_output(tmp_path, fake_module):
  rows = []
  for label, rgb in zip(ODD, COLOURS.values(), strict=False):
    for _ in range(10):
      rel = f'img/{len(rows)}.jpg'
      write_image(tmp_path / 'data' / rel, rgb, seed=len(rows))
      rows.append((rel, label))
  with open(tmp_path / 'data' / 'labels.csv', 'w', newline='',
            encoding='utf-8') as f:
    csv.writer(f).writerows([('path', 'label'), *rows])
  out = tmp_path / 'out'
  config = shrunk_config('', out, fake_module,
                         image_labels_csv=str(tmp_path / 'data' /
                                              'labels.csv'),
                         tflite_output_file=str(out / 'model.tflite'),
                         projector_max_images=30)
  result = pipeline.run(config)
  expected = sorted(ODD)
  assert result.labels == expected

  def lines(path):
    with open(path, encoding='utf-8', newline='') as f:
      return f.read().split('\n')[:-1]

  # Labels files: the exported one, the one in the SavedModel, the sidecars.
  assert lines(out / 'labels.txt') == expected
  assert lines(out / 'saved_model' / 'labels.txt') == expected
  assert lines(out / 'model.tflite.labels.txt') == expected
  assert lines(out / 'output_graph.pb.labels.txt') == expected
  # Metadata of every export.
  for meta in (out / 'saved_model' / 'retrain_metadata.json',
               out / 'model.tflite.metadata.json',
               out / 'output_graph.pb.metadata.json'):
    assert json.loads(meta.read_text(encoding='utf-8'))['labels'] == expected
  # Reports (CSV and JSON).
  report = out / 'report'
  with open(report / 'test_metrics.csv', newline='', encoding='utf-8') as f:
    classes = [row[0] for row in csv.reader(f)][1:1 + len(expected)]
  assert classes == expected
  with open(report / 'test_confusion_matrix.csv', newline='',
            encoding='utf-8') as f:
    assert next(csv.reader(f))[1:] == expected
  cm = json.loads((report / 'test_confusion_matrix.json').read_text('utf-8'))
  assert cm['labels'] == expected
  # TensorBoard: PR curve tags and the projector's metadata.
  import tensorflow as tf
  tags = set()
  for event_file in glob.glob(str(out / 'logs' / '**' / 'events.*'),
                              recursive=True):
    for event in tf.compat.v1.train.summary_iterator(event_file):
      tags.update(v.tag for v in event.summary.value)
  assert {f'pr_curve/{label}' for label in expected} <= tags
  tsv = glob.glob(str(out / 'logs' / '**' / 'metadata.tsv'), recursive=True)
  assert tsv
  with open(tsv[0], encoding='utf-8', newline='') as f:
    header, *cells = [line.split('\t') for line in f.read().split('\n')
                      if line]
  assert {row[header.index('label')] for row in cells} == set(expected)
  # label_image, from each export format.
  photo = write_image(tmp_path / 'new.jpg', COLOURS['blue'], seed=999)
  for model in (label_image.load_model(str(out / 'saved_model')),
                label_image.load_model(graph=str(out / 'model.tflite')),
                label_image.load_model(graph=str(out / 'output_graph.pb'))):
    assert model.labels == expected
    record, = label_image.classify_files(model, [str(photo)])
    assert record.top[0][0] in expected


def test_label_image_prefers_metadata_and_checks_labels_file(tmp_path,
                                                            caplog):
  meta = {'labels': ['a\u00e9', 'b, "c"']}
  (tmp_path / 'labels.txt').write_text('stale\nother\n', encoding='utf-8')
  names = label_image.choose_labels(str(tmp_path), None, meta['labels'],
                                    str(tmp_path / 'labels.txt'))
  assert names == meta['labels']
  assert 'disagrees with the metadata' in caplog.text
  # An explicit --labels still wins (a deliberate renaming).
  explicit = pathlib.Path(tmp_path / 'mine.txt')
  explicit.write_text('x\ny\n', encoding='utf-8')
  assert label_image.choose_labels(str(tmp_path), str(explicit),
                                   meta['labels'], None) == ['x', 'y']
  assert os.path.exists(explicit)


@pytest.mark.parametrize('label, word', [
    ('ro\u200bses', 'U[+]200B'),      # zero-width space
    ('\u202etulips', 'U[+]202E'),     # right-to-left override
    ('..', 'reserved path name'),
    ('.', 'reserved path name'),
])
def test_look_alike_and_reserved_labels_are_refused(tmp_path, label, word):
  csv_path = tmp_path / 'l.csv'
  write_image(tmp_path / 'a.jpg', (10, 20, 30))
  write_image(tmp_path / 'b.jpg', (30, 20, 10))
  csv_path.write_text(f'a.jpg,{label}\nb.jpg,daisy\n', encoding='utf-8')
  with pytest.raises(DatasetError, match=word):
    sources._from_one_csv(str(csv_path))


def test_decomposed_labels_are_composed_and_said(tmp_path, caplog):
  csv_path = tmp_path / 'l.csv'
  for k in range(3):
    write_image(tmp_path / f'{k}.jpg', (10 * k, 20, 30))
  csv_path.write_text('0.jpg,caf\u00e9\n1.jpg,cafe\u0301\n2.jpg,tea\n',
                      encoding='utf-8')
  layout = sources._from_one_csv(str(csv_path))
  assert sorted(layout.dataset.labels) == ['caf\u00e9', 'tea']
  assert 'composed Unicode form (NFC)' in caplog.text
