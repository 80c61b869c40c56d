"""Export formats: the bytes signature, frozen graph, TFLite, checkpoint and
intermediate graphs agree with the SavedModel's float signature."""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from retrain import images, pipeline
from retrain.errors import OutputError, SettingError
from retrain.export import formats as export_formats
from retrain.features import modules as features
from retrain.head import model, train
from tests.conftest import (
  FAKE_SIZE,
  exporting_config,
  make_colour_dataset,
  write_image,
)
from tools import label_image

SIZE = (FAKE_SIZE, FAKE_SIZE)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, fake_module):
  """One pipeline run writing every format, and extra probe images."""
  root = tmp_path_factory.mktemp('formats')
  out = root / 'out'
  config = exporting_config(
      root, 'images', fake_module,
      checkpoint_path=str(out / 'ckpt' / 'head'),
      intermediate_store_frequency=100,
      intermediate_output_graphs_dir=str(out / 'intermediate'))
  result = pipeline.run(config)
  # Random colours in every format the bytes signature accepts: they give
  # probabilities far from 0 and 1, where disagreements would show.
  rng = np.random.default_rng(7)
  probes = [write_image(root / 'probe' / f'p{k}.{ext}',
                        tuple(int(v) for v in rng.integers(0, 255, 3)),
                        size=(50 + 7 * k, 41), noise=40, seed=k, fmt=fmt)
            for k, (ext, fmt) in enumerate([('jpg', 'JPEG'), ('png', 'PNG'),
                                            ('gif', 'GIF'), ('bmp', 'BMP')] *
                                           2)]
  paths = sorted(str(p) for p in pathlib.Path(config.data.image_dir).rglob('*.jpg'))
  return config, result, paths + [str(p) for p in probes]


def _float_signature(config, paths):
  model = tf.saved_model.load(config.outputs.saved_model_dir)
  batch = tf.stack([images.load_image(p, SIZE) for p in paths])
  return model.signatures['serving_default'](images=batch)[
      'probabilities'].numpy()


@pytest.mark.slow
def test_all_formats_agree_with_the_float_signature(trained):
  config, result, paths = trained
  assert result.test_accuracy == 1.0
  expected = _float_signature(config, paths)
  assert expected.shape == (len(paths), 3)
  # The probes are not all saturated, so agreement is a real check.
  assert expected.max(axis=1).min() < 0.9

  model = tf.saved_model.load(config.outputs.saved_model_dir)
  contents = tf.constant([pathlib.Path(p).read_bytes() for p in paths])
  by_bytes = model.signatures['serving_bytes'](image_bytes=contents)[
      'probabilities'].numpy()
  batch = np.stack([images.load_image(p, SIZE).numpy() for p in paths])
  frozen = label_image.load_model(graph=config.outputs.output_graph).predict(batch)
  lite = label_image.load_model(graph=config.outputs.tflite_output_file).predict(batch)

  for name, probs, tol in [('bytes', by_bytes, 1e-4), ('frozen', frozen, 1e-4),
                           ('tflite', lite, 1e-3)]:
    np.testing.assert_array_equal(probs.argmax(1), expected.argmax(1),
                                  err_msg=name)
    np.testing.assert_allclose(probs, expected, atol=tol, err_msg=name)


@pytest.mark.slow
def test_metadata_and_sidecars_describe_every_file(trained):
  config, _, _ = trained
  meta = json.loads((pathlib.Path(config.outputs.saved_model_dir) /
                     'retrain_metadata.json').read_text())
  assert set(meta['signatures']) == {'serving_default', 'serving_bytes'}
  assert 'image_bytes' in meta['signatures']['serving_bytes']['inputs']
  others = meta['other_exports']
  assert others['output_graph'] == os.path.abspath(config.outputs.output_graph)
  assert others['tflite'] == os.path.abspath(config.outputs.tflite_output_file)
  assert len(others['intermediate_graphs']) == 3
  for model_file in (config.outputs.output_graph, config.outputs.tflite_output_file):
    side = export_formats.sidecar_paths(model_file)
    assert pathlib.Path(side['labels']).read_text() == 'blue\ngreen\nred\n'
    side_meta = json.loads(pathlib.Path(side['metadata']).read_text())
    assert side_meta['labels'] == ['blue', 'green', 'red']
    assert (side_meta['input_height'], side_meta['input_width']) == SIZE
  graph_meta = json.loads(pathlib.Path(export_formats.sidecar_paths(
      config.outputs.output_graph)['metadata']).read_text())
  assert graph_meta['input_tensor'] == 'Placeholder:0'
  assert graph_meta['output_tensor'] == 'final_result:0'


