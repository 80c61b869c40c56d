"""The one TFLite runner (retrain/features/tflite_runner.py): batches,
dequantisation, and the one runtime of bottlenecks, quantisation check and
label_image."""

import numpy as np
import pytest

from retrain.features import tflite_runner

SIZE = (6, 5)


@pytest.fixture(scope='module')
def tiny_tflite(tmp_path_factory):
  """A float TFLite model: images [n, 6, 5, 3] -> (softmax [n, 3] of a
  dense layer over the channel means, the mean [n]); and its TF twin."""
  import tensorflow as tf
  weights = tf.constant([[1.0, -2.0, 0.5], [0.3, 2.0, -1.0],
                         [-0.7, 0.1, 3.0]])

  @tf.function(input_signature=[tf.TensorSpec([None, *SIZE, 3], tf.float32)])
  def model(images):
    means = tf.reduce_mean(images, axis=[1, 2])
    return (tf.nn.softmax(tf.matmul(means, weights)),
            tf.reduce_mean(means, axis=1))

  content = tf.lite.TFLiteConverter.from_concrete_functions(
      [model.get_concrete_function()], model).convert()
  path = tmp_path_factory.mktemp('tflite') / 'tiny.tflite'
  path.write_bytes(content)
  return path, content, lambda x: [t.numpy() for t in model(x)]


def _images(n, seed=0):
  return np.random.default_rng(seed).random((n, *SIZE, 3)).astype(np.float32)


@pytest.mark.parametrize('invoke_batch', [None, 1, 2, 8])
def test_every_batching_gives_the_models_outputs(tiny_tflite, invoke_batch):
  """Fixed batches (a padded last group) and one resized invoke agree with
  TensorFlow, row for row, for 5 images and then for 3."""
  _, content, reference = tiny_tflite
  runner = tflite_runner.TFLiteRunner(
      tflite_runner.open_interpreter(model_content=content), invoke_batch,
      SIZE)
  for n in (5, 3):
    images = _images(n, seed=n)
    got = runner.run(images)
    want = reference(images)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(g.dtype == np.float32 for g in got)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-5)


class _IntegerOutput:
  """An interpreter stand-in whose one output is uint8 with scale 0.5 and
  zero point 10: row i of the output is (i + 20) for every column."""

  def get_input_details(self):
    return [{'index': 0, 'shape': np.array([1, *SIZE, 3]),
             'dtype': np.float32}]

  def get_output_details(self):
    return [{'index': 1, 'dtype': np.uint8, 'quantization': (0.5, 10)}]

  def resize_tensor_input(self, index, shape):
    self.batch = shape[0]

  def allocate_tensors(self):
    pass

  def set_tensor(self, index, value):
    self.n = len(value)

  def invoke(self):
    pass

  def get_tensor(self, index):
    return (np.arange(self.n)[:, None] + 20).repeat(2, 1).astype(np.uint8)


def test_an_integer_output_is_dequantised():
  runner = tflite_runner.TFLiteRunner(_IntegerOutput())
  (out,) = runner.run(_images(3))
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, [[5, 5], [5.5, 5.5], [6, 6]])


def test_bottlenecks_quantisation_check_and_label_image_share_the_runtime(
    tiny_tflite, monkeypatch):
  """All three open their interpreters through tflite_runner, so they run
  whichever runtime it picks (LiteRT when installed)."""
  from retrain.export import quantization_check
  from retrain.features import tflite_runtime
  from retrain.predict import tflite as predict_tflite
  path, content, reference = tiny_tflite
  real = tflite_runner.interpreter_class()
  opened = []

  def counting(**kwargs):
    opened.append(sorted(kwargs))
    return real(**kwargs)

  monkeypatch.setattr(tflite_runner, 'interpreter_class', lambda: counting)
  images = _images(4)
  check = quantization_check.tflite_predictor(content)(images)
  predict, size = predict_tflite.load_tflite(str(path), None, None)
  label_image = predict(images)
  call = tflite_runtime.TFLiteCall(str(path), SIZE, 2, interpreters=1)
  bottlenecks = call(images).numpy()
  assert opened == [['model_content'], ['model_content', 'num_threads'],
                    ['model_path', 'num_threads']]
  assert size == SIZE
  for got in (check, label_image, bottlenecks):
    np.testing.assert_allclose(got, reference(images)[0], atol=1e-5)
