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
from absl import logging as absl_logging

from retrain import pipeline
from retrain.config import Distort
from retrain.errors import ModuleError
from retrain.features import ensemble
from retrain.report import head_solver as solve_lib
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


@pytest.mark.parametrize('size_in, size_out', [
    ((260, 260), (224, 224)), ((260, 260), (240, 240)), ((37, 41), (23, 41)),
    ((8, 8), (8, 8)), ((300, 200), (17, 199))])
@pytest.mark.parametrize('batch', [1, 3, 8])
def test_area_resize_gives_full_products_bits(size_in, size_out, batch):
  images = np.random.default_rng(batch).random((batch, *size_in, 3),
                                               dtype=np.float32)
  images[0] = np.round(images[0] * 255) / 255  # decoded pixels' values too
  exact = ensemble.full_area_resize(images, size_in, size_out).numpy()
  resized = ensemble.area_resize(images, size_in, size_out).numpy()
  assert resized.shape == exact.shape == (batch, *size_out, 3)
  assert resized.tobytes() == exact.tobytes()


def test_area_resize_converts_to_tflite_with_any_batch():
  import tensorflow as tf

  from retrain.features import tflite_runner
  function = tf.function(
      lambda x: ensemble.area_resize(x, (37, 41), (23, 40)),
      input_signature=[tf.TensorSpec([None, 37, 41, 3], tf.float32)])
  model = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()]).convert()
  runner = tflite_runner.TFLiteRunner(
      tflite_runner.open_interpreter(model_content=model))
  for batch in (1, 3):
    images = np.random.default_rng(batch).random((batch, 37, 41, 3),
                                                  dtype=np.float32)
    got = runner.run(images)[0]
    assert got.shape == (batch, 23, 40, 3)
    np.testing.assert_allclose(
        got, ensemble.full_area_resize(images, (37, 41), (23, 40)).numpy(),
        atol=1e-6)


def test_one_resize_in_the_bottlenecks_and_the_exported_graph(monkeypatch):
  """A smaller member's bottleneck call and the traced ensemble graph both
  resize with area_resize, with no state kept between calls."""
  import tensorflow as tf

  from retrain.features.modules import FeatureModule
  seen = []
  resize = ensemble.area_resize

  def counted(images, size_in, size_out):
    seen.append((tf.executing_eagerly(), tuple(size_in), tuple(size_out)))
    return resize(images, size_in, size_out)
  monkeypatch.setattr(ensemble, 'area_resize', counted)
  member = FeatureModule(handle='m', resolved='m', path='', fingerprint='f',
                         input_size=(20, 20), output_dim=3, obj=None,
                         call=lambda x: tf.reduce_mean(x, axis=[1, 2]))
  resized = ensemble.at_ensemble_size(member, (30, 30))
  images = np.random.default_rng(0).random((2, 30, 30, 3), dtype=np.float32)
  want = tf.reduce_mean(resize(images, (30, 30), (20, 20)), axis=[1, 2])
  for _ in range(2):
    assert resized.call(images).numpy().tobytes() == want.numpy().tobytes()
  traced = tf.function(lambda x: ensemble.concatenated(
      [member.call], [(20, 20)], (30, 30), x)).get_concrete_function(
          tf.TensorSpec([None, 30, 30, 3], tf.float32))
  np.testing.assert_allclose(traced(tf.constant(images)).numpy(),
                             want.numpy(), atol=1e-6)
  assert seen == [(True, (30, 30), (20, 20))] * 2 + [
      (False, (30, 30), (20, 20))]
  assert not hasattr(ensemble, 'fast_area_resize')


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
    tmp_path, fake_module, small_module, monkeypatch, caplog):
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
  caplog.set_level('INFO', logger='absl')
  # absl's own verbosity INFO too, as the command line sets it: TensorFlow's
  # tracking code (TFLite conversion) restores absl's level from it, which
  # drops a level set on the logger alone.
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    result = pipeline.run(config)
  finally:
    absl_logging.set_verbosity(verbosity)
  # Every line of the log says something: no member heading left empty.
  assert not [m for m in caplog.messages if m.rstrip().endswith(':')]
  assert any(m.startswith('Computing bottlenecks of ') for m in
             caplog.messages)

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
      ('saved_model', dict(saved_model_dir=config.outputs.saved_model_dir)),
      ('frozen_graph', dict(graph=config.outputs.output_graph)),
      ('tflite', dict(graph=config.outputs.tflite_output_file))]:
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


def _export_vectors(module, paths):
  """The exported ensemble's vectors of `paths`: each photo decoded at the
  ensemble's input size, then the Ensemble's own call (in-graph resize)."""
  import tensorflow as tf

  from retrain import images as images_lib
  pixels = tf.stack([images_lib.load_image(p, module.input_size)
                     for p in paths])
  return module.obj(pixels).numpy()


