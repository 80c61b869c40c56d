"""Ensembles of feature modules: the list flag, the in-graph resize, the
concatenated vectors, per-module cache reuse, and the export round trip
(every format, through label_image)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from retrain import pipeline
from retrain.errors import ModuleError
from retrain.features import ensemble
from retrain.head import solve as solve_lib
from tests.conftest import (
  FAKE_SIZE,
  export_fake_module,
  make_colour_dataset,
  shrunk_config,
)
from tools import label_image

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL_SIZE = 24


@pytest.fixture(scope='module')
def small_module(tmp_path_factory):
  """A second fake module with another input size and other features."""
  return export_fake_module(tmp_path_factory.mktemp('modules') / 'pool24',
                            size=SMALL_SIZE, scale=2.0)


def test_member_handles_expand_presets_and_refuse_mistakes():
  assert ensemble.member_handles('efficientnet_lite0') == [
      'efficientnet_lite0']
  assert ensemble.member_handles('efficientnet_lite0+lite2') == [
      'efficientnet_lite0', 'efficientnet_lite2']
  assert ensemble.member_handles(' a , /x/b ') == ['a', '/x/b']
  with pytest.raises(ModuleError, match='empty entry'):
    ensemble.member_handles('a,,b')
  with pytest.raises(ModuleError, match='names efficientnet_lite0 more than'):
    ensemble.member_handles('efficientnet_lite0,efficientnet_lite0+lite1')


@pytest.mark.parametrize('size_in, size_out', [(32, 24), (37, 23), (8, 8)])
def test_area_resize_is_tf_area_resize(size_in, size_out):
  import tensorflow as tf
  images = np.random.default_rng(0).random((2, size_in, size_in + 3, 3),
                                           dtype=np.float32)
  ours = ensemble.area_resize(images, (size_in, size_in + 3),
                              (size_out, size_out + 1)).numpy()
  theirs = tf.image.resize(images, (size_out, size_out + 1),
                           method='area').numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_ensemble_module_concatenates_members(fake_module, small_module):
  import tensorflow as tf
  module = ensemble.load(f'{fake_module},{small_module}')
  assert module.input_size == (FAKE_SIZE, FAKE_SIZE)
  assert module.output_dim == 12
  assert [m['handle'] for m in ensemble.describe_modules(module)] == [
      fake_module, small_module]
  images = tf.random.stateless_uniform([3, FAKE_SIZE, FAKE_SIZE, 3], [1, 2])
  a, b = module.members
  expected = np.concatenate([
      a.call(images).numpy(),
      b.call(tf.image.resize(images, (SMALL_SIZE, SMALL_SIZE),
                             method='area')).numpy()], axis=1)
  np.testing.assert_allclose(module.call(images).numpy(), expected,
                             atol=1e-5)


def test_ensemble_run_reuses_member_cache_and_exports(
    tmp_path, fake_module, small_module, monkeypatch):
  root = make_colour_dataset(tmp_path / 'images')
  bottlenecks = str(tmp_path / 'bottlenecks')
  single = pipeline.run(shrunk_config(root, tmp_path / 'single', fake_module,
                                      bottleneck_dir=bottlenecks))
  assert single.bottleneck_stats.computed == 36

  seen = []
  real_fit = solve_lib.solver_lib.fit_head

  def spy(train_x, train_y, num_classes, val_x, val_y, options, **kw):
    seen.append((np.asarray(train_x).shape, np.asarray(val_x).shape))
    return real_fit(train_x, train_y, num_classes, val_x, val_y, options, **kw)

  monkeypatch.setattr(solve_lib.solver_lib, 'fit_head', spy)
  out = tmp_path / 'ensemble'
  config = shrunk_config(
      root, out, f'{fake_module},{small_module}', bottleneck_dir=bottlenecks,
      head_solver='lbfgs', tflite_output_file=str(out / 'model.tflite'))
  result = pipeline.run(config)

  # Only the new member's vectors were computed.
  assert result.bottleneck_stats.reused == 36
  assert result.bottleneck_stats.computed == 36
  assert result.test_accuracy == 1.0 and result.test_count >= 3
  # The head saw the concatenated vectors of train and validation only.
  (train_shape, val_shape), = seen
  assert train_shape == (result.counts['train'], 12)
  assert val_shape == (result.counts['validation'], 12)
  assert (out / 'report' / 'head_solver.json').exists()

  meta = json.loads((out / 'saved_model' / 'retrain_metadata.json')
                    .read_text())
  assert [m['handle'] for m in meta['modules']] == [fake_module,
                                                    small_module]
  assert [m['input_size'] for m in meta['modules']] == [
      [FAKE_SIZE, FAKE_SIZE], [SMALL_SIZE, SMALL_SIZE]]
  assert meta['input_height'] == FAKE_SIZE

  # Every export format classifies new photos, through label_image.
  photos = make_colour_dataset(tmp_path / 'photos', per_class=2, start=100)
  paths, problems = label_image.find_images([str(photos)])
  assert len(paths) == 6 and not problems
  probabilities = {}
  for kind, kwargs in [
      ('saved_model', dict(saved_model_dir=config.saved_model_dir)),
      ('frozen_graph', dict(graph=config.output_graph)),
      ('tflite', dict(graph=config.tflite_output_file))]:
    model = label_image.load_model(**kwargs)
    assert model.kind == kind
    records = label_image.classify_files(model, paths, top_k=1)
    assert [r.top[0][0] for r in records] == [
        pathlib.Path(p).parent.name for p in paths]
    probabilities[kind] = np.array([r.top[0][1] for r in records])
  np.testing.assert_allclose(probabilities['tflite'],
                             probabilities['saved_model'], atol=1e-3)
  np.testing.assert_allclose(probabilities['frozen_graph'],
                             probabilities['saved_model'], atol=1e-4)


@pytest.mark.slow
def test_cli_auto_solver_follows_the_training_flags(tmp_path, fake_module):
  root = make_colour_dataset(tmp_path / 'images')

  def run(out, *extra):
    args = [sys.executable, '-m', 'retrain', '--image_dir', str(root),
            '--tfhub_module', fake_module,
            '--bottleneck_dir', str(tmp_path / 'bottlenecks'),
            '--summaries_dir', str(out / 'logs'),
            '--output_labels', str(out / 'labels.txt'),
            '--saved_model_dir', str(out / 'saved_model'),
            '--report_dir', str(out / 'report'), '--output_graph', '',
            '--projector_max_images', '0', *extra]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr

  log = run(tmp_path / 'sgd', '--learning_rate', '0.5',
            '--how_many_training_steps', '100')
  assert ('training with sgd (retrain.py\'s training) because '
          '--how_many_training_steps, --learning_rate were given') in log
  assert not (tmp_path / 'sgd' / 'report' / 'head_solver.json').exists()

  log = run(tmp_path / 'auto')
  assert 'training with sgd' not in log
  assert 'Head solver (L-BFGS): l2=' in log
  assert 'Final test accuracy = 100.0% (N=' in log and '95% CI' in log
  report = json.loads((tmp_path / 'auto' / 'report' / 'head_solver.json')
                      .read_text())
  assert report['selection'] in ('validation', 'k-fold')
  assert len(report['candidates']) == 6 and report['curve']


def test_shared_pass_decodes_once_and_matches_each_member_alone(
    tmp_path, fake_module, small_module, monkeypatch):
  import bottleneck_cache
  from retrain import images as images_lib
  from retrain.bottlenecks import compute as bottlenecks_lib
  from retrain.bottlenecks import ensemble as ensemble_bottlenecks
  root = make_colour_dataset(tmp_path / 'images', per_class=3)
  bad = root / 'red' / 'broken.jpg'
  bad.write_bytes(b'\xff\xd8 not really a jpeg')
  paths = sorted(str(p) for p in root.glob('*/*'))
  module = ensemble.load(f'{fake_module},{small_module}')

  # Each member alone, in a cache of its own.
  alone = []
  for member in module.members:
    store = bottleneck_cache.BottleneckStore(
        str(tmp_path / 'alone'), bottlenecks_lib.cache_namespace(member))
    alone.append(bottlenecks_lib.compute_bottlenecks(paths, member, store, 4))

  traced_sizes = []
  real = images_lib.decode_and_resize_sizes

  def spy(contents, sizes):
    traced_sizes.append(list(sizes))
    return real(contents, sizes)

  monkeypatch.setattr(images_lib, 'decode_and_resize_sizes', spy)
  together = ensemble_bottlenecks.compute_bottlenecks(
      paths, module, module, str(tmp_path / 'together'), 'tf', 4)
  # One decode for both members' sizes, in the shared pass.
  assert traced_sizes == [[(FAKE_SIZE, FAKE_SIZE), (SMALL_SIZE, SMALL_SIZE)]]
  assert together.stats.computed == 2 * (len(paths) - 1)
  assert together.stats.reused == 0
  np.testing.assert_array_equal(together.ok, alone[0].ok)
  assert not together.ok[paths.index(str(bad))]
  assert [p for p, _ in together.failures] == [str(bad)]
  np.testing.assert_allclose(
      together.vectors,
      np.concatenate([alone[0].vectors, alone[1].vectors], axis=1), atol=1e-6)

  # Everything usable is cached now: a second run computes nothing.
  again = ensemble_bottlenecks.compute_bottlenecks(
      paths, module, module, str(tmp_path / 'together'), 'tf', 4)
  assert again.stats.computed == 0
  assert again.stats.reused == 2 * (len(paths) - 1)
  np.testing.assert_array_equal(again.vectors, together.vectors)


def test_check_handles_refuses_what_load_would_without_loading(tmp_path):
  # Issue 17: a run checks the module handles before hashing its files.
  ensemble.check_handles('efficientnet_lite0,efficientnet_lite2')
  ensemble.check_handles('https://example.invalid/module/1')  # on load
  with pytest.raises(ModuleError) as e:
    ensemble.check_handles('efficientnet_lite0', image_size=300)
  assert 'fixed at 224x224' in str(e.value)
  assert e.value.fields == ('image_size',)
  with pytest.raises(ModuleError, match='neither a preset name'):
    ensemble.check_handles(f'efficientnet_lite0,{tmp_path / "missing"}')
  with pytest.raises(ModuleError, match='more than once'):
    ensemble.check_handles('efficientnet_lite0,efficientnet_lite0')
