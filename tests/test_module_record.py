"""A feature module's SavedModel is loaded on first use: the record of its
sizes in the module cache, what a corrupt record does, and that every
path that needs the loaded module still gets it."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from retrain.bottlenecks import precision
from retrain.errors import ModuleError
from retrain.features import ensemble as ensemble_lib
from retrain.features import int8, module_record, tflite_runtime
from retrain.features import modules as features
from tests.conftest import FAKE_SIZE, export_fake_module


@pytest.fixture
def loads(monkeypatch):
  """The paths tf.saved_model.load is called on, in order."""
  seen = []
  real = tf.saved_model.load

  def counting(path, *args, **kwargs):
    seen.append(path)
    return real(path, *args, **kwargs)

  monkeypatch.setattr(tf.saved_model, 'load', counting)
  return seen


@pytest.fixture
def module_dir(tmp_path):
  return export_fake_module(tmp_path / 'pool')


def _images(size=FAKE_SIZE):
  return np.random.default_rng(0).random((2, size, size, 3)).astype(np.float32)


def test_a_second_load_reads_the_record_and_loads_on_first_use(
    tmp_path, module_dir, loads):
  cache = str(tmp_path / 'cache')
  first = features.load_module(module_dir, cache_dir=cache)
  assert len(loads) == 1 and first.loaded
  record = module_record.record_path(first.fingerprint, cache)
  assert json.loads(open(record).read())['output_dims'] == {
      f'{FAKE_SIZE}x{FAKE_SIZE}': 6}

  second = features.load_module(module_dir, cache_dir=cache)
  assert len(loads) == 1 and not second.loaded
  assert (second.input_size, second.output_dim, second.fingerprint) == (
      first.input_size, first.output_dim, first.fingerprint)
  assert second.identity() == first.identity()
  derived = features.derive(second, parallel_calls=3)
  assert len(loads) == 1 and not derived.loaded
  np.testing.assert_allclose(derived.call(_images()).numpy(),
                             first.call(_images()).numpy())
  assert len(loads) == 2 and second.loaded
  assert derived.obj is second.obj and len(loads) == 2


@pytest.mark.parametrize('content', [
    b'{not json', b'[]', b'{"format": 1}', b' ' * 5000 + b'{}',
    b'{"format": 1, "fingerprint": "other", "fixed_input_size": null, '
    b'"output_dims": {"32x32": 6}}',
])
def test_a_record_that_does_not_parse_is_ignored_and_the_module_loaded(
    tmp_path, module_dir, loads, content):
  cache = str(tmp_path / 'cache')
  record = module_record.record_path(features.fingerprint_module(module_dir),
                                cache)
  os.makedirs(os.path.dirname(record))
  with open(record, 'wb') as f:
    f.write(content)
  module = features.load_module(module_dir, cache_dir=cache)
  assert len(loads) == 1 and module.loaded and module.output_dim == 6
  again = features.load_module(module_dir, cache_dir=cache)
  assert len(loads) == 1 and not again.loaded  # the record was rewritten


def test_a_module_that_no_longer_loads_fails_on_first_use_with_its_error(
    tmp_path, module_dir):
  cache = str(tmp_path / 'cache')
  features.load_module(module_dir, cache_dir=cache)
  data = os.path.join(module_dir, 'variables',
                      'variables.data-00000-of-00001')
  with open(data, 'rb') as f:
    content = f.read()
  scale = np.float32(4.0).tobytes()
  assert content.count(scale) == 1
  with open(data, 'wb') as f:  # the scale's bits, not its checksum, changed
    f.write(content.replace(scale, np.float32(5.0).tobytes()))
  module = features.load_module(module_dir, cache_dir=cache)
  with pytest.raises(ModuleError, match='Could not load the module in'):
    module.call(_images())
  # A runtime that would fall back to TensorFlow passes the error on.
  with pytest.raises(ModuleError, match='Could not load the module in'):
    tflite_runtime.with_runtime(module, 'auto', cache)
  with pytest.raises(ModuleError, match='Could not load the module in'):
    int8.load(module, cache)
  assert not os.path.exists(int8.int8_file(module, cache) + '.failed')


def test_the_record_keeps_one_output_size_per_input_size(
    tmp_path, loads):
  cache = str(tmp_path / 'cache')
  path = export_fake_module(tmp_path / 'any', size=None)
  features.load_module(path, image_size=16, cache_dir=cache)
  assert not features.load_module(path, 16, cache).loaded
  assert features.load_module(path, 20, cache).loaded  # a new size: loaded
  assert len(loads) == 2
  lazy = features.load_module(path, 20, cache)
  assert not lazy.loaded and lazy.input_size == (20, 20)
  assert lazy.call(_images(20)).shape == (2, 6)
  with pytest.raises(ModuleError, match='accepts images of any size'):
    features.load_module(path, cache_dir=cache)


def test_float_paths_get_the_loaded_module(tmp_path, module_dir, loads):
  """An ensemble, a float member, the TF runtime and the int8 choice's
  float fallback: each calls the module that a record described."""
  cache = str(tmp_path / 'cache')
  small = export_fake_module(tmp_path / 'small', size=24, scale=2.0)
  eager = ensemble_lib.load(f'{module_dir},{small}', cache_dir=cache)
  want = eager.call(_images()).numpy()
  lazy = ensemble_lib.load(f'{module_dir},{small}', cache_dir=cache)
  assert len(loads) == 2 and not any(m.loaded for m in lazy.members)
  floats = precision.choose(lazy, 'float32', 'tf', cache, probe=None)
  runner = tflite_runtime.deferred(floats, 'tf', cache)
  np.testing.assert_allclose(runner.call(_images()).numpy(), want)
  assert len(loads) == 4
  assert isinstance(lazy.obj, ensemble_lib.Ensemble)
  np.testing.assert_allclose(lazy.obj(_images()).numpy(), want)
  assert [m.obj for m in lazy.members] == lazy.obj.members
  assert len(loads) == 4


def test_saved_variables_are_the_loaded_variables(module_dir):
  scale = tf.saved_model.load(module_dir).scale
  read = features.saved_variables(module_dir)
  assert read[scale.name.split(':')[0]] == scale.numpy() == 4.0


def test_a_run_loads_its_float_members_before_training(tmp_path, fake_module,
                                                        loads):
  """A float member's exports need its SavedModel: loaded in prepare, so
  a module that cannot be loaded fails before the head is trained."""
  from retrain.steps import prepare
  from tests.conftest import make_colour_dataset, shrunk_config
  cache = str(tmp_path / 'cache')
  make_colour_dataset(tmp_path / 'images')
  config = shrunk_config(tmp_path / 'images', tmp_path / 'out', fake_module,
                         module_cache_dir=cache,
                         bottleneck_precision='float32')
  features.load_module(str(fake_module), cache_dir=cache)  # the record
  assert not features.load_module(str(fake_module), cache_dir=cache).loaded
  prepared = prepare.prepare(config)
  assert len(loads) == 2 and prepared.module.loaded
  inspected = prepare.prepare(config, whole_run=False, hash_files=False)
  assert len(loads) == 2 and not inspected.module.loaded  # loads on first use
