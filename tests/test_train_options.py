"""Each training option changes what it should, and the defaults train
exactly as retrain.py did."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from retrain.common import names, settings
from retrain.config import DEFAULTS
from retrain.errors import DatasetError
from retrain.head import options as opts_lib
from retrain.head import train

PLAIN = DEFAULTS.head


def _opts(**kw):
  return dataclasses.replace(PLAIN, **kw)


def _separable(n_per_class=20, seed=0):
  """Three well separated clusters in 4 dimensions."""
  rng = np.random.default_rng(seed)
  centres = np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]], np.float32)
  y = np.repeat(np.arange(3), n_per_class)
  x = centres[y] + rng.normal(0, 0.5, (len(y), 4)).astype(np.float32)
  return x, y


def _train(x, y, options, steps=200, lr=0.1, val=None, **kw):
  vx, vy = val if val is not None else (x[:0], y[:0])
  args = dict(steps=steps, learning_rate=lr, batch_size=32,
              eval_step_interval=10, validation_batch_size=-1, seed=0)
  hooks = train.Hooks(on_eval_head=kw.pop('on_eval_head', None))
  args.update(kw)
  return train.train_head(x, y, 3, vx, vy,
                          train.Settings(options=options, **args), hooks)


@pytest.mark.slow
def test_defaults_are_all_off_and_reproduce_plain_training():
  assert (PLAIN.optimizer, PLAIN.dropout_rate, PLAIN.l2_regularizer,
          PLAIN.label_smoothing, PLAIN.class_weighting, PLAIN.sampling,
          PLAIN.early_stopping_patience) == ('sgd', 0.0, 0.0, 0.0, 'none',
                                             'classes', 0)
  x, y = _separable()
  plain = _train(x, y, None, steps=50)
  default = _train(x, y, PLAIN, steps=50)
  np.testing.assert_array_equal(plain.head.weights, default.head.weights)
  np.testing.assert_array_equal(plain.head.biases, default.head.biases)


def test_flag_choices_match_the_library():
  from retrain import __main__ as cli
  assert tuple(cli.FLAGS['optimizer'].parser.enum_values) == names.OPTIMIZERS
  assert tuple(cli.FLAGS['sampling'].parser.enum_values) == names.SAMPLINGS
  assert (tuple(cli.FLAGS['class_weighting'].parser.enum_values)
          == names.CLASS_WEIGHTINGS)


@pytest.mark.parametrize('field,value,match', [
    ('optimizer', 'rmsprop', "optimizer='rmsprop' is not one of sgd"),
    ('dropout_rate', 1.0, r'dropout_rate=1.0 must be in \[0, 1\)'),
    ('label_smoothing', -0.1, 'label_smoothing=-0.1 must be'),
    ('l2_regularizer', -1.0, 'l2_regularizer=-1.0 must be 0'),
    ('class_weighting', 'auto', 'none, balanced'),
    ('early_stopping_patience', -2, 'early_stopping_patience=-2'),
])
def test_bad_values_are_refused_with_the_setting_name(field, value, match):
  with pytest.raises(DatasetError, match=match) as e:
    # The head's own checks, then its settings' declared choices (as
    # Config.check does in every program).
    opts_lib.check(_opts(**{field: value}))
    settings.check(_opts(**{field: value}))
  assert e.value.fields == (field,)
  assert '--' not in str(e.value)


def test_momentum_matches_hand_computed_steps():
  v = tf.Variable([1.0])
  opt = opts_lib.Optimizer('momentum', 0.1, [v])
  opt.apply([tf.constant([2.0])])  # m = 2; v = 1 - 0.2
  opt.apply([tf.constant([2.0])])  # m = 0.9*2 + 2 = 3.8; v = 0.8 - 0.38
  assert v.numpy()[0] == pytest.approx(0.42)


def test_adam_first_step_is_learning_rate_times_sign():
  v = tf.Variable([1.0, 1.0])
  opt = opts_lib.Optimizer('adam', 0.01, [v])
  opt.apply([tf.constant([5.0, -0.001])])
  np.testing.assert_allclose(v.numpy(), [0.99, 1.01], rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['momentum', 'adam'])
def test_faster_optimizers_beat_sgd_at_a_small_learning_rate(name):
  x, y = _separable()
  sgd = _train(x, y, PLAIN, steps=40, lr=0.01)
  other = _train(x, y, _opts(optimizer=name), steps=40, lr=0.01)
  assert other.history[-1].cross_entropy < 0.7 * sgd.history[-1].cross_entropy


def test_class_weights_balance_image_sampling_only():
  counts = [90, 10, 0]
  np.testing.assert_allclose(
      opts_lib.class_weights(counts, 'balanced', 'images'),
      [100 / (2 * 90), 100 / (2 * 10), 1.0])
  # Class-uniform sampling already balances: weights stay 1.
  assert opts_lib.class_weights(counts, 'balanced', 'classes').tolist() == \
      [1, 1, 1]
  assert opts_lib.class_weights(counts, 'none', 'images').tolist() == [1, 1, 1]


def test_class_weighting_changes_the_loss():
  logits = tf.constant([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
  labels = tf.constant([0, 0, 0, 1], tf.int64)
  w = tf.zeros([1, 2])
  plain = opts_lib.objective(logits, labels, w, None, 0.0, 0.0)
  weighted = opts_lib.objective(
      logits, labels, w, tf.constant(
          opts_lib.class_weights([3, 1], 'balanced', 'images')), 0.0, 0.0)
  # Every example has the same per-example loss here, so plain = that loss
  # and the weights (2/3, 2) average to 1 over this batch...
  assert float(weighted) == pytest.approx(float(plain))
  # ...but a mistake on the rare class now costs 3x a common one.
  wrong_rare = tf.constant([[2.0, 0.0]] * 4)
  a = opts_lib.objective(wrong_rare, labels, w, None, 0.0, 0.0)
  b = opts_lib.objective(wrong_rare, labels, w, tf.constant(
      opts_lib.class_weights([3, 1], 'balanced', 'images')), 0.0, 0.0)
  assert float(b) > 1.5 * float(a)


def _imbalanced_identical():
  """90 vs 10 images with the same features: only the prior separates them."""
  x = np.ones((100, 4), np.float32)
  y = np.array([0] * 90 + [1] * 10 + [], np.int64)
  x = np.concatenate([x, np.full((1, 4), 5.0, np.float32)])
  y = np.concatenate([y, [2]])
  return x, y


@pytest.mark.slow
def test_sampling_and_class_weighting_on_an_imbalanced_fixture():
  x, y = _imbalanced_identical()
  common = x[:1]

  def p(options):
    head = _train(x, y, options, steps=300, lr=0.1).head
    return head.probabilities(common)[0]

  by_class = p(PLAIN)  # retrain.py: classes drawn uniformly
  by_image = p(_opts(sampling='images'))
  balanced = p(_opts(sampling='images', class_weighting='balanced'))
  # Drawing images, the head learns the 9:1 prior; drawing classes or
  # weighting the loss, it does not.
  assert by_image[0] / by_image[1] > 5
  assert 0.6 < by_class[0] / by_class[1] < 1.6
  assert 0.6 < balanced[0] / balanced[1] < 1.6


@pytest.mark.slow
def test_l2_shrinks_the_weights():
  x, y = _separable()
  plain = _train(x, y, PLAIN)
  l2 = _train(x, y, _opts(l2_regularizer=0.1))
  assert (np.linalg.norm(l2.head.weights)
          < 0.6 * np.linalg.norm(plain.head.weights))


@pytest.mark.slow
def test_label_smoothing_keeps_probabilities_off_one():
  x, y = _separable()
  plain = _train(x, y, PLAIN, steps=400, lr=0.5)
  smooth = _train(x, y, _opts(label_smoothing=0.3), steps=400, lr=0.5)
  # The smoothed target for the true class is 1 - 0.3 + 0.3 / 3 = 0.8.
  assert plain.head.probabilities(x).max(axis=1).mean() > 0.97
  assert smooth.head.probabilities(x).max(axis=1).mean() == pytest.approx(
      0.8, abs=0.05)


def test_dropout_zeroes_and_rescales():
  gen = tf.random.Generator.from_seed(0)
  out = opts_lib.dropout(tf.ones([100, 100]), 0.25, gen).numpy()
  np.testing.assert_allclose(np.unique(out), [0.0, 1 / 0.75], rtol=1e-6)
  assert (out == 0).mean() == pytest.approx(0.25, abs=0.02)
  assert opts_lib.dropout(tf.ones([3]), 0.0, gen).numpy().tolist() == [1] * 3


@pytest.mark.slow
def test_dropout_changes_training_repeatably():
  x, y = _separable()
  a = _train(x, y, _opts(dropout_rate=0.5), steps=50)
  b = _train(x, y, _opts(dropout_rate=0.5), steps=50)
  plain = _train(x, y, PLAIN, steps=50)
  np.testing.assert_array_equal(a.head.weights, b.head.weights)
  assert not np.allclose(a.head.weights, plain.head.weights)


@pytest.mark.slow
@pytest.mark.parametrize('validation_batch_size', [-1, 10])
def test_early_stopping_restores_the_best_weights(validation_batch_size):
  x, y = _separable()
  # Validation labels rotated: the better the head fits, the worse the
  # validation loss, so the best evaluation is the first.
  vx, vy = x[::3], (y[::3] + 1) % 3
  seen = []
  result = _train(x, y, _opts(early_stopping_patience=3), steps=400,
                  val=(vx, vy), validation_batch_size=validation_batch_size,
                  on_eval_head=lambda step, head: seen.append(
                      (step, head)))
  assert [p.step for p in result.history] == [0, 10, 20, 30]
  assert result.best_step == 0
  np.testing.assert_array_equal(result.head.weights, seen[0][1].weights)
  # Without early stopping all 400 steps run.
  full = _train(x, y, PLAIN, steps=400, val=(vx, vy))
  assert full.history[-1].step == 399 and full.best_step is None
