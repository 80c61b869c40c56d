"""The TFLite bottleneck runtime: same vectors, cached conversion, fallback."""

import os

import numpy as np
import pytest
import tensorflow as tf

from retrain.errors import ModuleError
from retrain.features import modules as features
from retrain.features import tflite_runner, tflite_runtime
from tests.conftest import FAKE_SIZE


@pytest.mark.parametrize('invoke_batch', [tflite_runtime.INVOKE_BATCH, 4])
def test_tflite_vectors_match_tensorflow(fake_module, invoke_batch):
  module = features.load_module(fake_module)
  fast = tflite_runtime.with_runtime(module, 'tflite',
                                     invoke_batch=invoke_batch)
  assert fast.call is not module.call
  path = tflite_runtime.tflite_file(module)
  assert os.path.exists(path)
  images = np.random.default_rng(1).random(
      (7, FAKE_SIZE, FAKE_SIZE, 3)).astype(np.float32)  # not a multiple of 4
  np.testing.assert_allclose(fast.call(images).numpy(),
                             module.call(images).numpy(), atol=1e-5)
  # A second use loads the converted file instead of converting again.
  mtime = os.path.getmtime(path)
  tflite_runtime.with_runtime(module, 'auto', invoke_batch=4)
  assert os.path.getmtime(path) == mtime


def test_tf_runtime_is_unchanged(fake_module):
  module = features.load_module(fake_module)
  assert tflite_runtime.with_runtime(module, 'tf') is module


def test_unknown_runtime_is_refused(fake_module):
  module = features.load_module(fake_module)
  with pytest.raises(ModuleError, match="bottleneck_runtime='gpu'"):
    tflite_runtime.with_runtime(module, 'gpu')


def test_module_that_does_not_convert_falls_back(fake_module, monkeypatch,
                                                 caplog):
  module = features.load_module(fake_module)
  def broken(module, path):
    raise ValueError('unsupported op FancyOp')
  monkeypatch.setattr(tflite_runtime, 'convert', broken)
  path = tflite_runtime.tflite_file(module)
  if os.path.exists(path):
    os.remove(path)
  result = tflite_runtime.with_runtime(module, 'tflite')
  assert result is module
  assert 'unsupported op FancyOp' in caplog.text
  assert os.path.exists(path + '.failed')
  os.remove(path + '.failed')


def test_deferred_runtime_is_chosen_at_the_first_call_only(fake_module,
                                                           monkeypatch):
  """A run whose vectors are all cached never opens the TFLite model."""
  module = features.load_module(fake_module)
  chosen = []
  real = tflite_runtime.with_runtime

  def spy(*args, **kwargs):
    chosen.append(args[1])
    return real(*args, **kwargs)

  monkeypatch.setattr(tflite_runtime, 'with_runtime', spy)
  lazy = tflite_runtime.deferred(module, 'auto')
  assert chosen == [] and lazy.identity() == module.identity()
  lazy.prepare()
  assert chosen == ['auto']
  images = np.random.default_rng(0).random((3,) + module.input_size + (3,),
                                           np.float32)
  np.testing.assert_allclose(lazy.call(images).numpy(),
                             module.call(images).numpy(), atol=1e-4)
  lazy.call(images)
  assert chosen == ['auto']
  with pytest.raises(ModuleError, match="bottleneck_runtime='gpu'"):
    tflite_runtime.deferred(module, 'gpu')


def test_interpreters_run_calls_at_once_with_the_same_vectors(fake_module):
  """One 1-thread interpreter per core; calls from several threads at once
  give exactly what one call at a time gives."""
  import concurrent.futures
  module = features.load_module(fake_module)
  fast = tflite_runtime.with_runtime(module, 'tflite', invoke_batch=4)
  assert fast.parallel_calls == min(features.usable_cores(),
                                    tflite_runtime._MAX_INTERPRETERS)
  batches = [np.random.default_rng(k).random((5,) + module.input_size + (3,),
                                             np.float32) for k in range(6)]
  alone = [fast.call(b).numpy() for b in batches]
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    together = list(pool.map(lambda b: fast.call(b).numpy(), batches))
  for a, t in zip(alone, together):
    np.testing.assert_array_equal(a, t)


def test_run_module_keeps_batch_order_with_parallel_calls(fake_module):
  import dataclasses
  import threading
  import time

  from retrain.bottlenecks import compute as bottlenecks
  module = features.load_module(fake_module)
  active, most = [0], [0]
  lock = threading.Lock()

  def call(images):
    with lock:
      active[0] += 1
      most[0] = max(most[0], active[0])
    time.sleep(0.02)  # long enough for calls to overlap
    with lock:
      active[0] -= 1
    return module.call(images)

  parallel = dataclasses.replace(module, call=call, parallel_calls=2)
  batches = [(tf.constant(np.arange(3 * k, 3 * k + 3)),
              tf.fill((3,) + module.input_size + (3,), k / 10))
             for k in range(7)]
  out = list(bottlenecks.run_module(parallel, batches))
  assert [i.tolist() for i, _ in out] == [[3 * k, 3 * k + 1, 3 * k + 2]
                                          for k in range(7)]
  for k, (_, vectors) in enumerate(out):
    np.testing.assert_allclose(
        vectors, module.call(batches[k][1]).numpy(), atol=1e-6)
  assert most[0] == 2


@pytest.mark.parametrize('cores,interpreters,threads', [
    (1, 1, 1), (2, 2, 1), (4, 4, 1), (16, 4, 4), (6, 4, 1)])
def test_cores_are_shared_out_between_interpreters(fake_module, monkeypatch,
                                                   cores, interpreters,
                                                   threads):
  """One 1-thread interpreter per core up to a cap; beyond it, threads."""
  module = features.load_module(fake_module)
  path = tflite_runtime.tflite_file(module)
  tflite_runtime.with_runtime(module, 'tflite')  # converts once
  made = []
  real = tflite_runner.interpreter_class()

  def counting(**kwargs):
    made.append(kwargs['num_threads'])
    return real(**kwargs)

  monkeypatch.setattr(features, 'usable_cores', lambda: cores)
  monkeypatch.setattr(tflite_runner, 'interpreter_class', lambda: counting)
  call = tflite_runtime.TFLiteCall(path, module.input_size, 4)
  assert call.parallel_calls == interpreters
  assert made == [threads] * interpreters


def test_a_half_written_tflite_is_converted_again_not_loaded(fake_module,
                                                              caplog):
  """A truncated converted file (a copy cut short, a full disk) fails its
  size and hash record and is rebuilt; the interpreter never opens it."""
  module = features.load_module(fake_module)
  tflite_runtime.with_runtime(module, 'tflite')
  path = tflite_runtime.tflite_file(module)
  whole = open(path, 'rb').read()
  with open(path, 'r+b') as f:
    f.truncate(len(whole) // 2)
  fast = tflite_runtime.with_runtime(module, 'tflite')
  assert fast.call is not module.call
  assert 'cannot be used' in caplog.text and 'bytes' in caplog.text
  assert open(path, 'rb').read() == whole
  assert not os.path.exists(path + '.failed')


def test_a_failed_marker_of_another_tensorflow_is_retried(fake_module):
  module = features.load_module(fake_module)
  path = tflite_runtime.tflite_file(module)
  with open(path + '.failed', 'w') as f:
    f.write('unsupported op FancyOp\n')  # no version: an older marker
  try:
    fast = tflite_runtime.with_runtime(module, 'tflite')
    assert fast.call is not module.call
  finally:
    if os.path.exists(path + '.failed'):
      os.remove(path + '.failed')