@pytest.mark.slow
def test_frozen_graph_has_retrain_py_tensor_names(trained):
  config, _, _ = trained
  graph_def = tf.compat.v1.GraphDef()
  graph_def.ParseFromString(pathlib.Path(config.outputs.output_graph).read_bytes())
  nodes = {n.name: n for n in graph_def.node}
  assert nodes['Placeholder'].op == 'Placeholder'
  dims = [d.size for d in nodes['Placeholder'].attr['shape'].shape.dim]
  assert dims == [-1, FAKE_SIZE, FAKE_SIZE, 3]
  assert nodes['final_result'].op == 'Softmax'
  assert not [n for n in graph_def.node if n.op in ('VarHandleOp',
                                                    'VariableV2')]
  # Only what computes the outputs: every node feeds final_result or the
  # novelty score (op `novelty`, beside it).
  assert nodes['novelty'].op == 'Identity'
  feeds, todo = set(), ['final_result', 'novelty']
  while todo:
    name = todo.pop()
    if name not in feeds:
      feeds.add(name)
      todo.extend(i.lstrip('^').split(':')[0] for i in nodes[name].input)
  assert feeds == set(nodes)


@pytest.mark.slow
def test_intermediate_graphs_and_checkpoint(trained):
  config, _, paths = trained
  folder = pathlib.Path(config.outputs.intermediate_output_graphs_dir)
  assert sorted(p.name for p in folder.glob('*.pb')) == [
      'intermediate_100.pb', 'intermediate_200.pb', 'intermediate_300.pb']
  batch = np.stack([images.load_image(p, SIZE).numpy() for p in paths])
  final = label_image.load_model(graph=config.outputs.output_graph).predict(batch)
  last = label_image.load_model(
      graph=str(folder / 'intermediate_300.pb')).predict(batch)
  first = label_image.load_model(
      graph=str(folder / 'intermediate_100.pb')).predict(batch)
  # After all 300 steps the intermediate graph is the final one; at 100
  # steps training had further to go.
  np.testing.assert_allclose(last, final, atol=1e-6)
  assert np.abs(first - final).max() > 1e-3

  head = export_formats.read_checkpoint(config.outputs.checkpoint_path)
  assert head.weights.shape == (6, 3) and head.biases.shape == (3,)
  module = features.load_module(config.module.tfhub_module)
  vectors = module.call(tf.constant(batch)).numpy()
  np.testing.assert_allclose(head.probabilities(vectors), final, atol=1e-5)


def test_train_head_calls_on_head_every_n_steps():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int64)
  seen = []
  result = train.train_head(
      x, y, 2, x[:0], y[:0],
      train.Settings(steps=250, learning_rate=0.1, batch_size=8,
                     eval_step_interval=30, validation_batch_size=-1, seed=0),
      train.Hooks(head_every=100,
                  on_head=lambda step, head: seen.append((step, head))))
  assert [s for s, _ in seen] == [100, 200]
  assert all(h.weights.shape == (4, 2) for _, h in seen)
  assert not np.allclose(seen[0][1].weights, result.head.weights)
  assert [p.step for p in result.history] == list(range(0, 250, 30)) + [249]


