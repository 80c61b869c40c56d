"""Distortions: each one's effect on a synthetic image, determinism, cache
keys and namespaces, flag checks, and end to end with the cache."""

import dataclasses
import io
import math
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

import bottleneck_cache
from retrain import images, pipeline
from retrain.bottlenecks import compute as bottlenecks
from retrain.bottlenecks import distort
from retrain.config import Distort
from retrain.errors import DatasetError
from retrain.features import modules as features
from tests.conftest import RUN_PLACES, flags_of, make_colour_dataset

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = (32, 32)


def _png(pixels: np.ndarray) -> tf.Tensor:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buf, format='PNG')
  return tf.constant(buf.getvalue())


@pytest.fixture(scope='module')
def textured():
  """A lossless random-texture image (no symmetry a test could be fooled by)
  and its plain decode at SIZE, float32 [32, 32, 3]."""
  rng = np.random.default_rng(0)
  contents = _png(rng.integers(0, 256, (32, 32, 3)))
  return contents, images.decode_and_resize(contents, SIZE).numpy()


def _copies(contents, n=16, **settings):
  d = Distort(**settings)
  return [distort.distort_image(
      contents, SIZE, tf.constant(distort.copy_seed(0, 'img', c), tf.int64),
      d).numpy() for c in range(n)]


def test_no_setting_equals_plain_decode(textured):
  contents, plain = textured
  for out in _copies(contents, n=2):
    np.testing.assert_array_equal(out, plain)


def test_flip_mirrors_exactly_about_half_the_time(textured):
  contents, plain = textured
  outs = _copies(contents, flip_left_right=True)
  mirrored = [np.array_equal(o, plain[:, ::-1]) for o in outs]
  unchanged = [np.array_equal(o, plain) for o in outs]
  assert all(m or u for m, u in zip(mirrored, unchanged))
  assert 3 <= sum(mirrored) <= 13


def test_brightness_scales_every_pixel_by_one_factor_in_range():
  # Mid-grey texture, so no pixel reaches the [0, 1] clip at +-30%.
  rng = np.random.default_rng(1)
  contents = _png(rng.integers(90, 160, (32, 32, 3)))
  plain = images.decode_and_resize(contents, SIZE).numpy()
  factors = []
  for out in _copies(contents, random_brightness=30):
    ratio = out / plain
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    factors.append(ratio.flat[0])
  assert 0.7 <= min(factors) and max(factors) <= 1.3
  assert max(factors) - min(factors) > 0.2  # really drawn, not constant


def test_brightness_is_clipped_to_module_range():
  contents = _png(np.full((32, 32, 3), 250))
  outs = _copies(contents, random_brightness=50)
  assert max(o.max() for o in outs) == 1.0
  assert min(o.min() for o in outs) >= 0.0


@pytest.mark.parametrize('settings', [
    dict(random_crop=20), dict(random_scale=50),
    dict(random_crop=10, random_scale=30),
    dict(random_rotation=20), dict(random_shift=15),
])
def test_geometric_distortions_keep_size_and_change_pixels(textured, settings):
  contents, plain = textured
  outs = _copies(contents, n=4, **settings)
  for out in outs:
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not np.array_equal(out, plain)
  assert not np.array_equal(outs[0], outs[1])  # copies differ


def test_crop_window_is_a_zoom_of_the_image():
  """A left-to-right ramp: after a 50% margin crop each row still rises,
  but spans only about 1/1.5 of the ramp."""
  ramp = np.tile(np.linspace(0, 255, 48)[None, :, None], (48, 1, 3))
  contents = _png(ramp)
  for out in _copies(contents, n=4, random_crop=50):
    row = out[16, :, 0]
    assert np.all(np.diff(row) > 0)
    assert 0.55 < row[-1] - row[0] < 0.75


def test_rotation_by_90_degrees_and_integer_shift_are_exact():
  rng = np.random.default_rng(2)
  image = tf.constant(rng.random((8, 8, 3)), tf.float32)
  rotated = distort.rotate_and_shift(image, math.pi / 2, 0, 0).numpy()
  np.testing.assert_allclose(rotated, np.rot90(image.numpy(), k=-1),
                             atol=1e-5)
  shifted = distort.rotate_and_shift(image, 0.0, 3, 2).numpy()
  np.testing.assert_allclose(shifted[2:, 3:], image.numpy()[:-2, :-3],
                             atol=1e-5)


