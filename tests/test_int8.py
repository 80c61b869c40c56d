"""Integer bottlenecks: the int8 copy, its cache namespace, the guard."""

import json
import logging
import os
import pathlib

import numpy as np
import pytest

import bottleneck_cache
from retrain import pipeline
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import precision as precision_lib
from retrain.errors import ModuleError
from retrain.features import int8, tflite_runtime
from retrain.features import modules as features
from tests.conftest import (
  FAKE_SIZE,
  export_fake_module,
  make_colour_dataset,
  shrunk_config,
)


@pytest.fixture
def own_module(tmp_path):
  """A fake module of this test's own (its int8 files are this test's)."""
  return features.load_module(str(export_fake_module(tmp_path / 'pool')))


def _probe(tmp_path, per_class=6):
  images = make_colour_dataset(tmp_path / 'images', per_class=per_class)
  paths = sorted(str(p) for p in images.rglob('*.jpg'))
  cache = str(tmp_path / 'bn')
  keyed = bottlenecks_lib.content_keys(paths, cache, None)
  return precision_lib.Probe(paths=paths, keyed=keyed, bottleneck_dir=cache,
                             batch_size=4, max_pixels=10 ** 8)


def test_calibration_images_are_a_fixed_function_of_the_seed():
  a = int8.calibration_images((24, 32), count=5)
  b = int8.calibration_images((24, 32), count=5)
  assert a.shape == (5, 24, 32, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
  assert not np.array_equal(a, int8.calibration_images((24, 32), 5, seed=1))


def test_int8_copy_is_converted_once_verified_and_cached_apart(own_module):
  quantized = int8.load(own_module)
  assert quantized is not None and quantized.quantization == int8.QUANTIZATION
  path = int8.int8_file(own_module)
  assert os.path.exists(path) and not os.path.exists(path + '.failed')
  assert not [f for f in os.listdir(os.path.dirname(path))
              if 'unverified' in f]
  images = np.random.default_rng(3).random(
      (5, FAKE_SIZE, FAKE_SIZE, 3)).astype(np.float32)
  got = quantized.call(images).numpy()
  want = own_module.call(images).numpy()
  assert got.shape == want.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=0.1)
  # Its own namespace: the float one plus the quantisation's name.
  float_ns = bottlenecks_lib.cache_namespace(own_module)
  int8_ns = bottlenecks_lib.cache_namespace(quantized)
  assert 'quantization' not in float_ns
  assert int8_ns == dict(float_ns, quantization=int8.QUANTIZATION)
  assert (bottleneck_cache.namespace_id(int8_ns) !=
          bottleneck_cache.namespace_id(float_ns))
  # A second load reads the file; the interpreter opens at the first call.
  mtime = os.path.getmtime(path)
  again = int8.load(own_module)
  assert os.path.getmtime(path) == mtime
  assert isinstance(again.call, int8.LazyCall) and again.call._call is None
  assert isinstance(quantized.call, int8.LazyCall)
  quantized.call.close()
  assert quantized.call._call is None
  np.testing.assert_array_equal(again.call(images).numpy(), got)
  # The runtime leaves a quantised module as it is.
  assert tflite_runtime.with_runtime(again, 'tflite') is again


def test_a_copy_that_fails_verification_is_never_used(own_module, monkeypatch,
                                                      caplog):
  monkeypatch.setattr(int8, 'MIN_SYNTHETIC_COSINE', 1.01)
  assert int8.load(own_module) is None
  path = int8.int8_file(own_module)
  assert not os.path.exists(path) and os.path.exists(path + '.failed')
  assert os.listdir(os.path.dirname(path)) == [os.path.basename(path) +
                                               '.failed']
  assert 'its int8 copy cannot be used' in caplog.text
  assert 'median cosine' in caplog.text
  # Remembered: later runs do not convert again.
  monkeypatch.setattr(int8, 'convert', None)
  assert int8.load(own_module) is None


def test_float32_reproduces_the_current_vectors_bit_for_bit(own_module,
                                                            tmp_path):
  probe = _probe(tmp_path)
  chosen = precision_lib.choose(own_module, 'float32', 'auto', None, probe)
  assert chosen is own_module
  runner = tflite_runtime.deferred(chosen, 'auto')
  store = bottleneck_cache.BottleneckStore(
      str(tmp_path / 'new'), bottlenecks_lib.cache_namespace(chosen))
  new = bottlenecks_lib.compute_bottlenecks(probe.paths, runner, store, 4)
  # The code path before precisions existed: the module on its runtime.
  old_store = bottleneck_cache.BottleneckStore(
      str(tmp_path / 'old'), bottlenecks_lib.cache_namespace(own_module))
  old = bottlenecks_lib.compute_bottlenecks(
      probe.paths, tflite_runtime.deferred(own_module, 'auto'), old_store, 4)
  assert old.vectors.shape == (len(probe.paths), 6)
  np.testing.assert_array_equal(new.vectors, old.vectors)
  assert os.path.basename(store.directory) == os.path.basename(
      old_store.directory)


