"""What the exports of an int8 run compute: the translated int8 graph."""

import json
import logging
import pathlib

import numpy as np
import pytest

from retrain import pipeline
from retrain.bottlenecks import precision as precision_lib
from retrain.config import DEFAULTS
from retrain.export import int8_graph
from retrain.export import saved_model as export_lib
from retrain.features import ensemble as ensemble_lib
from retrain.features import int8, tflite_runtime
from retrain.features import modules as features
from retrain.head.model import Head
from tests.conftest import (
  FAKE_SIZE,
  export_fake_module,
  make_colour_dataset,
  shrunk_config,
)


def export_conv_module(path, size=16):
  """A tiny convolution network as a feature module: float32 [batch, size,
  size, 3] in [0, 1] -> float32 [batch, 8] (stride-2 3x3 conv, depthwise
  3x3, 1x1 conv with a residual add, ReLU6 after each, global mean): the
  ops of EfficientNet-Lite in small."""
  import tensorflow as tf
  rng = np.random.default_rng(7)

  def var(*shape, scale=0.5):
    return tf.Variable(rng.normal(0, scale, shape).astype(np.float32))

  class Convs(tf.Module):

    def __init__(self):
      super().__init__()
      self.k1, self.b1 = var(3, 3, 3, 8), var(8, scale=0.1)
      self.k2, self.b2 = var(3, 3, 8, 1), var(8, scale=0.1)
      self.k3, self.b3 = var(1, 1, 8, 8, scale=0.3), var(8, scale=0.1)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3],
                                                tf.float32)])
    def __call__(self, images):
      x = (images - 0.5) * 2.0
      x = tf.nn.relu6(tf.nn.conv2d(x, self.k1, 2, 'SAME') + self.b1)
      y = tf.nn.relu6(tf.nn.depthwise_conv2d(x, self.k2, [1, 1, 1, 1],
                                             'SAME') + self.b2)
      y = tf.nn.conv2d(y, self.k3, 1, 'VALID') + self.b3
      return tf.reduce_mean(tf.nn.relu6(x + y), axis=[1, 2])

  tf.saved_model.save(Convs(), str(path))
  return str(path)


@pytest.fixture
def conv_module(tmp_path):
  return features.load_module(export_conv_module(tmp_path / 'convs'))


def _images(size, count=6, seed=3):
  return np.random.default_rng(seed).random(
      (count, size, size, 3)).astype(np.float32)


def _output_step(path):
  """The scale of the int8 tensor the model's last op dequantises."""
  graph = int8_graph.Int8Graph(path, (1, 1))
  ops = graph._ops.value  # noqa: SLF001 the test reads the model it built
  return float(graph.quant(ops[-1][1].inputs[0]).scale[0])


def test_translated_graph_matches_the_int8_interpreter(conv_module):
  quantized = int8.load(conv_module)
  path = int8.int8_file(conv_module)
  graph = int8_graph.Int8Graph(path, conv_module.input_size)
  ops = {name for name, _ in graph._ops.value}  # noqa: SLF001
  assert {'CONV_2D', 'DEPTHWISE_CONV_2D', 'ADD', 'MEAN'} <= ops
  images = _images(16, count=16)
  got = graph(images).numpy()
  want = quantized.call(images).numpy()
  assert got.shape == want.shape == (16, 8) and got.dtype == np.float32
  steps = np.abs(got - want) / _output_step(path)
  # A rounding step here and there, no more.
  assert steps.max() <= 1.01
  assert np.min(int8.cosines(got, want)) > 0.999
  # Not the float module's vectors: the int8 ones.
  float_vectors = conv_module.call(images).numpy()
  assert np.abs(got - want).max() < np.abs(float_vectors - want).max()
  # Weights are variables holding the int8 model's integers.
  assert graph.variables
  for v in graph.variables:
    np.testing.assert_array_equal(v.numpy(), np.round(v.numpy()))


