"""tools/label_image: classifies from the export alone, in every format,
reports bad files and goes on, and keeps the classic label_image flags."""

import csv
import dataclasses
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from retrain import pipeline
from retrain.common import names
from retrain.predict import load as load_lib
from retrain.predict import tflite
from tests.conftest import exporting_config, make_colour_dataset, write_image
from tools import label_image

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def export(tmp_path_factory, fake_module):
  """A trained run's outputs, and a folder of new photos to classify."""
  root = tmp_path_factory.mktemp('label_image')
  config = exporting_config(root, 'train', fake_module,
                            how_many_training_steps=200)
  pipeline.run(config)
  # New photos, nested, in several formats; the class is in the file name.
  photos = root / 'photos'
  make_colour_dataset(photos / 'a', per_class=2, start=100)
  make_colour_dataset(photos / 'b' / 'deeper', per_class=2, ext='.png',
                      start=200)
  # The training data is no longer needed: label_image reads the export.
  shutil.rmtree(config.data.image_dir)
  shutil.rmtree(config.cache.bottleneck_dir)
  return config, photos


def _run(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, cwd=ROOT, env=env)


def _truth(path):
  return pathlib.Path(path).parent.name


def test_find_images_takes_files_folders_and_globs(tmp_path):
  for name in ('x/1.jpg', 'x/sub/2.PNG', 'x/.hidden/3.jpg', 'x/notes.txt',
               'y/4.bmp'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'')
  paths, problems = label_image.find_images([
      str(tmp_path / 'x'), str(tmp_path / 'y' / '*.bmp'),
      str(tmp_path / 'x' / '1.jpg'), str(tmp_path / 'x' / 'notes.txt'),
      str(tmp_path / 'nope.jpg'), str(tmp_path / '*.gif')])
  rel = [os.path.relpath(p, tmp_path) for p in paths]
  assert rel == ['x/1.jpg', 'x/sub/2.PNG', 'y/4.bmp', 'x/notes.txt']
  assert [(os.path.basename(r.image), r.error) for r in problems] == [
      ('nope.jpg', 'no such file or folder'),
      ('*.gif', 'pattern matches no file')]


@pytest.mark.slow
def test_every_format_classifies_the_photos(export):
  config, photos = export
  paths, problems = label_image.find_images([str(photos)])
  assert len(paths) == 12 and not problems
  results = {}
  for kind, kwargs in [('saved_model', dict(saved_model_dir=config.outputs.saved_model_dir)),
                       ('frozen_graph', dict(graph=config.outputs.output_graph)),
                       ('tflite', dict(graph=config.outputs.tflite_output_file))]:
    model = label_image.load_model(**kwargs)
    assert model.kind == kind and model.labels == ['blue', 'green', 'red']
    records = label_image.classify_files(model, paths, top_k=2, batch_size=5)
    assert [r.image for r in records] == paths
    assert all(r.error is None and len(r.top) == 2 for r in records)
    assert [r.top[0][0] for r in records] == [_truth(p) for p in paths]
    results[kind] = np.array([[p for _, p in r.top] for r in records])
  np.testing.assert_allclose(results['frozen_graph'], results['saved_model'],
                             atol=1e-4)
  np.testing.assert_allclose(results['tflite'], results['saved_model'],
                             atol=1e-3)