def test_int8_vectors_go_to_their_own_namespace(own_module, tmp_path):
  probe = _probe(tmp_path)
  chosen = precision_lib.choose(own_module, 'int8', 'auto', None, probe)
  assert chosen.quantization == int8.QUANTIZATION
  assert precision_lib.describe(chosen) == 'int8'
  # The guard's probe vectors sit in both namespaces, each its own.
  stores = {name: bottleneck_cache.BottleneckStore(
      probe.bottleneck_dir, bottlenecks_lib.cache_namespace(m))
            for name, m in (('float', own_module), ('int8', chosen))}
  assert stores['float'].directory != stores['int8'].directory
  keys = [probe.keyed[0][i] for i in int8.probe_rows(probe.keyed[0])]
  assert all(k in stores['int8'] and k in stores['float'] for k in keys)
  a, b = stores['int8'].get(keys), stores['float'].get(keys)
  assert not np.array_equal(a, b)
  assert np.median(int8.cosines(a, b)) >= int8.MIN_MEDIAN_COSINE


def test_guard_reads_each_probe_photo_once_for_both_precisions(
    own_module, tmp_path, monkeypatch):
  probe = _probe(tmp_path)
  reads = []
  real_read = bottlenecks_lib.read_checked

  def read(path, *args):
    reads.append(path)
    return real_read(path, *args)
  monkeypatch.setattr(bottlenecks_lib, 'read_checked', read)
  chosen = precision_lib.choose(own_module, 'int8', 'auto', None, probe)
  assert chosen.quantization == int8.QUANTIZATION
  rows = int8.probe_rows(probe.keyed[0])
  assert sorted(reads) == sorted(probe.paths[i] for i in rows)
  # The same vectors as each precision's own pass into an empty cache.
  keys = [probe.keyed[0][i] for i in rows]
  for module, runner in ((own_module, tflite_runtime.deferred(
      own_module, 'auto')), (chosen, chosen)):
    namespace = bottlenecks_lib.cache_namespace(module)
    alone = bottlenecks_lib.compute_bottlenecks(
        [probe.paths[i] for i in rows], runner,
        bottleneck_cache.BottleneckStore(str(tmp_path / 'alone'), namespace),
        probe.batch_size)
    assert alone.vectors.tobytes() == bottleneck_cache.BottleneckStore(
        probe.bottleneck_dir, namespace).get(keys).tobytes()


def test_guard_falls_back_to_float_with_one_line(own_module, tmp_path,
                                                 monkeypatch, caplog):
  monkeypatch.setattr(int8, 'MIN_MEDIAN_COSINE', 1.01)
  probe = _probe(tmp_path)
  with caplog.at_level(logging.WARNING):
    chosen = precision_lib.choose(own_module, 'int8', 'auto', None, probe)
  assert chosen is own_module
  lines = [r.getMessage() for r in caplog.records
           if 'Using float bottlenecks' in r.getMessage()]
  assert len(lines) == 1 and 'median cosine' in lines[0]
  assert 'pool' in lines[0]


def test_auto_keeps_float_where_int8_is_not_faster(own_module, tmp_path):
  probe = _probe(tmp_path)
  quantized = int8.load(own_module)
  int8_file = quantized.call.path
  record = int8_file + '.speed.json'
  with open(record, 'w', encoding='utf-8') as f:
    f.write('{"cpu": "%s", "int8_seconds": 2.0, "float_seconds": 1.0}'
            % int8._cpu_kind())
  chosen = precision_lib.choose(own_module, 'auto', 'auto', None, probe)
  assert chosen is own_module
  with open(record, 'w', encoding='utf-8') as f:
    f.write('{"cpu": "%s", "int8_seconds": 0.1, "float_seconds": 1.0}'
            % int8._cpu_kind())
  chosen = precision_lib.choose(own_module, 'auto', 'auto', None, probe)
  assert chosen.quantization == int8.QUANTIZATION
  # Fine-tuning trains the float network: auto keeps float.
  assert precision_lib.choose(own_module, 'auto', 'auto', None, probe,
                              fine_tune=True) is own_module


def test_unknown_precision_is_refused(own_module, tmp_path):
  with pytest.raises(ModuleError, match="bottleneck_precision='int4'"):
    precision_lib.choose(own_module, 'int4', 'auto', None, _probe(tmp_path))