def test_shared_pass_decodes_once_at_the_ensemble_size(
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

  # The largest member alone, in a cache of its own: the same vectors.
  store = bottleneck_cache.BottleneckStore(
      str(tmp_path / 'alone'), bottlenecks_lib.cache_namespace(
          module.members[0]))
  alone = bottlenecks_lib.compute_bottlenecks(paths, module.members[0],
                                              store, 4)

  traced_sizes = []
  real = images_lib.decode_and_resize

  def spy(contents, size, box=None):
    traced_sizes.append(tuple(size))
    return real(contents, size, box)

  monkeypatch.setattr(images_lib, 'decode_and_resize', spy)
  together = ensemble_bottlenecks.compute_bottlenecks(
      paths, module, module, str(tmp_path / 'together'), 'tf', 4)
  # Every decode at the ensemble's size (the shared pass's one decode of
  # each image serves both members; the broken file's retries too).
  assert traced_sizes and set(traced_sizes) == {(FAKE_SIZE, FAKE_SIZE)}
  assert together.stats.computed == 2 * (len(paths) - 1)
  assert together.stats.reused == 0
  np.testing.assert_array_equal(together.ok, alone.ok)
  assert not together.ok[paths.index(str(bad))]
  assert [p for p, _ in together.failures] == [str(bad)]
  np.testing.assert_allclose(together.vectors[:, :6], alone.vectors,
                             atol=1e-6)
  usable = [p for p, ok in zip(paths, together.ok) if ok]
  np.testing.assert_allclose(together.vectors,
                             _export_vectors(module, usable), atol=1e-6)

  # Everything usable is cached now: a second run computes nothing.
  again = ensemble_bottlenecks.compute_bottlenecks(
      paths, module, module, str(tmp_path / 'together'), 'tf', 4)
  assert again.stats.computed == 0
  assert again.stats.reused == 2 * (len(paths) - 1)
  np.testing.assert_array_equal(again.vectors, together.vectors)


def test_vectors_stored_in_groups_are_the_same(tmp_path, fake_module,
                                               small_module, monkeypatch):
  import bottleneck_cache
  from retrain.bottlenecks import compute as bottlenecks_lib
  from retrain.bottlenecks import ensemble as ensemble_bottlenecks
  root = make_colour_dataset(tmp_path / 'images', per_class=3)
  (root / 'red' / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
  paths = sorted(str(p) for p in root.glob('*/*'))
  usable = len(paths) - 1
  module = ensemble.load(f'{fake_module},{small_module}')
  real_put = bottleneck_cache.BottleneckStore.put
  results = {}
  for every in (1, 6):
    monkeypatch.setattr(bottlenecks_lib, 'STORE_EVERY', every)
    puts = []

    def put(store, keys, vectors, puts=puts):
      puts.append(len(keys))
      return real_put(store, keys, vectors)
    monkeypatch.setattr(bottleneck_cache.BottleneckStore, 'put', put)
    together = ensemble_bottlenecks.compute_bottlenecks(
        paths, module, module, str(tmp_path / f'every{every}'), 'tf', 4)
    alone = bottlenecks_lib.compute_bottlenecks(
        paths, module.members[0], bottleneck_cache.BottleneckStore(
            str(tmp_path / f'alone{every}'),
            bottlenecks_lib.cache_namespace(module.members[0])), 4)
    results[every] = (together, alone, puts)
  (one, one_alone, one_puts), (six, six_alone, six_puts) = results[1], results[6]
  # Each batch of 4 its own shard, or batches held until 6 vectors wait.
  batches = [4] * (usable // 4) + [usable % 4] * bool(usable % 4)
  # Two members, batch by batch, then the module alone.
  assert one_puts == [n for n in batches for _ in range(2)] + batches
  held = [8] * (usable // 8) + [usable % 8] * bool(usable % 8)
  assert six_puts == [n for n in held for _ in range(2)] + held
  for a, b in ((one, six), (one_alone, six_alone)):
    assert a.vectors.tobytes() == b.vectors.tobytes()  # same rows, order
    np.testing.assert_array_equal(a.ok, b.ok)
    assert a.failures == b.failures
    assert [p for p, _ in b.failures] == [str(root / 'red' / 'broken.jpg')]
    assert b.stats.computed == a.stats.computed


def test_grouped_joins_batches_in_order():
  from retrain.bottlenecks import compute as bottlenecks_lib
  batches = [(np.array([i, i + 10]), np.full((2, 3), i, np.float32))
             for i in range(5)]
  out = list(bottlenecks_lib.grouped(iter(batches), rows=3))
  assert [list(i) for i, _ in out] == [[0, 10, 1, 11], [2, 12, 3, 13],
                                       [4, 14]]
  np.testing.assert_array_equal(np.concatenate([v for _, v in out]),
                                np.concatenate([v for _, v in batches]))
  assert list(bottlenecks_lib.grouped(iter([]), rows=3)) == []


@pytest.fixture(scope='module')
def squares_module(tmp_path_factory):
  """A fake 24x24 module that sees how an image was resized: the mean of
  each channel and of its square (area resizing keeps the first, not the
  second)."""
  import tensorflow as tf

  class Squares(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec(
        [None, SMALL_SIZE, SMALL_SIZE, 3], tf.float32)])
    def __call__(self, images):
      return tf.concat([tf.reduce_mean(images, axis=[1, 2]),
                        tf.reduce_mean(images * images, axis=[1, 2]) * 50.0],
                       axis=1)

  path = tmp_path_factory.mktemp('modules') / 'squares24'
  tf.saved_model.save(Squares(), str(path))
  return str(path)


@pytest.mark.parametrize('own_pass', [False, True])
def test_ensemble_trains_on_the_vectors_its_export_computes(
    tmp_path, fake_module, squares_module, own_pass):
  from retrain import images as images_lib
  from retrain.bottlenecks import compute as bottlenecks_lib
  from retrain.bottlenecks import ensemble as ensemble_bottlenecks
  root = make_colour_dataset(tmp_path / 'images', per_class=3)
  paths = sorted(str(p) for p in root.glob('*/*'))
  module = ensemble.load(f'{fake_module},{squares_module}')
  cache = str(tmp_path / 'bottlenecks')
  if own_pass:  # the largest member cached: the small one's own pass runs
    ensemble_bottlenecks.compute_bottlenecks(
        paths, module.members[0], module.members[0], cache, 'tf', 4)
  trained = ensemble_bottlenecks.compute_bottlenecks(
      paths, module, module, cache, 'tf', 4)
  assert trained.ok.all()
  exported = _export_vectors(module, paths)
  np.testing.assert_allclose(trained.vectors, exported, atol=1e-6)

  # A single-module run of the smaller member neither reuses nor overwrites
  # the ensemble's vectors of it: they live in another namespace.
  small = module.members[1]
  single = ensemble_bottlenecks.compute_bottlenecks(paths, small, small,
                                                    cache, 'tf', 4)
  assert single.stats.reused == 0 and single.stats.computed == len(paths)
  alone = small.call(np.stack([images_lib.load_image(p, small.input_size)
                               for p in paths])).numpy()
  np.testing.assert_allclose(single.vectors, alone, atol=1e-6)
  assert np.abs(single.vectors - exported[:, 6:]).max() > 1e-4
  plain = bottlenecks_lib.cache_namespace(small)
  resized = bottlenecks_lib.cache_namespace(
      ensemble.at_ensemble_size(small, module.input_size))
  assert resized == dict(plain, ensemble_input_size=[FAKE_SIZE, FAKE_SIZE])
  # The largest member keeps its plain namespace (its vectors are shared).
  assert ensemble.at_ensemble_size(module.members[0],
                                   module.input_size) is module.members[0]


def test_ensemble_distorted_copies_are_what_the_export_computes(
    tmp_path, fake_module, squares_module):
  import tensorflow as tf

  import bottleneck_cache
  from retrain.bottlenecks import distort as distort_lib
  root = make_colour_dataset(tmp_path / 'images', per_class=2)
  paths = sorted(str(p) for p in root.glob('*/*'))
  keys = [bottleneck_cache.file_digest(p) for p in paths]
  module = ensemble.load(f'{fake_module},{squares_module}')
  d = Distort(flip_left_right=True, random_crop=20.0,
              random_brightness=20.0)
  copies = distort_lib.training_copies(distort_lib.CopyRecipe(d, 2, 7),
                                       str(tmp_path / 'cache'), 4, module,
                                       paths, keys)
  assert len(copies.source) == 2 * len(paths)
  expected = []
  for i, c in zip(copies.source, copies.copy, strict=True):
    image = distort_lib.distort_image(
        tf.constant(pathlib.Path(paths[i]).read_bytes()), module.input_size,
        tf.constant(distort_lib.copy_seed(7, keys[i], int(c)), tf.int64), d)
    expected.append(module.obj(image[None]).numpy()[0])
  np.testing.assert_allclose(copies.vectors, np.array(expected), atol=1e-5)


def test_check_handles_refuses_what_load_would_without_loading(tmp_path):
  # A run checks the module handles before hashing its files.
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