def _random_head(dim=6, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  return model.Head(rng.normal(0, 3, (dim, classes)).astype(np.float32),
                    rng.normal(0, 1, classes).astype(np.float32))


@pytest.mark.parametrize('quantization', ['dynamic', 'float16', 'int8'])
def test_quantized_tflite_agrees_on_top1(tmp_path, fake_module, quantization):
  module = features.load_module(fake_module)
  head = _random_head()
  rng = np.random.default_rng(1)
  paths = [str(write_image(tmp_path / f'{k}.png',
                           tuple(int(v) for v in rng.integers(0, 255, 3)),
                           fmt='PNG', seed=k)) for k in range(24)]
  path = str(tmp_path / f'{quantization}.tflite')
  export_formats.write_tflite(path, module, head, ['a', 'b', 'c'],
                              quantization, calibration_paths=paths)
  batch = np.stack([images.load_image(p, SIZE).numpy() for p in paths])
  expected = head.probabilities(module.call(tf.constant(batch)).numpy())
  probs = label_image.load_model(graph=path).predict(batch)
  assert probs.dtype == np.float32 and probs.shape == (24, 3)
  agree = np.mean(probs.argmax(1) == expected.argmax(1))
  assert agree >= 0.9, agree
  np.testing.assert_allclose(probs, expected, atol=0.05)
  meta = json.loads(pathlib.Path(
      export_formats.sidecar_paths(path)['metadata']).read_text())
  assert meta['quantization'] == quantization


def test_earlier_files_are_moved_aside_not_overwritten(tmp_path, fake_module):
  module = features.load_module(fake_module)
  graph = tmp_path / 'output_graph.pb'
  graph.write_bytes(b'precious')
  export_formats.write_frozen_graph(str(graph), module, _random_head(),
                                    ['a', 'b', 'c'], 'final_result')
  kept = list(tmp_path.glob('output_graph.pb.previous-*'))
  assert len(kept) == 1 and kept[0].read_bytes() == b'precious'
  assert graph.read_bytes() != b'precious'

  prefix = str(tmp_path / 'ckpt' / 'head')
  export_formats.write_checkpoint(prefix, _random_head(seed=1))
  export_formats.write_checkpoint(prefix, _random_head(seed=2))
  np.testing.assert_array_equal(export_formats.read_checkpoint(prefix).weights,
                                _random_head(seed=2).weights)
  assert list((tmp_path / 'ckpt').glob('head.index.previous-*'))


@pytest.mark.parametrize('change, message, error', [
    (dict(output_graph='DIR'), 'is a folder', OutputError),
    (dict(output_graph='graph.txt'), 'should end in .pb', OutputError),
    (dict(tflite_output_file='model.bin'), 'should end in .tflite',
     OutputError),
    # A declared choice: Config.check refuses it, as every setting's.
    (dict(tflite_quantization='int4'), 'is not one of none, dynamic',
     SettingError),
    (dict(intermediate_store_frequency=-1), 'must be 0', OutputError),
    (dict(intermediate_store_frequency=5, intermediate_output_graphs_dir=''),
     'needs intermediate_output_graphs_dir', OutputError),
])
def test_bad_export_options_are_refused_before_work(small_config, tmp_path,
                                                    change, message, error):
  make_colour_dataset(small_config.data.image_dir, per_class=3)
  change = {k: (str(tmp_path) if v == 'DIR' else v) for k, v in change.items()}
  with pytest.raises(error, match=message):
    pipeline.run(small_config.replace(**change))
  assert not os.path.exists(small_config.cache.bottleneck_dir)


def test_the_saved_model_is_traced_without_autograph(fake_module, tmp_path,
                                                     monkeypatch):
  """The export's functions branch on Python values only, so AutoGraph
  (which parses and rewrites every function a trace calls, most of a
  warm run's export time) runs on none of retrain's (only on TensorFlow's
  own signature wrappers); both signatures still serve."""
  from tensorflow.python.autograph.impl import api as autograph_api

  from retrain.export import saved_model
  converted = []
  real = autograph_api.converted_call

  def spy(f, *args, **kwargs):
    name = f'{getattr(f, "__module__", "")}.{getattr(f, "__name__", "")}'
    if name.startswith(('retrain.', 'tests.')):
      converted.append(name)
    return real(f, *args, **kwargs)

  monkeypatch.setattr(autograph_api, 'converted_call', spy)
  module = features.load_module(fake_module)
  head = model.Head(np.eye(6, 2, dtype=np.float32), np.zeros(2, np.float32))
  path = saved_model.export_saved_model(str(tmp_path / 'sm'), module, head,
                                        ['a', 'b'], 'final_result')
  assert converted == []
  loaded = tf.saved_model.load(path)
  image = np.full((1, *SIZE, 3), 0.25, np.float32)
  served = loaded.signatures['serving_default'](images=image)['probabilities']
  write_image(tmp_path / 'grey.png', (64, 64, 64), size=SIZE, noise=0)
  from_bytes = loaded.signatures['serving_bytes'](image_bytes=tf.constant(
      [(tmp_path / 'grey.png').read_bytes()]))['probabilities']
  np.testing.assert_allclose(served.numpy(), from_bytes.numpy(), atol=1e-5)