def test_a_traced_caller_holds_the_graphs_ops_once(conv_module):
  import tensorflow as tf
  from tensorflow.python.framework import tensor_util
  int8.load(conv_module)  # writes the int8 model
  graph = int8_graph.Int8Graph(int8.int8_file(conv_module),
                               conv_module.input_size)
  traced = tf.function(lambda x: graph(x) * 2.0).get_concrete_function(
      tf.TensorSpec([None, 16, 16, 3], tf.float32)).graph
  ops = traced.get_operations()
  # The ops sit in the caller's graph, not in a nested function.
  assert {'Conv2D', 'DepthwiseConv2dNative', 'Round'} <= {o.type for o in ops}
  assert not [o for o in ops if 'PartitionedCall' in o.type]
  # One constant node per value (the requantisations' bounds repeat).
  values = [tensor_util.MakeNdarray(o.get_attr('value')) for o in ops
            if o.type == 'Const' and o.get_attr('dtype') == tf.float32]
  keys = [(v.shape, v.tobytes()) for v in values]
  assert len(keys) == len(set(keys))
  # The filters are variables, the biases constants.
  assert len(graph.variables) == 3
  assert {tuple(v.shape) for v in graph.variables} == {
      (3, 3, 3, 8), (3, 3, 8, 1), (1, 1, 8, 8)}
  images = _images(16)
  np.testing.assert_array_equal(tf.function(lambda x: graph(x))(images),
                                graph(images).numpy())


def test_pooling_module_translates_exactly(tmp_path):
  module = features.load_module(str(export_fake_module(tmp_path / 'pool')))
  quantized = int8.load(module)
  graph = int8_graph.Int8Graph(int8.int8_file(module), module.input_size)
  images = _images(FAKE_SIZE)
  np.testing.assert_array_equal(graph(images).numpy(),
                                quantized.call(images).numpy())


def test_an_untranslatable_op_falls_back_to_float_with_one_line(
    conv_module, monkeypatch, caplog):
  quantized = int8.load(conv_module)
  monkeypatch.delitem(int8_graph._TRANSLATORS, 'MEAN')  # noqa: SLF001
  with pytest.raises(int8_graph.Untranslatable, match='op MEAN'):
    int8_graph.Int8Graph(int8.int8_file(conv_module), conv_module.input_size)
  with caplog.at_level(logging.WARNING):
    exported, served = int8_graph.export_module(quantized, conv_module)
  assert exported is conv_module and served is conv_module
  lines = [r.getMessage() for r in caplog.records
           if 'compute float features' in r.getMessage()]
  assert len(lines) == 1 and 'op MEAN is not translated' in lines[0]
  assert 'convs' in lines[0]


def test_an_ensemble_exports_each_int8_member_as_its_graph(tmp_path,
                                                           conv_module):
  small = features.load_module(str(export_fake_module(tmp_path / 'pool',
                                                      size=8)))
  module = ensemble_lib.load(f'{conv_module.path},{small.path}')
  quantized = int8.load(module.members[0])
  chosen = dataclasses_replace(module, quantized)
  exported, served = int8_graph.export_module(chosen, module)
  assert served is None
  assert isinstance(exported.members[0].obj, int8_graph.Int8Graph)
  assert exported.members[1].obj is module.members[1].obj
  images = _images(16)
  got = exported.obj(images).numpy()
  assert got.shape == (len(images), 14)
  np.testing.assert_array_equal(got[:, :8], exported.members[0].obj(
      images).numpy())
  np.testing.assert_allclose(got[:, 8:], module.obj(images).numpy()[:, 8:],
                             atol=1e-6)
  # A float ensemble is exported as it is.
  assert int8_graph.export_module(module, module) == (module, None)


def dataclasses_replace(module, first):
  """`module` (an ensemble) with its first member replaced by `first`."""
  import dataclasses
  return dataclasses.replace(module, members=(first, *module.members[1:]))


def test_int8_saved_model_gives_the_heads_probabilities(tmp_path,
                                                        conv_module):
  quantized = int8.load(conv_module)
  exported, served = int8_graph.export_module(quantized, conv_module)
  assert served is None and isinstance(exported.obj, int8_graph.Int8Graph)
  rng = np.random.default_rng(0)
  head = Head(rng.normal(0, 3, (8, 3)).astype(np.float32),
              rng.normal(0, 1, 3).astype(np.float32))
  saved = export_lib.export_saved_model(str(tmp_path / 'saved'), exported,
                                        head, ['a', 'b', 'c'], 'final_result')
  images = make_colour_dataset(tmp_path / 'photos', per_class=3)
  paths = sorted(str(p) for p in images.rglob('*.jpg'))
  from retrain import images as images_lib
  decoded = np.stack([images_lib.load_image(p, (16, 16)).numpy()
                      for p in paths])
  vectors = quantized.call(decoded).numpy()
  served = _served_probabilities(saved, paths)
  want = head.probabilities(vectors)
  # Tolerance: the translated graph and the int8 interpreter differ by at
  # most a rounding step of a vector element here and there.
  assert served.shape == want.shape == (len(paths), 3)
  assert np.array_equal(served.argmax(1), want.argmax(1))
  assert np.abs(served - want).max() <= 1e-3
  # The float module's features would not pass (the comparison can fail).
  float_want = head.probabilities(conv_module.call(decoded).numpy())
  assert np.abs(served - float_want).max() > 1e-2


