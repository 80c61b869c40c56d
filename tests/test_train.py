"""The head trainer: learns, is repeatable, evaluates where retrain.py did,
and writes the TensorBoard summaries it promises."""

import numpy as np
import pytest

from retrain.errors import RetrainError
from retrain.head import train
from retrain.report import summaries


def _blobs(n_per_class=40, dim=16, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 3, (classes, dim))
  y = np.repeat(np.arange(classes), n_per_class)
  x = centres[y] + rng.normal(0, 0.5, (len(y), dim))
  return x.astype(np.float32), y


_SETTINGS = {f for f in train.Settings.__dataclass_fields__}


def _train_head(x, y, num_classes, vx, vy, **kw):
  """train.train_head with Settings and Hooks fields as keywords."""
  settings = train.Settings(**{k: v for k, v in kw.items() if k in _SETTINGS})
  hooks = train.Hooks(**{k: v for k, v in kw.items() if k not in _SETTINGS})
  return train.train_head(x, y, num_classes, vx, vy, settings, hooks)


def test_eval_steps_match_retrain_py():
  assert train.eval_steps(4000, 10)[:3] == [0, 10, 20]
  assert train.eval_steps(4000, 10)[-2:] == [3990, 3999]
  assert train.eval_steps(25, 10) == [0, 10, 20, 24]


@pytest.mark.slow
def test_learns_and_is_repeatable():
  x, y = _blobs()
  kw = dict(steps=200, learning_rate=0.1, batch_size=32, eval_step_interval=50,
            validation_batch_size=-1, seed=3)
  a = _train_head(x, y, 3, x[:30], y[:30], **kw)
  b = _train_head(x, y, 3, x[:30], y[:30], **kw)
  np.testing.assert_array_equal(a.head.weights, b.head.weights)
  assert a.head.weights.shape == (16, 3) and a.head.biases.shape == (3,)
  assert a.history[-1].validation_accuracy == 1.0
  assert a.history[-1].validation_count == 30
  assert np.mean(a.head.probabilities(x).argmax(1) == y) == 1.0
  c = _train_head(x, y, 3, x[:30], y[:30], **dict(kw, seed=4))
  assert not np.array_equal(a.head.weights, c.head.weights)


def test_class_uniform_sampling_ignores_class_size():
  """retrain.py's sampling: a 10:1 imbalance does not bias the biases."""
  x, y = _blobs(n_per_class=200, classes=2)
  keep = np.concatenate([np.arange(200), np.arange(200, 220)])
  result = _train_head(x[keep], y[keep], 2, x[:0], y[:0], steps=300,
                            learning_rate=0.05, batch_size=50,
                            eval_step_interval=100, validation_batch_size=100,
                            seed=0)
  assert result.history[-1].validation_accuracy is None
  assert abs(result.head.biases[0] - result.head.biases[1]) < 0.2


def test_summaries_written_at_each_evaluation(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  x, y = _blobs()
  writers = summaries.Writers(str(tmp_path))
  _train_head(x, y, 3, x[:20], y[:20], steps=30, learning_rate=0.1,
                   batch_size=16, eval_step_interval=10,
                   validation_batch_size=10, seed=0, writers=writers)
  writers.close()
  acc = event_accumulator.EventAccumulator(
      str(tmp_path / 'train'), size_guidance={'tensors': 0})
  acc.Reload()
  tags = acc.Tags()['tensors']
  for tag in ('accuracy', 'cross_entropy', 'final_layer/weights',
              'final_layer/biases', 'final_layer/activations'):
    assert tag in tags
  assert [e.step for e in acc.Tensors('accuracy')] == [0, 10, 20, 29]
  val = event_accumulator.EventAccumulator(str(tmp_path / 'validation'),
                                           size_guidance={'tensors': 0})
  val.Reload()
  assert [e.step for e in val.Tensors('cross_entropy')] == [0, 10, 20, 29]


def test_plan_returns_to_python_only_where_a_callback_needs_it():
  points = train.eval_steps(25, 10)  # [0, 10, 20, 24]
  assert train.plan(points, 25, set(), 0, 500) == [([0, 10, 20, 24], 25)]
  assert train.plan(points, 25, {10}, 0, 500) == [([0, 10], 11),
                                                   ([20, 24], 25)]
  # on_head every 15 steps: a call stops between two evaluations.
  assert train.plan(points, 25, set(), 15, 500) == [([0, 10], 15),
                                                     ([20, 24], 25)]
  # Long runs return at the first evaluation after max_steps steps.
  assert train.plan(train.eval_steps(40, 10), 40, set(), 0, 10) == [
      ([0, 10], 11), ([20], 21), ([30], 31), ([39], 40)]
  assert train.plan([], 0, set(), 0, 500) == []


class _StepsCallback:
  """An on_eval_head callback that wants the head at some steps only."""

  def __init__(self, steps):
    self.steps = set(steps)
    self.seen = []

  def __call__(self, step, head):
    self.seen.append(step)


@pytest.mark.slow
def test_callbacks_and_call_boundaries_do_not_change_training(monkeypatch):
  x, y = _blobs()
  kw = dict(steps=95, learning_rate=0.1, batch_size=16, eval_step_interval=10,
            validation_batch_size=10, seed=5)
  plain = _train_head(x, y, 3, x[:20], y[:20], **kw)
  monkeypatch.setattr(train, '_MAX_CALL_STEPS', 25)
  heads, every, evaluated = [], [], []
  some = _StepsCallback([20, 50, 55, 94])
  called = _train_head(
      x, y, 3, x[:20], y[:20], **kw, on_eval=evaluated.append,
      head_every=30, on_head=lambda step, head: heads.append(step),
      on_eval_head=lambda step, head: every.append(step))
  np.testing.assert_array_equal(plain.head.weights, called.head.weights)
  np.testing.assert_array_equal(plain.head.biases, called.head.biases)
  assert plain.history == called.history == evaluated
  assert [p.step for p in evaluated] == train.eval_steps(95, 10)
  assert heads == [30, 60, 90]
  assert every == train.eval_steps(95, 10)
  # A callback with `steps` is called at those of them that are evaluated.
  again = _train_head(x, y, 3, x[:20], y[:20], **kw, on_eval_head=some)
  assert some.seen == [20, 50, 94]
  np.testing.assert_array_equal(plain.head.weights, again.head.weights)


def test_histogram_buckets_match_tf_summary_histogram(tmp_path):
  import tensorflow as tf
  from tensorboard.backend.event_processing import event_accumulator
  rng = np.random.default_rng(0)
  cases = [rng.normal(size=(40, 7)).astype(np.float32),
           np.full(5, 3.0, np.float32), rng.random(1000)]
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default(step=0):
    for i, data in enumerate(cases):
      tf.summary.histogram(f'tf{i}', data)
      summaries.histogram(f'ours{i}', data)
  writer.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path),
                                           size_guidance={'tensors': 0})
  acc.Reload()
  for i in range(len(cases)):
    theirs = tf.make_ndarray(acc.Tensors(f'tf{i}')[0].tensor_proto)
    ours = tf.make_ndarray(acc.Tensors(f'ours{i}')[0].tensor_proto)
    np.testing.assert_array_equal(ours, theirs)
    assert acc.SummaryMetadata(f'ours{i}') == acc.SummaryMetadata(f'tf{i}')


