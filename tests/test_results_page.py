"""report.html and report.json: the results of a classifier on a labelled
set (retrain/report/results.py, page.py, page_extra.py)."""

import json
import re

import numpy as np
import pytest

from retrain.report import results
from tests.conftest import make_colour_dataset, shrunk_config

LABELS = ['red', 'green', 'blue']


def _predictions(tmp_path):
  """9 photos: 3 per class, 2 right each, one wrong; a 'cyan' folder the
  model does not know."""
  root = make_colour_dataset(tmp_path / 'photos', per_class=3, colours={
      'red': (220, 30, 30), 'green': (30, 200, 30), 'blue': (30, 30, 220),
      'cyan': (30, 200, 200)})
  truth, files, probs = [], [], []
  wrong_as = {'red': 1, 'green': 2, 'blue': 0, 'cyan': 1}
  for name in ('red', 'green', 'blue', 'cyan'):
    for k in range(3):
      files.append(str(root / name / f'img_{k}.jpg'))
      truth.append(name)
      p = np.full(3, 0.1, np.float32)
      right = LABELS.index(name) if name in LABELS else 2
      p[wrong_as[name] if k == 2 else right] = 0.8 - 0.1 * k
      probs.append(p / p.sum())
  return truth, np.stack(probs), files


def test_build_counts_the_known_classes_and_reports_the_others(tmp_path):
  truth, probs, files = _predictions(tmp_path)
  report = results.build(LABELS, truth, probs, files, threshold=0.7)
  assert report['count'] == 9 and report['correct'] == 6
  assert report['accuracy'] == pytest.approx(6 / 9)
  low, high = report['accuracy_interval_95']
  assert 0.3 < low < 6 / 9 < high < 0.95
  assert report['confusion'] == [[2, 1, 0], [0, 2, 1], [1, 0, 2]]
  assert report['not_in_model'] == {'cyan': {'blue': 2, 'green': 1}}
  # The most confident mistake first; the least confident right answer.
  assert [m['file'][-13:] for m in report['mistakes']][0].endswith(
      'img_2.jpg')
  assert report['least_confident_right'][0]['probability'] == min(
      e['probability'] for e in report['least_confident_right'])
  assert sorted(report['cells']) == ['0,0', '0,1', '1,1', '1,2', '2,0',
                                     '2,2']
  # Top probabilities: 0.8/1.0 -> 0.8 (k=0), 0.7/0.9 -> 0.78, 0.6/0.8 -> 0.75.
  unknown = report['unknown']
  assert unknown['known_classes'] == {'count': 9, 'unknown': 0,
                                      'accuracy_of_the_rest': 6 / 9}
  assert results.build(LABELS, truth, probs, files)['unknown'] is None


class _Explainer:
  """A stand-in with the Explainer interface: a map hot on the left."""
  method = 'stub'
  description = 'Stub maps <left half>.'
  input_size = (24, 24)
  seconds_per_image = 0.0

  def __init__(self):
    self.classes = []

  def __call__(self, images, classes):
    self.classes += list(classes)
    maps = np.zeros(images.shape[:3], np.float32)
    maps[:, :, :12] = 1.0
    return maps


def _write(tmp_path, extra=None, explainer=None, **about):
  truth, probs, files = _predictions(tmp_path)
  report = results.build(LABELS, truth, probs, files, **about)
  written = results.write(str(tmp_path / 'report'), report,
                          explainer, extra)
  return report, written, open(written[0], encoding='utf-8').read()


def test_the_page_is_self_contained_and_escapes_every_value(tmp_path):
  explainer = _Explainer()
  _, written, text = _write(
      tmp_path, explainer=explainer, title='Run <b>&',
      settings={'image_dir': '"><script>alert(1)</script>'},
      history=[{'step': s, 'train_accuracy': 0.5 + s / 100,
                'validation_accuracy': 0.4 + s / 100, 'cross_entropy': 1.0}
               for s in range(3)])
  assert written[1].endswith('report.json')
  sources = re.findall(r'src="([^"]*)"', text)
  assert sources and all(s.startswith('data:image/') for s in sources)
  assert not re.search(r'(href|src)="(https?:|//|file:)', text)
  assert '<script' not in text and '&lt;script&gt;' in text
  assert 'Run &lt;b&gt;&amp;' in text
  assert 'Stub maps &lt;left half&gt;.' in text
  # Heat maps of the 3 mistakes and of the right answers, predicted class.
  assert len(explainer.classes) == 3 + 6
  assert text.count('data:image/jpeg') >= 9 + 6
  assert 'Training curve' in text and 'Settings' in text