def _served_probabilities(saved, paths):
  """float32 [n, N]: the SavedModel's `serving_bytes` signature on the
  files as they are (decoded in the graph)."""
  import tensorflow as tf

  from retrain.export import signatures as signatures_lib
  contents = [pathlib.Path(p).read_bytes() for p in paths]
  loaded = tf.saved_model.load(saved)
  return loaded.signatures[signatures_lib.BYTES_SIGNATURE](
      image_bytes=tf.constant(contents))['probabilities'].numpy()


def test_default_precision_is_auto():
  assert DEFAULTS.cache.bottleneck_precision == 'auto'


def test_auto_keeps_a_tiny_module_float(tmp_path):
  module = features.load_module(str(export_fake_module(tmp_path / 'pool')))
  runner = tflite_runtime.deferred(module, 'auto')
  assert int8.auto_choice(module, runner) is None
  probe = precision_lib.Probe(paths=[], keyed=([], [], []),
                              bottleneck_dir=str(tmp_path / 'bn'),
                              batch_size=4, max_pixels=10 ** 8)
  assert precision_lib.choose(module, 'auto', 'auto', None, probe) is module


@pytest.mark.slow
def test_int8_run_exports_compute_the_int8_features(tmp_path):
  module = export_conv_module(tmp_path / 'convs')
  images = make_colour_dataset(tmp_path / 'images', per_class=10)
  config = shrunk_config(images, tmp_path / 'out', module,
                         bottleneck_precision='int8',
                         tflite_output_file=str(tmp_path / 'out' / 'm.tflite'))
  result = pipeline.run(config)
  assert result.bottleneck_precision == 'int8'
  summary = json.loads((pathlib.Path(config.outputs.report_dir) /
                        pipeline.RUN_SUMMARY_FILE).read_text())
  check = summary['export_check']
  assert check == result.export_check and check['head_in_saved_model']
  [member] = check['members']
  assert member['matches'] and member['max_output_steps'] <= 1.01
  # The SavedModel gives the head's probabilities on the int8 vectors.
  loaded = features.load_module(module)
  quantized = int8.load(loaded)
  paths = sorted(str(p) for p in pathlib.Path(images).rglob('*.jpg'))[:8]
  from retrain import images as images_lib
  decoded = np.stack([images_lib.load_image(p, (16, 16)).numpy()
                      for p in paths])
  head_probs = _head_of(config).probabilities(quantized.call(decoded).numpy())
  assert np.abs(_served_probabilities(config.outputs.saved_model_dir, paths)
                - head_probs).max() <= 1e-3
  report = json.loads(pathlib.Path(result.deployment_report).read_text())
  assert 'float_export_check' not in report['exports']
  # The TFLite export (converted from the SavedModel) computes them too.
  from retrain.features import tflite_runner
  runner = tflite_runner.TFLiteRunner(
      tflite_runner.open_interpreter(model_path=config.outputs.
                                     tflite_output_file), 8, (16, 16))
  served = next(o for o in runner.run(decoded) if o.ndim == 2)
  assert served.shape == head_probs.shape
  assert np.abs(served - head_probs).max() <= 1e-3


def _head_of(config):
  """The exported head, read from the SavedModel's variables."""
  import tensorflow as tf
  loaded = tf.saved_model.load(config.outputs.saved_model_dir)
  return Head(loaded.final_weights.numpy(), loaded.final_biases.numpy())


@pytest.mark.slow
def test_int8_graph_converts_to_an_int8_tflite_model(conv_module):
  from retrain.export import tflite_format
  from retrain.features import tflite_runner
  quantized = int8.load(conv_module)
  exported, _ = int8_graph.export_module(quantized, conv_module)
  rng = np.random.default_rng(0)
  head = Head(rng.normal(0, 3, (8, 3)).astype(np.float32),
              rng.normal(0, 1, 3).astype(np.float32))
  images = _images(16, count=8)

  def calibration():
    for i in range(len(images)):
      yield [images[i:i + 1]]
  model = tflite_format.tflite_model(exported, head, 'int8', calibration)
  runner = tflite_runner.TFLiteRunner(
      tflite_runner.open_interpreter(model_content=model), 8, (16, 16))
  served = next(o for o in runner.run(images) if o.ndim == 2)
  want = head.probabilities(quantized.call(images).numpy())
  assert served.shape == want.shape
  # Quantised again, so close rather than equal.
  assert np.abs(served - want).max() < 0.1
