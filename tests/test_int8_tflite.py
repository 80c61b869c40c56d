"""The int8 TFLite export of an int8 run: its int8 models as they are."""

import json
import pathlib

import numpy as np
import pytest

from retrain import pipeline
from retrain.export import int8_graph, tflite_format
from retrain.features import ensemble as ensemble_lib
from retrain.features import int8
from retrain.features import modules as features
from retrain.head import novelty
from retrain.head.model import Head
from tests.conftest import make_colour_dataset, shrunk_config
from tests.test_int8_export import export_conv_module

# Largest difference of a class probability from the head on the int8
# vectors: the features are the int8 interpreter's own (same model, same
# kernels); what is left is float rounding in the glue (resize, matmul).
TOLERANCE = 1e-4


def _signature_and_int8(model: bytes):
  """(the model's signatures, the dtypes of its convolutions' weights)."""
  import tensorflow as tf
  interpreter = tf.lite.Interpreter(model_content=model)
  details = {d['index']: d for d in interpreter.get_tensor_details()}
  weights = {details[op['inputs'][1]]['dtype'].__name__
             for op in interpreter._get_ops_details()  # noqa: SLF001 the op list
             if op['op_name'] in ('CONV_2D', 'DEPTHWISE_CONV_2D')}
  return interpreter.get_signature_list(), weights


def _run(model: bytes, images: np.ndarray) -> dict:
  import tensorflow as tf
  interpreter = tf.lite.Interpreter(model_content=model)
  runner = interpreter.get_signature_runner()
  return {k: np.concatenate([v]) for k, v in runner(images=images).items()}


def test_int8_tflite_of_an_int8_ensemble_holds_its_int8_models(tmp_path):
  big = features.load_module(export_conv_module(tmp_path / 'a', size=16))
  small = features.load_module(export_conv_module(tmp_path / 'b', size=12))
  module = ensemble_lib.load(f'{big.path},{small.path}')
  chosen = [int8.load(m) for m in module.members]
  exported, served = int8_graph.export_module(
      dataclasses_replace(module, chosen), module)
  assert served is None
  rng = np.random.default_rng(4)
  images = rng.random((12, 16, 16, 3)).astype(np.float32)
  # The vectors the run caches: each member's int8 interpreter on the
  # photos area-resized to its size.
  vectors = np.concatenate([
      chosen[0].call(images).numpy(),
      chosen[1].call(ensemble_lib.area_resize(images, (16, 16),
                                              (12, 12))).numpy()], axis=1)
  score = novelty.fit_on_split(vectors, np.arange(12) % 3, 3, 2, 0.9, 2, 0)
  head = Head(rng.normal(0, 3, (16, 3)).astype(np.float32),
              rng.normal(0, 1, 3).astype(np.float32), novelty=score)
  model = tflite_format.tflite_model(exported, head, 'int8')
  signatures, weights = _signature_and_int8(model)
  assert weights == {'int8'}
  float_model = tflite_format.tflite_model(exported, head, 'none')
  assert signatures == _signature_and_int8(float_model)[0]
  got = _run(model, images)
  want = head.probabilities(vectors)
  assert np.abs(got['output_0'] - want).max() <= TOLERANCE
  np.testing.assert_allclose(got['output_1'], score.scores(vectors),
                             rtol=1e-3, atol=1e-3)


def dataclasses_replace(module, members):
  import dataclasses
  return dataclasses.replace(module, members=tuple(members))


@pytest.mark.slow
def test_int8_run_writes_an_int8_tflite_of_its_int8_model(tmp_path):
  from tools import label_image
  module = export_conv_module(tmp_path / 'convs')
  images = make_colour_dataset(tmp_path / 'images', per_class=10)
  path = tmp_path / 'out' / 'm.tflite'
  config = shrunk_config(images, tmp_path / 'out', module,
                         bottleneck_precision='int8',
                         tflite_quantization='int8',
                         tflite_output_file=str(path))
  result = pipeline.run(config)
  assert result.bottleneck_precision == 'int8'
  meta = json.loads(pathlib.Path(f'{path}.metadata.json').read_text())
  assert meta['quantization'] == 'int8'
  assert meta['quantization_check']['count'] > 0
  assert 'novelty_left_out' not in meta
  model = path.read_bytes()
  assert _signature_and_int8(model)[1] == {'int8'}
  paths = sorted(str(p) for p in pathlib.Path(images).rglob('*.jpg'))[:8]
  from retrain import images as images_lib
  decoded = np.stack([images_lib.load_image(p, (16, 16)).numpy()
                      for p in paths])
  quantized = int8.load(features.load_module(module))
  import tensorflow as tf
  saved = tf.saved_model.load(config.outputs.saved_model_dir)
  head = Head(saved.final_weights.numpy(), saved.final_biases.numpy())
  want = head.probabilities(quantized.call(decoded).numpy())
  assert np.abs(_run(model, decoded)['output_0'] - want).max() <= TOLERANCE
  loaded = label_image.load_model(graph=str(path))
  records = label_image.classify_files(loaded, paths, min_confidence=0)
  assert [r.novelty is not None for r in records] == [True] * len(paths)