def test_every_confusion_cell_opens_its_photos(tmp_path):
  _, _, text = _write(tmp_path)
  links = re.findall(r'href="#(cell-\d+-\d+)"', text)
  anchors = re.findall(r'id="(cell-\d+-\d+)"', text)
  assert sorted(links) == sorted(anchors) and len(links) == 6
  section = text.split('id="cell-0-1"')[1].split('<h3')[0]
  assert 'red/img_2.jpg' in section and 'data:image/jpeg' in section
  assert 'red predicted as green: 1' in text
  assert 'Classes the model does not know' in text and 'cyan' in text


def test_the_optional_sections_appear_only_with_their_data(tmp_path):
  _, _, plain = _write(tmp_path / 'a')
  assert 'Reliability diagram' not in plain and 'novelty' not in plain
  extra = {'reliability': {'set': 'validation', 'ece': 0.031, 'bins': [
      {'confidence': 0.55, 'accuracy': 0.5, 'count': 4},
      {'confidence': 0.93, 'accuracy': 0.9, 'count': 40}]},
           'novelty': {'note': 'Energy score.', 'figures': {'AUROC': 0.91},
                       'histogram': {'edges': [0, 1, 2], 'known': [5, 1],
                                     'unknown': [1, 4], 'threshold': 1.2}}}
  (tmp_path / 'b' / 'report').mkdir(parents=True)
  (tmp_path / 'b' / 'report' / results.EXTRA_FIGURES_FILE).write_text(
      json.dumps(extra))
  report, written, text = _write(tmp_path / 'b')
  assert 'Reliability diagram (validation set)' in text
  assert 'Expected calibration error: 3.10 points' in text
  assert 'Unknown photos (novelty)' in text and 'AUROC' in text
  assert text.count('alt="reliability diagram"') == 1
  assert text.count('alt="novelty scores"') == 1
  saved = json.load(open(written[1]))
  assert saved['extra_figures'] == extra and saved['count'] == 9


def test_malformed_optional_figures_leave_the_section_out(tmp_path):
  _, _, text = _write(tmp_path, extra={'reliability': {'bins': 'oops'},
                                       'novelty': {'note': 'kept'}})
  assert 'Reliability diagram' not in text
  assert 'kept' in text and '</html>' in text


@pytest.mark.slow
def test_a_run_writes_the_page_and_names_it(tmp_path, fake_module):
  import retrain
  from retrain import summary
  images = make_colour_dataset(tmp_path / 'images', per_class=12)
  config = shrunk_config(images, tmp_path / 'out', str(fake_module),
                         testing_percentage=30)
  result = retrain.run(config)
  page = tmp_path / 'out' / 'report' / 'report.html'
  assert result.results_page == str(page)
  text = page.read_text(encoding='utf-8')
  assert 'Confusion matrix' in text and 'Per-class metrics' in text
  assert 'Occlusion' in text  # the pooling module has no conv to read
  report = json.load(open(tmp_path / 'out' / 'report' / 'report.json'))
  assert report['count'] == result.test_count
  assert report['accuracy'] == pytest.approx(result.test_accuracy)
  assert any('report.html' in line
             for line in summary.summary_lines(config, result))


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory, fake_module):
  """A shrunk run on colour photos: (config, result, out folder)."""
  import retrain
  out = tmp_path_factory.mktemp('run')
  images = make_colour_dataset(out / 'images', per_class=12)
  config = shrunk_config(images, out / 'out', str(fake_module),
                         testing_percentage=30)
  return config, retrain.run(config), out


@pytest.mark.slow
@pytest.mark.parametrize('export', ['saved_model', 'frozen_graph'])
def test_evaluate_on_the_run_test_photos_gives_the_run_accuracy(
    trained_run, export, tmp_path):
  import retrain
  config, result, _ = trained_run
  model = (config.outputs.saved_model_dir if export == 'saved_model'
           else config.outputs.output_graph)
  judged = retrain.evaluate(model=model, image_dir=config.data.image_dir,
                            output_dir=str(tmp_path / 'judged'),
                            subset='test',
                            testing_percentage=config.data.testing_percentage,
                            validation_percentage=config.data.validation_percentage)
  assert judged.report['count'] == result.test_count
  assert judged.accuracy == pytest.approx(result.test_accuracy)
  saved = json.load(open(tmp_path / 'judged' / 'report.json'))
  assert saved['accuracy'] == pytest.approx(result.test_accuracy)
  assert 'Occlusion through the' in open(judged.html_path).read()