@pytest.mark.slow
def test_copy_is_the_same_whatever_batch_it_falls_in(tmp_path, fake_module):
  root = make_colour_dataset(tmp_path / 'img', per_class=3)
  paths = sorted(str(p) for p in root.rglob('*.jpg'))
  module = features.load_module(fake_module)
  d = Distort(flip_left_right=True, random_crop=20,
              random_brightness=30, random_rotation=10)
  seeds = np.array([distort.copy_seed(7, p, 0) for p in paths], np.int64)
  results = []
  for batch_size in (1, 4, 9):
    compute = distort.make_compute_fn(paths, seeds, module, d, batch_size)
    out = np.zeros((len(paths), 6), np.float32)
    for indices, vectors in compute(list(range(len(paths)))):
      out[indices] = vectors
    results.append(out)
  np.testing.assert_array_equal(results[0], results[1])
  np.testing.assert_array_equal(results[0], results[2])
  # In reverse order too.
  compute = distort.make_compute_fn(paths, seeds, module, d, 4)
  out = np.zeros_like(results[0])
  for indices, vectors in compute(list(range(len(paths)))[::-1]):
    out[indices] = vectors
  np.testing.assert_array_equal(out, results[0])


def test_cache_keys_differ_per_copy_image_setting_and_seed(fake_module):
  module = features.load_module(fake_module)
  base = Distort(flip_left_right=True)
  ids = {bottleneck_cache.namespace_id(
      distort.cache_namespace(module, base, 0))}
  for field, value in [('flip_left_right', False), ('random_crop', 10),
                       ('random_scale', 10), ('random_brightness', 10),
                       ('random_rotation', 10), ('random_shift', 10)]:
    ids.add(bottleneck_cache.namespace_id(distort.cache_namespace(
        module, dataclasses.replace(base, **{field: value}), 0)))
  ids.add(bottleneck_cache.namespace_id(
      distort.cache_namespace(module, base, 1)))
  ids.add(bottleneck_cache.namespace_id(bottlenecks.cache_namespace(module)))
  assert len(ids) == 9  # every setting, the seed, and plain vectors apart
  keys = {distort.copy_key(img, c) for img in ('a', 'b') for c in range(3)}
  assert len(keys) == 6
  seeds = {distort.copy_seed(0, img, c) for img in ('a', 'b')
           for c in range(3)}
  assert len(seeds) == 6
  assert distort.copy_seed(0, 'a', 0) != distort.copy_seed(1, 'a', 0)
  assert distort.copy_seed(0, 'a', 0) == distort.copy_seed(0, 'a', 0)


def test_distortion_settings_keep_their_cache_namespace():
  """The namespace of distorted copies (module, the six distortions, seed)
  is the one caches already hold: these ids were computed before the
  settings moved into retrain.config.Distort."""
  module = types.SimpleNamespace(
      identity=lambda: {'handle': 'stub', 'output_dim': 6})
  ids = [bottleneck_cache.namespace_id(distort.cache_namespace(module, d, 7))
         for d in (Distort(), Distort(flip_left_right=True, random_crop=20,
                                      random_rotation=7.5))]
  assert ids == ['793d73b70c472e01bdca', 'd5456c19005661c6444f']
  # distorted_copies is not part of it: more copies reuse the namespace.
  assert distort.cache_namespace(module, Distort(distorted_copies=5), 7) == (
      distort.cache_namespace(module, Distort(), 7))


@pytest.mark.parametrize('field,value,match', [
    ('random_brightness', 150.0, 'random_brightness=150.0 is out of range'),
    ('random_crop', -5.0, 'random_crop=-5.0 is out of range'),
    ('random_rotation', float('nan'), 'random_rotation=nan'),
    ('random_shift', 80.0, 'from 0 to 50'),
    ('distorted_copies', -1, 'distorted_copies=-1 must be 0 or more'),
])
def test_bad_values_are_refused_before_work(small_config, field, value,
                                            match):
  config = small_config.replace(**{field: value})
  with pytest.raises(DatasetError, match=match):
    pipeline.run(config)
  assert not os.path.exists(small_config.cache.bottleneck_dir)