@pytest.mark.slow
def test_cli_json_with_a_bad_file_reports_it_and_goes_on(export, tmp_path):
  config, photos = export
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
  out = tmp_path / 'results.json'
  proc = _run(['-m', 'tools.label_image', '--saved_model_dir',
               config.outputs.saved_model_dir, '--image', str(photos / 'a'),
               '--image', str(broken), '--output_format', 'json',
               '--output_file', str(out), '--top_k', '3'])
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert 'broken.jpg' in proc.stderr and 'Traceback' not in proc.stderr
  assert '1 of 7 images could not be classified' in proc.stderr
  records = json.loads(out.read_text())
  assert len(records) == 7
  bad = [r for r in records if 'error' in r]
  assert [os.path.basename(r['image']) for r in bad] == ['broken.jpg']
  assert '{{' not in bad[0]['error'] and bad[0]['error']
  for r in records:
    if 'error' not in r:
      assert r['predictions'][0]['label'] == _truth(r['image'])
      assert len(r['predictions']) == 3
      assert sum(p['probability'] for p in r['predictions']) == \
          pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_script_with_classic_tutorial_flags_and_csv(export):
  """The retrain tutorial's label_image command line, on our frozen graph."""
  config, photos = export
  image = next((photos / 'b').rglob('*.png'))
  proc = _run(['tools/label_image.py', '--graph', config.outputs.output_graph,
               '--labels', config.outputs.output_labels, '--input_layer',
               'Placeholder', '--output_layer', 'final_result',
               '--input_height', '32', '--input_width', '32', '--input_mean',
               '0', '--input_std', '255', '--image', str(image),
               '--output_format', 'csv', '--benchmark'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = list(csv.reader(io.StringIO(proc.stdout)))
  assert rows[0][:4] == ['image', 'error', 'label_1', 'probability_1']
  assert len(rows) == 2 and rows[1][0] == str(image) and rows[1][1] == ''
  assert rows[1][2] == _truth(image) and float(rows[1][3]) > 0.5
  # --benchmark goes to stderr when stdout carries CSV.
  assert 'images/s' in proc.stderr


@pytest.mark.slow
def test_tflite_cli_table_and_benchmark(export):
  config, photos = export
  proc = _run(['-m', 'tools.label_image', '--graph',
               config.outputs.tflite_output_file, str(photos), '--top_k', '1',
               '--benchmark'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert sum(1 for l in lines if l.endswith(('.jpg', '.png'))) == 12
  assert 'Benchmark: 12 images in' in proc.stdout
  assert 'images/s end to end' in proc.stdout


@pytest.mark.slow
def test_wrong_classic_flags_get_clear_errors(export):
  config, _ = export
  with pytest.raises(label_image.LabelImageError,
                     match="no op named 'input'.*Placeholder"):
    label_image.load_model(graph=config.outputs.output_graph, input_layer='input')
  with pytest.raises(label_image.LabelImageError,
                     match='takes 32x32 images, not 299x299'):
    label_image.load_model(graph=config.outputs.output_graph, input_height=299,
                           input_width=299)
  with pytest.raises(label_image.LabelImageError, match='not a retrain export'):
    label_image.load_model(saved_model_dir=os.path.dirname(config.outputs.output_graph))


@pytest.mark.slow
def test_labels_come_from_the_export_or_must_match(export, tmp_path):
  config, _ = export
  graph = tmp_path / 'alone.pb'
  shutil.copy(config.outputs.output_graph, graph)
  with pytest.raises(label_image.LabelImageError, match='pass --labels'):
    label_image.load_model(graph=str(graph))
  two = tmp_path / 'two.txt'
  two.write_text('x\ny\n')
  with pytest.raises(label_image.LabelImageError, match='3].*2 classes'):
    label_image.load_model(graph=str(graph), labels=str(two))
  assert label_image.load_model(
      graph=str(graph), labels=config.outputs.output_labels).labels == [
          'blue', 'green', 'red']


@pytest.mark.slow
def test_input_mean_and_std_are_applied(export, tmp_path):
  config, _ = export
  path = str(write_image(tmp_path / 'grey.png', (128, 128, 128), fmt='PNG'))
  model = label_image.load_model(graph=config.outputs.output_graph)
  seen = []
  inner = model.predict
  model.predict = lambda x: (seen.append(x), inner(x))[1]
  label_image.classify_files(model, [path])
  label_image.classify_files(model, [path],
                             decoding=label_image.Decoding(127.5, 127.5))
  np.testing.assert_allclose(seen[1], (seen[0] * 255 - 127.5) / 127.5,
                             atol=1e-5)
  assert 0.45 < seen[0].mean() < 0.55


def test_format_records_table_and_errors():
  records = [label_image.Record('a.jpg', [('roses', 0.9), ('tulips', 0.1)]),
             label_image.Record('b.jpg', error='cannot be decoded')]
  table = label_image.format_records(records, 'table')
  assert table.splitlines() == ['a.jpg', '  roses     0.9000',
                                '  tulips    0.1000', 'b.jpg',
                                '  ERROR: cannot be decoded']
  rows = list(csv.reader(io.StringIO(label_image.format_records(records,
                                                                'csv'))))
  assert rows[2] == ['b.jpg', 'cannot be decoded']


@pytest.mark.slow
def test_bytes_signature_with_saved_model_cli(export, tmp_path):
  config, photos = export
  cli = pathlib.Path(sys.executable).with_name('saved_model_cli')
  if not cli.exists():
    pytest.skip(f'{cli} is absent')
  image = next((photos / 'a' / 'red').iterdir())
  np.save(tmp_path / 'x.npy', np.array([image.read_bytes()]))
  proc = subprocess.run(
      [str(cli), 'run', '--dir', config.outputs.saved_model_dir, '--tag_set', 'serve',
       '--signature_def', 'serving_bytes', '--inputs',
       f'image_bytes={tmp_path / "x.npy"}'], capture_output=True, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  values = proc.stdout.split('Result for output key probabilities:')[1]
  probs = np.array([float(v) for v in
                    values.replace('[', ' ').replace(']', ' ').split()])
  assert probs.shape == (3,) and probs.argmax() == 2  # red


def _tflite_with_packed(path, files):
  """A stand-in .tflite file: bytes, then a zip of `files` (name -> bytes)
  appended, as the metadata writer packs associated files."""
  packed = io.BytesIO()
  with zipfile.ZipFile(packed, 'w') as archive:
    for name, content in files.items():
      archive.writestr(name, content)
  path.write_bytes(b'TFL3 not a real flatbuffer' + packed.getvalue())
  return str(path)


def test_embedded_labels_and_metadata_are_read_back(tmp_path):
  meta = {names.META_LABELS: ['rose', 'tulip'],
          names.META_CONFIDENCE: {names.CONFIDENCE_THRESHOLD: 0.6}}
  path = _tflite_with_packed(tmp_path / 'm.tflite', {
      names.LABELS_FILE: 'rose\n\ntulip\n',
      names.METADATA_FILE: json.dumps(meta)})
  assert tflite.read_embedded(path) == (['rose', 'tulip'], meta)
  plain = tmp_path / 'plain.tflite'
  plain.write_bytes(b'TFL3 no archive')
  assert tflite.read_embedded(str(plain)) == (None, None)


@pytest.mark.parametrize('broken', [b'{"labels": [', b'[1, 2]'])
def test_broken_embedded_metadata_keeps_the_labels_and_names_the_file(
    tmp_path, monkeypatch, broken):
  said = []
  monkeypatch.setattr(tflite.logging, 'warning',
                      lambda text, *args: said.append(text % args))
  path = _tflite_with_packed(tmp_path / 'broken.tflite', {
      names.LABELS_FILE: 'rose\ntulip\n', names.METADATA_FILE: broken})
  assert tflite.read_embedded(path) == (['rose', 'tulip'], None)
  assert len(said) == 1 and path in said[0]
  assert names.METADATA_FILE in said[0]


def test_the_readers_find_what_the_writers_store():
  """The keys the export's writers put in the metadata are the ones
  retrain.predict.load reads (retrain.common.names)."""
  import types

  from retrain.head import calibration, novelty
  from retrain.steps import multilabel
  fields = {f.name for f in dataclasses.fields(calibration.Confidence)}
  assert {names.CONFIDENCE_THRESHOLD, names.CONFIDENCE_TEMPERATURE} <= fields
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 20)
  x = rng.normal(0, 1, (60, 6)) + 4 * np.eye(3, 6)[y]
  score = novelty.fit_on_split(x, y, 3, components=2, keep=0.9, folds=3,
                               seed=0)
  fitted = types.SimpleNamespace(thresholds=[0.25, 0.75], l2=[1.0, 1.0],
                                 selection='5-fold')
  meta = {names.META_CONFIDENCE: {names.CONFIDENCE_THRESHOLD: 0.6},
          names.META_NOVELTY: score.metadata(),
          **multilabel.metadata(['a', 'b'], fitted)}
  assert load_lib._stored_threshold(meta) == 0.6
  assert load_lib._stored_novelty_threshold(meta) == score.threshold
  assert load_lib._stored_label_thresholds(meta, 2) == [0.25, 0.75]