@pytest.mark.slow
def test_evaluate_reports_classes_the_model_does_not_know(trained_run,
                                                          tmp_path):
  import retrain
  config, result, _ = trained_run
  folder = make_colour_dataset(tmp_path / 'new', per_class=3, colours={
      'red': (230, 20, 20), 'grey': (128, 128, 128)}, start=100)
  judged = retrain.evaluate(model=config.outputs.saved_model_dir,
                            image_dir=str(folder),
                            output_dir=str(tmp_path / 'judged'),
                            heat_maps=False)
  assert judged.report['count'] == 3  # the red photos only
  assert sum(judged.report['not_in_model']['grey'].values()) == 3
  text = open(judged.html_path).read()
  assert 'Classes the model does not know' in text and 'grey' in text


@pytest.mark.slow
def test_the_evaluate_command_names_a_missing_model(tmp_path):
  import subprocess
  import sys
  proc = subprocess.run(
      [sys.executable, '-m', 'retrain.evaluate', '--model',
       str(tmp_path / 'nope.pb'), '--image_dir', str(tmp_path),
       '--output_dir', str(tmp_path / 'o')], capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 1
  assert 'nope.pb' in proc.stderr


@pytest.mark.slow
def test_label_image_explain_writes_an_overlay_per_photo(trained_run,
                                                         tmp_path):
  import subprocess
  import sys

  from PIL import Image
  config, _, out = trained_run
  photos = out / 'images' / 'red'
  proc = subprocess.run(
      [sys.executable, 'tools/label_image.py', '--graph', config.outputs.output_graph,
       '--image', str(photos), '--explain', str(tmp_path / 'maps')],
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  written = sorted(p.name for p in (tmp_path / 'maps').iterdir())
  assert written == sorted(f'{p.stem}.png' for p in photos.iterdir())
  with Image.open(tmp_path / 'maps' / written[0]) as picture:
    assert picture.format == 'PNG' and picture.size == (32, 32)
  assert 'red' in proc.stdout  # the results themselves are unchanged


@pytest.mark.slow
def test_retrain_load_predicts_labels_and_probabilities(trained_run):
  import retrain
  config, _, out = trained_run
  model = retrain.load(config.outputs.output_graph)
  files = [str(out / 'images' / name / 'img_0.jpg') for name in
           ('red', 'green', 'blue')]
  result = model.predict(files)
  assert result.labels == ['red', 'green', 'blue']
  probs = result.probabilities
  assert probs.shape == (3, len(model.labels)) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  # Photos of the classes: predicted, not flagged; what label_image says.
  assert result.predictions == result.labels
  assert list(result.unknown) == [False] * 3
  assert result.reasons == [None] * 3
  from tools import label_image
  records = label_image.classify_files(label_image.load_model(
      graph=config.outputs.output_graph), files)
  assert [r.prediction for r in records] == result.predictions
  from retrain import images
  pixels = np.stack([images.load_image(f, model.input_size).numpy()
                     for f in files])
  np.testing.assert_allclose(model.predict(pixels).probabilities, probs,
                             atol=1e-6)


def test_heat_maps_are_drawn_a_few_photos_at_a_time(tmp_path):
  root = make_colour_dataset(tmp_path / 'photos', per_class=5)
  files = sorted(str(p) for p in root.rglob('*.jpg'))
  calls = []

  class Explainer:
    input_size = (16, 16)

    def __call__(self, images, classes):
      calls.append((images.shape, list(classes)))
      return np.ones(images.shape[:3], np.float32) * 0.5

  labels = ['a', 'b', 'c']
  examples = [{'file': f, 'predicted': labels[i % 3]}
              for i, f in enumerate(files)]
  uris = results.heat_map_uris(Explainer(), examples, labels)
  assert sorted(uris) == files  # one map per photo
  assert all(u.startswith('data:image/jpeg;base64,') for u in uris.values())
  assert all(shape[0] <= results.HEAT_MAPS_AT_ONCE for shape, _ in calls)
  assert len(calls) == -(-len(files) // results.HEAT_MAPS_AT_ONCE)
  assert [c for _, cs in calls for c in cs] == [i % 3 for i in range(len(files))]