def test_zero_copies_with_a_distortion_is_refused(small_config):
  config = small_config.replace(flip_left_right=True,
                               distorted_copies=0)
  with pytest.raises(DatasetError, match='distorted_copies 1 or more'):
    pipeline.run(config)


@pytest.mark.slow
def test_run_with_distortions_uses_and_keeps_the_cache(small_config):
  make_colour_dataset(small_config.data.image_dir)
  # No export: these runs are about the cache (and come faster than the
  # one-second resolution of the export's set-aside names).
  small_config = small_config.replace(saved_model_dir='')
  config = small_config.replace(flip_left_right=True, random_crop=10,
      random_brightness=20, distorted_copies=2)

  result = pipeline.run(config)
  n_train = result.counts['train']
  assert result.test_accuracy == 1.0
  assert result.bottleneck_stats.computed == 36
  # Only training images are distorted: 2 copies each.
  assert result.distorted_stats.requested == 2 * n_train
  assert result.distorted_stats.computed == 2 * n_train
  assert 'distorted_copies' in result.timings

  again = pipeline.run(config)
  assert again.bottleneck_stats.computed == 0
  assert again.distorted_stats.computed == 0
  assert again.distorted_stats.reused == 2 * n_train
  assert again.test_accuracy == 1.0

  more = pipeline.run(config.replace(distorted_copies=3))
  assert more.distorted_stats.computed == n_train  # only copy index 2
  assert more.distorted_stats.reused == 2 * n_train

  changed = pipeline.run(config.replace(random_brightness=25))
  assert changed.distorted_stats.computed == 2 * n_train  # nothing reused
  assert changed.bottleneck_stats.computed == 0  # plain vectors still are

  plain = pipeline.run(small_config)
  assert plain.distorted_stats is None


@pytest.mark.slow
def test_distortions_change_the_training_vectors(small_config, monkeypatch):
  """The copies handed to training are really distorted: with brightness
  the fake module's pooled means move away from the originals'."""
  make_colour_dataset(small_config.data.image_dir, per_class=4)
  seen = {}
  real = distort.compute_distorted

  def spy(*args, **kw):
    out = real(*args, **kw)
    seen['copies'] = out
    return out

  monkeypatch.setattr(distort, 'compute_distorted', spy)
  pipeline.run(small_config.replace(random_brightness=40,
                                   distorted_copies=3))
  copies = seen['copies']
  assert copies.vectors.shape[1] == 6
  module = features.load_module(small_config.module.tfhub_module)
  store = bottleneck_cache.BottleneckStore(
      small_config.cache.bottleneck_dir, bottlenecks.cache_namespace(module))
  paths = sorted(str(p) for p in
                 pathlib.Path(small_config.data.image_dir).rglob('*.jpg'))
  originals = bottlenecks.compute_bottlenecks(paths, module, store, 16)
  assert originals.stats.computed == 0  # all from the run's cache
  # Every copy differs from every original (brightness factor != 1).
  dist = np.abs(copies.vectors[:, None, :] -
                originals.vectors[None]).max(axis=2)
  assert dist.min() > 1e-3


@pytest.mark.slow
def test_cli_accepts_distortion_flags(small_config):
  make_colour_dataset(small_config.data.image_dir, per_class=6)
  args = [*flags_of(small_config, *RUN_PLACES, 'output_dir'),
          '--how_many_training_steps', '100', '--learning_rate', '0.5',
          '--flip_left_right', '--random_crop', '10', '--random_scale', '10',
          '--random_brightness', '10', '--random_rotation', '5',
          '--random_shift', '5', '--distorted_copies', '1']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-m', 'retrain', *args],
                        capture_output=True, text=True, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Computing' in proc.stderr and 'distorted copies' in proc.stderr
  assert 'Final test accuracy = 100.0%' in proc.stderr
