"""retrain.inspect on a synthetic data set with planted problems: the report
lists exactly the planted duplicates, near-duplicate, mislabelled image,
outlier and unreadable file; the page is self-contained."""

import dataclasses
import json
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from retrain.config import INSPECT_DEFAULTS
from retrain.inspect import analysis
from tests.conftest import shrunk_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Per-class tint added to every pixel (x 255): well-separated classes.
TINTS = {'blue': (-0.2, -0.2, 0.2), 'green': (-0.2, 0.2, -0.2),
         'red': (0.2, -0.2, -0.2)}


def export_blocks_module(path):
  """A SavedModel: float32 [b, 32, 32, 3] -> float32 [b, 48], the 4x4 grid of
  8x8 block means minus 0.5, so the pattern of an image (not only its
  colour) shapes its vector."""
  import tensorflow as tf

  class Blocks(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3],
                                                tf.float32)])
    def __call__(self, images):
      pooled = tf.nn.avg_pool2d(images, 8, 8, 'VALID')
      return tf.reshape(pooled, [-1, 48]) - 0.5

  tf.saved_model.save(Blocks(), str(path))
  return str(path)


def block_image(path, tint, seed, fmt='PNG'):
  """40x40: a random 4x4 grid of 10-pixel blocks (+-0.3) plus the tint."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  grid = rng.uniform(-0.3, 0.3, (4, 4, 3)) + np.array(tint)
  pixels = np.kron(grid + 0.5, np.ones((10, 10, 1)))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8)).save(
      path, format=fmt)
  return path


def make_planted(root):
  """10 images per class, plus the problems the report must find."""
  root = pathlib.Path(root)
  for c, (name, tint) in enumerate(sorted(TINTS.items())):
    for k in range(10):
      block_image(root / name / f'img_{k}.png', tint, 100 * c + k)
  # Exact duplicate within a class, and across classes.
  shutil.copy(root / 'red' / 'img_0.png', root / 'red' / 'dup_of_0.png')
  shutil.copy(root / 'blue' / 'img_1.png', root / 'green' / 'conflict.png')
  # A resized, re-encoded near-duplicate.
  from PIL import Image
  with Image.open(root / 'red' / 'img_2.png') as image:
    image.convert('RGB').resize((36, 36)).save(root / 'red' / 'small_2.jpg',
                                               quality=85)
  # A blue image filed under red.
  block_image(root / 'red' / 'mislabelled.png', TINTS['blue'], 999)
  # Flat grey: far from every class centre.
  Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(
      root / 'green' / 'grey.png')
  (root / 'red' / 'broken.jpg').write_text('not an image\n')
  return root


def paths_of(entries):
  return sorted(e['rel_path'] for e in entries)


@pytest.fixture(scope='module')
def planted_report(tmp_path_factory):
  import logging

  from retrain.inspect import report
  # Something below (TensorFlow or the TFLite conversion of the module)
  # sets absl's logger to WARNING for the rest of the process; later tests
  # that capture INFO lines need the level back.
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  tmp = tmp_path_factory.mktemp('inspect')
  module = export_blocks_module(tmp / 'blocks')
  root = make_planted(tmp / 'images')
  config = shrunk_config(root, tmp / 'out', module)
  options = dataclasses.replace(INSPECT_DEFAULTS,
                                output_dir=str(tmp / 'report'))
  assert not (tmp / 'report').exists()
  try:
    return report.inspect_dataset(config, options), config, options
  finally:
    absl_logger.setLevel(level)


def test_report_lists_exactly_the_planted_problems(planted_report):
  result, _, _ = planted_report
  r = json.loads(pathlib.Path(result.json_path).read_text())
  assert r == json.loads(json.dumps(result.report))
  assert r['data']['labels'] == ['blue', 'green', 'red']
  assert r['data']['examples'] == 36 and r['data']['usable_examples'] == 35
  assert [(u['path'].rsplit('/', 2)[-2:], 'text' in u['reason'])
          for u in r['unreadable']] == [(['red', 'broken.jpg'], True)]

  exact = r['exact_duplicates']
  assert [paths_of(g) for g in exact['within_class']] == [
      ['red/dup_of_0.png', 'red/img_0.png']]
  assert [paths_of(g) for g in exact['across_classes']] == [
      ['blue/img_1.png', 'green/conflict.png']]
  leaking = [paths_of(g) for g in exact['within_class'] +
             exact['across_classes'] if len({e['set'] for e in g}) > 1]
  assert sorted(paths_of(g) for g in exact['across_sets']) == sorted(leaking)

  near = r['near_duplicates']
  assert [paths_of([p['a'], p['b']]) for p in near['within_class']] == [
      ['red/img_2.png', 'red/small_2.jpg']]
  assert near['across_classes'] == []
  assert near['within_class'][0]['cosine'] > near['threshold']

  suspects = {s['rel_path']: s['predicted']
              for s in r['label_errors']['suspects']}
  # The mislabelled image, and the conflicting copy of a blue image.
  assert suspects == {'red/mislabelled.png': 'blue',
                      'green/conflict.png': 'blue'}
  assert paths_of(r['outliers']['images']) == ['green/grey.png']
  assert [c['total'] for c in r['classes']] == [10, 12, 13]
  assert r['imbalance']['ratio'] == pytest.approx(1.3)
  assert r['imbalance']['warning'] is None
  assert r['images']['formats'] == {'PNG': 34, 'JPEG': 1}
  # 40x40 (and 36x36) files shrink to the 32x32 input: nothing upscaled.
  assert r['images']['upscaled']['count'] == 0


def test_page_is_self_contained(planted_report):
  result, _, _ = planted_report
  text = pathlib.Path(result.html_path).read_text()
  references = re.findall(r'(?:src|href)="([^"]*)"', text)
  assert len(references) > 30
  assert all(ref.startswith('data:image/') for ref in references)
  assert '<script' not in text and '@import' not in text
  for name in ('mislabelled.png', 'conflict.png', 'small_2.jpg',
               'broken.jpg', 'Contact sheets'):
    assert name in text
  assert not list(pathlib.Path(result.html_path).parent.glob('*.tmp-*'))


def test_training_afterwards_reuses_the_vectors(planted_report, caplog):
  from retrain import pipeline
  _, config, _ = planted_report
  result = pipeline.run(config.replace(saved_model_dir='', output_graph='', how_many_training_steps=20))
  assert result.bottleneck_stats.computed == 0
  # 36 files, 2 of them copies: 34 contents, one of which is no image.
  assert result.bottleneck_stats.reused == 33
  assert any('same content under two different classes' in m
             for m in caplog.messages)


def test_near_duplicates_are_blocked_and_exact():
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(50, 8)).astype(np.float32)
  vectors[7] = vectors[3] * 2 + 0.01
  vectors[40] = vectors[12]
  for block in (1, 7, 64):
    pairs = analysis.near_duplicate_pairs(vectors, 0.99, block)
    assert [(i, j) for i, j, _ in pairs] == [(12, 40), (3, 7)]
  full = analysis.normalise(vectors) @ analysis.normalise(vectors).T
  assert pairs[1][2] == pytest.approx(full[3, 7], abs=1e-6)


def test_label_errors_and_outliers_on_vectors():
  rng = np.random.default_rng(1)
  centres = np.eye(3, 16, dtype=np.float32) * 5
  y = np.repeat(np.arange(3), 30)
  x = centres[y] + rng.normal(0, 0.5, (90, 16)).astype(np.float32)
  y_given = y.copy()
  y_given[5] = 2  # a class-0 vector labelled 2
  probs = analysis.out_of_fold_probabilities(x, y_given, 3, 5)
  found = analysis.label_errors(probs, y_given, 0.2, 0.6)
  assert [(s.index, s.predicted) for s in found] == [(5, 0)]
  x[60] = -centres[1] * 3  # opposite to every centre
  assert [i for i, _, _ in analysis.outliers(x, y, 3, 5.0)] == [60]


@pytest.mark.slow
def test_command_line(tmp_path):
  module = export_blocks_module(tmp_path / 'blocks')
  root = make_planted(tmp_path / 'images')
  out = tmp_path / 'report'
  done = subprocess.run(
      [sys.executable, '-m', 'retrain.inspect', f'--image_dir={root}',
       f'--output_dir={out}', f'--tfhub_module={module}',
       f'--bottleneck_dir={tmp_path / "cache"}', '--label_error_folds=3'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**__import__('os').environ, 'PYTHONPATH': str(ROOT)})
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.split() == [str(out / 'report.html'),
                                 str(out / 'report.json')]
  assert json.loads((out / 'report.json').read_text())['label_errors'][
      'folds'] == 3
  bad = subprocess.run(
      [sys.executable, '-m', 'retrain.inspect', f'--image_dir={root}',
       f'--output_dir={out}', f'--tfhub_module={module}',
       '--label_error_folds=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**__import__('os').environ, 'PYTHONPATH': str(ROOT)})
  assert bad.returncode == 1
  assert '--label_error_folds=1 must be at least 2' in bad.stderr


def test_the_out_of_fold_head_is_the_solvers_fit(monkeypatch):
  from retrain.head import lbfgs
  seen = []
  real_fit = lbfgs.SoftmaxLbfgs.fit

  def spy(self, x, *args, **kwargs):
    seen.append((self.l2, self.standardise, len(x)))
    return real_fit(self, x, *args, **kwargs)

  monkeypatch.setattr(lbfgs.SoftmaxLbfgs, 'fit', spy)
  rng = np.random.default_rng(2)
  y = np.repeat(np.arange(2), 10)
  x = (np.eye(2, 6, dtype=np.float32)[y] * 4
       + rng.normal(0, 0.5, (20, 6)).astype(np.float32))
  probs = analysis.out_of_fold_probabilities(x, y, 2, 4)
  assert seen == [(0.1, True, 15)] * 4
  assert np.mean(probs.argmax(axis=1) == y) == 1.0