@pytest.mark.slow
def test_int8_run_end_to_end(tmp_path):
  module = export_fake_module(tmp_path / 'pool')
  images = make_colour_dataset(tmp_path / 'images', per_class=10)
  config = shrunk_config(images, tmp_path / 'out', str(module),
                         bottleneck_precision='int8')
  result = pipeline.run(config)
  assert result.test_accuracy > 0.9
  assert result.bottleneck_precision == 'int8'
  summary = json.loads((pathlib.Path(config.outputs.report_dir) /
                        pipeline.RUN_SUMMARY_FILE).read_text())
  assert summary['bottleneck_precision'] == 'int8'
  float_ns = bottlenecks_lib.cache_namespace(features.load_module(str(module)))
  names = set(os.listdir(config.cache.bottleneck_dir))
  int8_dir = bottleneck_cache.namespace_id(
      dict(float_ns, quantization=int8.QUANTIZATION))
  assert int8_dir in names
  assert len(bottleneck_cache.BottleneckStore(
      config.cache.bottleneck_dir, dict(float_ns,
                                  quantization=int8.QUANTIZATION))) == 30
  # The exports compute the int8 features (the translated graph, checked
  # against the int8 model once) and hold the trained head.
  check = summary['export_check']
  assert check['head_in_saved_model'] and check['max_head_difference'] == 0
  [member] = check['members']
  assert member['matches'] and member['max_output_steps'] == 0
  assert member['measured']
  report = json.loads(pathlib.Path(result.deployment_report).read_text())
  assert 'float_export_check' not in report['exports']


@pytest.mark.slow
def test_untranslatable_int8_run_measures_its_float_exports(tmp_path,
                                                            monkeypatch):
  from retrain.export import int8_graph
  monkeypatch.delitem(int8_graph._TRANSLATORS, 'MEAN')  # noqa: SLF001
  module = export_fake_module(tmp_path / 'pool')
  images = make_colour_dataset(tmp_path / 'images', per_class=10)
  config = shrunk_config(images, tmp_path / 'out', str(module),
                         bottleneck_precision='int8')
  result = pipeline.run(config)
  # The float exports' accuracy on the held-out images, beside the int8
  # figure, in the deployment report, the SavedModel's metadata and the
  # run summary.
  report = json.loads(pathlib.Path(result.deployment_report).read_text())
  check = report['exports']['float_export_check']
  assert check['int8_accuracy'] == result.test_accuracy
  assert check['count'] == result.test_count and check['subset'] == 'test'
  assert check['float_export_accuracy'] == 1.0
  assert check['loss_points'] <= precision_lib.MAX_EXPORT_LOSS_POINTS
  meta = json.loads((pathlib.Path(config.outputs.saved_model_dir) /
                     'retrain_metadata.json').read_text())
  assert meta['other_exports']['float_export_check'] == check
  assert result.export_check == check


def test_float32_run_has_no_float_export_check(tmp_path, fake_module):
  images = make_colour_dataset(tmp_path / 'images', per_class=4)
  config = shrunk_config(images, tmp_path / 'out', fake_module,
                         bottleneck_precision='float32',
                         how_many_training_steps=20)
  result = pipeline.run(config)
  assert result.bottleneck_precision == 'float32'
  report = json.loads(pathlib.Path(result.deployment_report).read_text())
  assert 'float_export_check' not in report['exports']


def test_an_ensemble_decides_member_by_member(tmp_path, monkeypatch):
  from retrain.features import ensemble as ensemble_lib
  big = export_fake_module(tmp_path / 'big')
  small = export_fake_module(tmp_path / 'small', size=FAKE_SIZE // 2)
  module = ensemble_lib.load(f'{big},{small}')
  probe = _probe(tmp_path)
  real_guard = int8.guard_passes
  calls = []

  def guard(float_vectors, int8_vectors):  # refuses the second member
    calls.append(len(float_vectors))
    passes, median, low = real_guard(float_vectors, int8_vectors)
    return passes and len(calls) == 1, median, low
  monkeypatch.setattr(int8, 'guard_passes', guard)
  chosen = precision_lib.choose(module, 'int8', 'auto', None, probe)
  assert precision_lib.describe(chosen) == 'int8, float32'
  assert calls == [len(probe.paths)] * 2
  assert chosen.members[1] is module.members[1]
  assert chosen.identity() != module.identity()
  assert chosen.identity()['ensemble'][1] == module.identity()['ensemble'][1]
  # The ensemble's own call (distorted copies) runs each member's call.
  images = np.random.default_rng(0).random(
      (3, FAKE_SIZE, FAKE_SIZE, 3)).astype(np.float32)
  got = np.asarray(chosen.call(images))
  want = np.asarray(module.call(images))
  assert got.shape == want.shape == (3, 12)
  np.testing.assert_allclose(got[:, 6:], want[:, 6:], atol=1e-5)
  assert not np.array_equal(got[:, :6], want[:, :6])