def test_eval_log_keeps_about_twenty_lines_with_the_last_best_and_true_n(
    monkeypatch):
  """4000 steps evaluated every 10 make 401 points; the log shows at most
  20 of them plus the best, and N is the validation set's true size."""
  points = train.eval_steps(4000, 10)
  log = train.EvalLog(points)
  best_step = 1230  # not one of the evenly spread steps
  assert best_step not in log.steps
  # Captured at the call: absl's handler set-up may differ between tests.
  lines = []
  monkeypatch.setattr(train.logging, 'info',
                      lambda fmt, *args: lines.append(fmt % args))
  for step in points:
    log(train.EvalPoint(step, 0.5, 1.0,
                        0.9 if step == best_step else 0.5, 31, 100))
  log.finish()
  assert len(lines) == train.MAX_EVAL_LOG_LINES + 1
  assert lines[0].startswith('Step 0: ')
  assert lines[-2].startswith('Step 3999: ')
  assert lines[-1] == ('Best validation accuracy at step 1230: train '
                       'accuracy = 50.0%, cross entropy = 1.0000, validation '
                       'accuracy = 90.0% (100 draws from N=31)')


def test_eval_points_count_the_validation_set_not_the_draws():
  x, y = _blobs()
  sampled = _train_head(x, y, 3, x[:31], y[:31], steps=20, learning_rate=0.1,
                        batch_size=16, eval_step_interval=10,
                        validation_batch_size=100, seed=0)
  assert {(p.validation_count, p.validation_draws)
          for p in sampled.history} == {(31, 100)}
  whole = _train_head(x, y, 3, x[:31], y[:31], steps=20, learning_rate=0.1,
                      batch_size=16, eval_step_interval=10,
                      validation_batch_size=-1, seed=0)
  assert train.format_point(whole.history[-1]).endswith('(N=31)')


def test_spread_keeps_first_and_last():
  assert train.spread(range(5), 20) == [0, 1, 2, 3, 4]
  picked = train.spread(range(401), 20)
  assert len(picked) == 20 and picked[0] == 0 and picked[-1] == 400


def test_non_finite_vectors_are_refused_before_training():
  x, y = _blobs()
  x[5, 2] = np.nan
  with pytest.raises(RetrainError, match='1 of the 120 training vectors hold '
                     'NaN or infinity'):
    _train_head(x, y, 3, x[:0], y[:0], steps=5, learning_rate=0.1,
                batch_size=8, eval_step_interval=5,
                validation_batch_size=-1, seed=0)


def test_a_diverged_training_is_an_error_not_a_nan_model():
  x, y = _blobs()
  with pytest.raises(RetrainError, match='Training diverged'):
    _train_head(x * 1e30, y, 3, x[:0], y[:0], steps=20, learning_rate=1e30,
                batch_size=8, eval_step_interval=5,
                validation_batch_size=-1, seed=0)
