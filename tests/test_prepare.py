"""The first steps every run shares (retrain/steps/prepare.py), the
bottleneck step's storage choice and one module as an ensemble of one."""


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

