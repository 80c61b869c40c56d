"""The first steps every run shares (retrain/steps/prepare.py), the
bottleneck step's storage choice and one module as an ensemble of one."""


import numpy as np

from retrain.features import ensemble as ensemble_lib
from retrain.features import module_safety
from retrain.steps import prepare, vectors


def _counting_safety_checks(monkeypatch):
  """The folders module_safety.check_module scans from now on, in order."""
  checked, real = [], module_safety.check_module
  monkeypatch.setattr(
      module_safety, 'check_module',
      lambda handle, path, trust: checked.append(path) or real(handle, path,
                                                               trust))
  return checked


def test_a_local_module_is_safety_checked_once_per_run(
    small_config, colour_dir, monkeypatch):
  checked = _counting_safety_checks(monkeypatch)
  prepared = prepare.prepare(small_config)
  assert len(checked) == 1, checked
  assert prepared.module.handle == small_config.module.tfhub_module
  assert prepared.keyed is not None
  assert len(prepared.keyed[0]) == len(prepared.layout.dataset.images) > 0


def test_without_a_run_the_module_is_checked_when_loaded(
    small_config, colour_dir, monkeypatch):
  """inspect and the Beam job load without check_config: the load checks."""
  checked = _counting_safety_checks(monkeypatch)
  prepared = prepare.prepare(small_config, whole_run=False, hash_files=False)
  assert len(checked) == 1, checked
  assert prepared.keyed is None
  assert prepared.module is prepared.float_module


def test_one_module_is_an_ensemble_of_one(fake_module):
  module = ensemble_lib.load(str(fake_module))
  assert ensemble_lib.members(module) == (module,)
  assert [m['handle'] for m in ensemble_lib.describe_modules(module)] == [
      str(fake_module)]


def test_the_bottleneck_step_chooses_the_storage(small_config, colour_dir):
  prepared = prepare.prepare(small_config)
  images = len(prepared.layout.dataset.images)
  assert vectors.choose_storage(small_config, prepared) == 'memory'
  tight = small_config.replace(max_vectors_in_memory=1)
  assert images > 1
  assert vectors.choose_storage(tight, prepared) == 'cache'
  # The multi-label head streams from the cache too.
  assert vectors.choose_storage(tight.replace(multi_label=True),
                                prepared) == 'cache'


def test_the_bottleneck_step_hands_on_a_record(small_config, colour_dir):
  prepared = prepare.prepare(small_config)
  found = vectors.compute(small_config, prepared)
  assert found.storage == 'memory'
  assert found.labels == list(prepared.layout.dataset.labels)
  assert found.images.vectors.shape == (
      len(prepared.layout.dataset.images), prepared.module.output_dim)
  assert found.skipped == []



def _counting_module(path, rank=2):
  """A SavedModel module that counts its calls in variable `calls`:
  float32 [b, 8, 8, 3] -> the channel means, [b, 3] (rank 3: [b, 1, 3])."""
  import tensorflow as tf

  class Counting(tf.Module):

    def __init__(self):
      super().__init__()
      self.calls = tf.Variable(0, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3],
                                                tf.float32)])
    def __call__(self, images):
      self.calls.assign_add(1)
      pooled = tf.reduce_mean(images, axis=[1, 2])
      return pooled if rank == 2 else pooled[:, None, :]

  tf.saved_model.save(Counting(), str(path))
  return str(path)


def test_loading_a_module_does_not_run_it(tmp_path):
  """A warm run never calls the module: its vector size is read from the
  trace, not from a forward pass."""
  from retrain.features import modules
  module = modules.load_module(_counting_module(tmp_path / 'counting'))
  assert module.output_dim == 3
  assert int(module.obj.calls.numpy()) == 0
  assert module.call(np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 3)
  assert int(module.obj.calls.numpy()) == 1


def test_a_module_that_gives_no_vectors_is_refused_by_name(tmp_path):
  import pytest

  from retrain.errors import ModuleError
  from retrain.features import modules
  path = _counting_module(tmp_path / 'maps', rank=3)
  with pytest.raises(ModuleError, match=r'returns \(1, 1, 3\), not feature '
                     r'vectors \[batch, D\]'):
    modules.load_module(path)
