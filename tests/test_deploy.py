"""Exports that real clients run: MediaPipe Tasks reads the TFLite file's
embedded metadata, ONNX Runtime runs the ONNX file, Keras 3 and tf-keras
load the SavedModel; calibration and the rejection threshold reach every
export and label_image; a lossy quantized model is refused."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from retrain import images, pipeline
from retrain.errors import OutputError, RetrainError
from retrain.export import formats as export_formats
from retrain.export import quantization_check, tflite_metadata
from retrain.predict import tflite
from tests.conftest import FAKE_SIZE, shrunk_config, write_image
from tools import label_image

SIZE = (FAKE_SIZE, FAKE_SIZE)
# Colours close enough, and jittered enough, that classes overlap: the
# head is sometimes wrong and not always sure, so calibration has work to
# do and probabilities are far from 0 and 1, where disagreement shows.
BASES = {'blue': (90, 90, 160), 'green': (90, 160, 90), 'red': (160, 90, 90)}


def make_overlapping_dataset(root, per_class=45, jitter=45.0):
  """root/<colour>/img_<k>.png, PNG at the module's input size.

  PNG and no resizing: MediaPipe decodes and resizes with its own code,
  so images that need neither make the comparison one of the models.
  """
  rng = np.random.default_rng(5)
  for name, base in sorted(BASES.items()):
    for k in range(per_class):
      rgb = np.clip(np.array(base) + rng.normal(0, jitter, 3), 0, 255)
      write_image(pathlib.Path(root) / name / f'img_{k}.png',
                  tuple(int(v) for v in rgb), size=SIZE, seed=k, fmt='PNG')
  return pathlib.Path(root)


def _writer_or_skip():
  ok, reason = tflite_metadata.writer_available()
  if not ok:
    pytest.skip(f'TFLite metadata cannot be written: {reason} (pip install '
                '"retrain[mediapipe]")')


def _mediapipe_classifier(model_file, **options):
  """(MediaPipe ImageClassifier for model_file, mediapipe), or skip."""
  pytest.importorskip('mediapipe', reason='the [mediapipe] extra is not '
                      'installed')
  _writer_or_skip()
  import mediapipe as mp
  from mediapipe.tasks.python import vision
  from mediapipe.tasks.python.core.base_options import BaseOptions
  return vision.ImageClassifier.create_from_options(
      vision.ImageClassifierOptions(
          base_options=BaseOptions(model_asset_path=model_file),
          **options)), mp


def _onnx_or_skip():
  pytest.importorskip('tf2onnx', reason='the [onnx] extra is not installed')
  pytest.importorskip('onnxruntime', reason='the [onnx] extra is not '
                      'installed')


def _deploy_config(root, module, **overrides):
  out = pathlib.Path(root) / 'out'
  fields = dict(validation_percentage=30, testing_percentage=20,
                projector_max_images=0, output_graph='',
                tflite_output_file=str(out / 'model.tflite'))
  fields.update(overrides)
  return shrunk_config(pathlib.Path(root) / 'images', out, module, **fields)


@pytest.fixture(scope='module')
def deployed(tmp_path_factory, fake_module):
  """A run exporting SavedModel, float TFLite and (if possible) ONNX."""
  root = tmp_path_factory.mktemp('deploy')
  make_overlapping_dataset(root / 'images')
  try:
    import tf2onnx  # noqa: F401
    onnx_file = str(root / 'out' / 'model.onnx')
  except ImportError:
    onnx_file = ''
  config = _deploy_config(root, fake_module, onnx_output_file=onnx_file)
  result = pipeline.run(config)
  paths = sorted(str(p) for p in pathlib.Path(config.data.image_dir).rglob('*.png'))
  batch = np.stack([images.load_image(p, SIZE).numpy() for p in paths])
  reference = label_image.load_model(
      saved_model_dir=config.outputs.saved_model_dir).predict(batch)
  return config, result, paths, batch, reference


@pytest.mark.slow
def test_calibration_is_reported_and_stored_in_every_export(deployed):
  config, result, _, _, reference = deployed
  # Overlapping classes: not every probability is saturated.
  assert np.median(reference.max(1)) < 0.99
  report = json.loads(pathlib.Path(result.deployment_report).read_text())
  cal = report['calibration']
  assert cal['skipped_reason'] is None
  assert cal['validation_count'] == result.counts['validation'] >= 30
  assert cal['temperature'] != 1.0 and 0 < cal['threshold'] < 1
  assert 0 <= cal['ece_after'] <= 1 and 0 <= cal['ece_before'] <= 1
  # What temperature scaling minimises (the ECE usually follows).
  assert cal['cross_entropy_after'] <= cal['cross_entropy_before'] + 1e-9
  assert cal['precision'] >= 0.95 or not cal['target_met']

  saved = json.loads((pathlib.Path(config.outputs.saved_model_dir) /
                      'retrain_metadata.json').read_text())
  side = json.loads(pathlib.Path(export_formats.sidecar_paths(
      config.outputs.tflite_output_file)['metadata']).read_text())
  for meta in (saved, side):
    assert meta['confidence']['threshold'] == cal['threshold']
    assert meta['confidence']['temperature'] == cal['temperature']
  assert label_image.load_model(
      saved_model_dir=config.outputs.saved_model_dir).threshold == cal['threshold']

  # TensorBoard: the calibration scalars in the validation run.
  import tensorflow as tf
  tags = set()
  for events in (pathlib.Path(config.outputs.summaries_dir) / 'validation').glob(
      'events.*'):
    for event in tf.compat.v1.train.summary_iterator(str(events)):
      tags.update(v.tag for v in event.summary.value)
  assert {'calibration/ece_before', 'calibration/ece_after',
          'calibration/temperature'} <= tags


@pytest.mark.slow
def test_mediapipe_image_classifier_agrees_with_the_saved_model(deployed):
  config, result, paths, _, reference = deployed
  classifier, mp = _mediapipe_classifier(
      config.outputs.tflite_output_file,
      # Every class, whatever the stored threshold.
      max_results=len(result.labels), score_threshold=1e-12)
  with classifier:
    for path, expected in zip(paths, reference, strict=True):
      categories = classifier.classify(
          mp.Image.create_from_file(path)).classifications[0].categories
      got = np.zeros(len(result.labels))
      for c in categories:
        assert c.category_name == result.labels[c.index]
        got[c.index] = c.score
      assert categories[0].category_name == result.labels[expected.argmax()]
      np.testing.assert_allclose(got, expected, atol=1e-3, err_msg=path)


@pytest.mark.slow
def test_mediapipe_reports_nothing_below_the_stored_threshold(deployed):
  config, _, paths, _, reference = deployed
  classifier, mp = _mediapipe_classifier(config.outputs.tflite_output_file)
  threshold = label_image.load_model(graph=config.outputs.tflite_output_file).threshold
  low = [p for p, r in zip(paths, reference, strict=True)
         if r.max() < threshold - 1e-3]
  high = [p for p, r in zip(paths, reference, strict=True)
          if r.max() > threshold + 1e-3]
  assert low and high, 'the fixture should have images on both sides'
  with classifier:
    def top(path):
      return classifier.classify(mp.Image.create_from_file(path)
                                 ).classifications[0].categories
    assert all(not top(p) for p in low[:5])
    assert all(top(p) for p in high[:5])


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime_like_the_saved_model(deployed):
  _onnx_or_skip()
  import onnxruntime
  config, result, _, batch, reference = deployed
  session = onnxruntime.InferenceSession(config.outputs.onnx_output_file,
                                         providers=['CPUExecutionProvider'])
  assert [i.name for i in session.get_inputs()] == ['images']
  probs = session.run(['probabilities'], {'images': batch})[0]
  np.testing.assert_array_equal(probs.argmax(1), reference.argmax(1))
  np.testing.assert_allclose(probs, reference, atol=1e-3)
  props = session.get_modelmeta().custom_metadata_map
  assert json.loads(props['labels']) == result.labels
  assert json.loads(props['input_value_range']) == [0.0, 1.0]
  assert (props['input_height'], props['input_width']) == ('32', '32')
  assert 'resize' in props['preprocessing']
  meta = json.loads(props['retrain_metadata'])
  assert meta['confidence']['threshold'] > 0
  # label_image runs it too, with labels and threshold from the file.
  model = label_image.load_model(graph=config.outputs.onnx_output_file)
  assert model.kind == 'onnx' and model.labels == result.labels
  assert model.threshold == meta['confidence']['threshold']
  np.testing.assert_allclose(model.predict(batch), reference, atol=1e-3)


@pytest.mark.slow
def test_label_image_reads_embedded_metadata_and_says_unknown(deployed,
                                                              tmp_path):
  _writer_or_skip()
  config, result, paths, _, reference = deployed
  alone = tmp_path / 'alone.tflite'  # No side files beside it.
  shutil.copy(config.outputs.tflite_output_file, alone)
  model = label_image.load_model(graph=str(alone))
  assert model.labels == result.labels
  stored = json.loads(pathlib.Path(result.deployment_report).read_text())[
      'calibration']['threshold']
  assert model.threshold == pytest.approx(stored) and stored > 0

  records = label_image.classify_files(model, paths, top_k=2)
  below = reference.max(1) < stored
  assert [r.unknown for r in records] == below.tolist()
  assert 0 < below.sum() < len(paths)
  unknown = next(r for r in records if r.unknown)
  assert len(unknown.top) == 2  # Its top classes are still listed.
  table = label_image.format_records([unknown], 'table')
  assert 'unknown (top probability' in table
  assert unknown.top[0][0] in table
  as_json = json.loads(label_image.format_records([unknown], 'json'))
  assert as_json[0]['prediction'] == 'unknown'
  assert as_json[0]['predictions'][0]['label'] == unknown.top[0][0]
  csv_rows = label_image.format_records(records[:1], 'csv').splitlines()
  assert csv_rows[0].endswith(',prediction')
  # --min_confidence 0 disables; a higher one rejects more.
  assert not any(r.unknown for r in label_image.classify_files(
      model, paths, min_confidence=0))
  assert all(r.unknown for r in label_image.classify_files(
      model, paths, min_confidence=1.0))


def _quantized_variant(config, folder, quantization):
  """`config` writing a quantized TFLite model and no ONNX under `folder`
  (the bottleneck cache is shared)."""
  return config.replace(tflite_output_file=str(folder / f'{quantization}.tflite'),
      tflite_quantization=quantization, onnx_output_file='',
      saved_model_dir=str(folder / 'saved_model'),
      report_dir=str(folder / 'report'), summaries_dir=str(folder / 'logs'))


@pytest.mark.slow
def test_int8_export_is_checked_and_named_by_mediapipe(deployed, tmp_path):
  config, result, paths, _, reference = deployed
  int8 = _quantized_variant(config, tmp_path, 'int8')
  run = pipeline.run(int8)
  checks = json.loads(pathlib.Path(run.deployment_report).read_text())[
      'quantization_checks']
  assert len(checks) == 1 and checks[0]['quantization'] == 'int8'
  assert checks[0]['subset'] == 'test'
  assert checks[0]['count'] == run.test_count
  assert checks[0]['loss_points'] <= 1.0 and checks[0]['agreement'] >= 0.9
  side = json.loads(pathlib.Path(export_formats.sidecar_paths(
      int8.outputs.tflite_output_file)['metadata']).read_text())
  assert side['quantization_check'] == checks[0]

  classifier, mp = _mediapipe_classifier(int8.outputs.tflite_output_file,
                                         max_results=1, score_threshold=1e-12)
  _, embedded = tflite.read_embedded(int8.outputs.tflite_output_file)
  assert embedded['quantization_check'] == checks[0]
  with classifier:
    names = [classifier.classify(mp.Image.create_from_file(p))
             .classifications[0].categories[0].category_name for p in paths]
  expected = [result.labels[i] for i in reference.argmax(1)]
  assert np.mean(np.array(names) == np.array(expected)) >= 0.9


@pytest.mark.slow
def test_lossy_quantization_is_refused_before_it_is_written(
    deployed, tmp_path, monkeypatch):
  config, _, _, _, _ = deployed

  def always_first_class(content):
    del content
    return lambda batch: np.tile(np.float32([1, 0, 0]), (len(batch), 1))

  # A stand-in for a quantization that broke the model.
  monkeypatch.setattr(quantization_check, 'tflite_predictor',
                      always_first_class)
  lossy = _quantized_variant(config, tmp_path, 'dynamic')
  with pytest.raises(OutputError, match=r'dynamic TFLite on \d+ test images.*'
                     r'points lost.*max_quantization_loss=1.*'
                     "tflite_quantization='float16'"):
    pipeline.run(lossy)
  assert not os.path.exists(lossy.outputs.tflite_output_file)
  assert not os.path.exists(export_formats.sidecar_paths(
      lossy.outputs.tflite_output_file)['metadata'])

  kept = pipeline.run(lossy.replace(
                                          keep_lossy_quantization=True))
  check = json.loads(pathlib.Path(kept.deployment_report).read_text())[
      'quantization_checks'][0]
  assert check['kept_despite_loss'] and check['loss_points'] > 1
  assert os.path.exists(lossy.outputs.tflite_output_file)


@pytest.mark.slow
def test_keras_3_and_tf_keras_load_the_saved_model(deployed):
  config, _, _, batch, reference = deployed
  import keras
  layer = keras.layers.TFSMLayer(config.outputs.saved_model_dir,
                                 call_endpoint='serving_default')
  out = layer(batch)
  np.testing.assert_allclose(np.asarray(out['probabilities']), reference,
                             atol=1e-5)
  inputs = keras.Input((FAKE_SIZE, FAKE_SIZE, 3))
  model = keras.Model(inputs, layer(inputs)['probabilities'])
  np.testing.assert_allclose(model.predict(batch, verbose=0), reference,
                             atol=1e-5)

  import tensorflow_hub as hub
  import tf_keras
  legacy = tf_keras.Sequential([
      tf_keras.Input((FAKE_SIZE, FAKE_SIZE, 3)),
      hub.KerasLayer(config.outputs.saved_model_dir, signature='serving_default',
                     output_key='probabilities')])
  np.testing.assert_allclose(legacy.predict(batch, verbose=0), reference,
                             atol=1e-5)


@pytest.mark.parametrize('change, message', [
    (dict(onnx_output_file='model.bin'), 'should end in .onnx'),
    (dict(max_quantization_loss=-1.0), 'must be 0 or more'),
    (dict(target_precision=1.5), r'must be in \(0, 1\]'),
])
def test_bad_deploy_options_are_refused_before_work(small_config, change,
                                                    message):
  with pytest.raises(RetrainError, match=message):
    pipeline.run(small_config.replace(**change))
  assert not os.path.exists(small_config.cache.bottleneck_dir)


def test_without_mediapipe_the_side_files_remain_and_the_log_says_why(
    tmp_path, fake_module, monkeypatch):
  from absl import logging as absl_logging

  from retrain.features import modules as features
  from retrain.head.model import Head

  def unavailable():
    raise tflite_metadata.MetadataWriterUnavailable(
        'the mediapipe package is not installed')

  monkeypatch.setattr(tflite_metadata, '_import_metadata_modules',
                      unavailable)
  said = []
  monkeypatch.setattr(absl_logging, 'info',
                      lambda text, *args: said.append(text % args))
  module = features.load_module(fake_module)
  head = Head(np.eye(6, 3, dtype=np.float32), np.zeros(3, np.float32))
  path = tmp_path / 'plain.tflite'
  export_formats.write_tflite(str(path), module, head, ['a', 'b', 'c'],
                              extra_metadata={'confidence': {'threshold':
                                                             0.7}})
  assert tflite.read_embedded(str(path)) == (None, None)
  assert any('not embedded' in s and 'retrain[mediapipe]' in s for s in said)
  model = label_image.load_model(graph=str(path))  # From the side files.
  assert model.labels == ['a', 'b', 'c'] and model.threshold == 0.7
