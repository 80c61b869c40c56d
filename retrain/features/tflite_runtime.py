"""A second runtime for the frozen module: TFLite with the XNNPACK delegate.

On a small CPU, XNNPACK runs convolution networks such as EfficientNet-Lite
faster than TensorFlow's own kernels. The module is converted once to a
`.tflite` file, stored beside the module it came from (in a `retrain-tflite`
sub-folder, or under the module cache when that folder is read-only) and
named by the module's fingerprint, so a changed module is converted again.

Vectors from the two runtimes agree to about 1e-5 (the conversion is
checked on a probe batch: more than `TOLERANCE` apart and the TFLite model
is not used). That is far below anything that changes training, so both
runtimes share the bottleneck cache.

The file is verified before use (its size and SHA-256, recorded at
conversion: retrain/features/cache_files.py); a damaged or unrecorded file
is converted again, never loaded. A module that did not convert leaves a
`.failed` marker naming the TensorFlow version it failed with; another
version tries again.

`with_runtime(module, 'tflite')` returns the module with its `call`
replaced; a module that does not convert falls back to TensorFlow with a
message, never an error.
"""

from __future__ import annotations

import os
import queue
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.common import atomic
from retrain.common.names import BOTTLENECK_RUNTIMES
from retrain.errors import ModuleError
from retrain.features import cache_files, presets
from retrain.features import ensemble as ensemble_lib
from retrain.features import modules as features
from retrain.features.modules import FeatureModule
from retrain.features.tflite_runner import TFLiteRunner, open_interpreter

# Largest absolute difference allowed between TF and TFLite vectors on the
# probe batch (measured: about 1.2e-5 for EfficientNet-Lite0).
TOLERANCE = 1e-3
_SUBDIR = 'retrain-tflite'


def tflite_file(module: FeatureModule, cache_dir: Optional[str] = None) -> str:
  """Where the module's .tflite lives: beside the module when writable."""
  name = f'{module.fingerprint[:16]}.tflite'
  beside = os.path.join(module.path, _SUBDIR)
  if os.access(module.path, os.W_OK):
    return os.path.join(beside, name)
  root = presets.module_cache_dir(cache_dir)
  return os.path.join(root, _SUBDIR, name)


def converter(module: FeatureModule) -> tf.lite.TFLiteConverter:
  """A TFLite converter of the module's forward pass: float32 [batch, H,
  W, 3] in [0, 1] -> float32 [batch, D], the batch left open."""
  height, width = module.input_size
  obj = module.obj  # loaded here, not inside the trace (its errors intact)
  fn = tf.function(lambda x: obj(x), input_signature=[
      tf.TensorSpec([None, height, width, 3], tf.float32)])
  return tf.lite.TFLiteConverter.from_concrete_functions(
      [fn.get_concrete_function()], obj)


def convert(module: FeatureModule, path: str) -> None:
  """Converts the module's call to a float32 TFLite model at `path`."""
  data = converter(module).convert()
  # Two processes converting at once never leave a half-written file; the
  # record (size, hash) is written first, so no reader sees the file
  # without one.
  cache_files.record_data(path, data)
  atomic.write_bytes(path, data)


# Images per interpreter invoke. Batch 1 keeps a layer's activations
# (about 12 MB for EfficientNet-Lite0, against about 100 MB at batch 8)
# within the CPU's caches: on 2 cores the module alone ran at 202-207
# images/s at batch 1, 199 at 2, 188 at 4 and 184-186 at 8; inside the
# pipeline, side by side in one process, 155-164 against 137-145 images/s at
# batch 8 (bench/pipeline_bench.py). The per-invoke cost is tens of
# microseconds against 5 ms of work.
INVOKE_BATCH = 1

# Interpreters at most: beyond this many cores, the cores are shared out
# between them as threads rather than one 1-thread interpreter per core, so
# the number of batches in flight (each held decoded, in float32) stays
# bounded. Only 2 cores could be measured here.
_MAX_INTERPRETERS = 4


class TFLiteCall:
  """float32 [n, H, W, 3] in [0, 1] -> float32 [n, D], via a TFLite model.

  Holds `interpreters` interpreters (default: one per core, up to
  _MAX_INTERPRETERS, the cores shared out between them as threads); each
  call takes a free one, so up to that many calls run at once, from
  different threads, each on its own cores. On 2 cores two 1-thread
  interpreters ran the module 7 % faster than one 2-thread interpreter, and
  inside the pipeline 150-154 against 124-148 images/s: XNNPACK splits every
  layer evenly between an interpreter's threads, so a decoding thread that
  takes a core from one of them stalls both, while a 1-thread interpreter
  only slows by the time it loses. A call's images go through its
  interpreter `invoke_batch` at a time (retrain.features.tflite_runner, the
  runner label_image and the quantisation check use too).
  """

  def __init__(self, path: str, input_size, invoke_batch: int = INVOKE_BATCH,
               interpreters: Optional[int] = None):
    cores = features.usable_cores()
    count = interpreters or min(cores, _MAX_INTERPRETERS)
    threads = max(1, cores // count)
    self.path = path
    self._free = queue.SimpleQueue()
    for _ in range(count):
      self._free.put(TFLiteRunner(
          open_interpreter(model_path=path, num_threads=threads),
          invoke_batch, input_size))
    self.parallel_calls = count

  def __call__(self, images) -> tf.Tensor:
    images = np.asarray(images, np.float32)
    if not images.shape[0]:
      return tf.constant(np.zeros((0, 0), np.float32))
    runner = self._free.get()
    try:
      return tf.constant(runner.run(images)[0])
    finally:
      self._free.put(runner)


def with_runtime(module: FeatureModule, runtime: str,
                 cache_dir: Optional[str] = None,
                 invoke_batch: int = INVOKE_BATCH) -> FeatureModule:
  """The module with `call` running on `runtime` ('tf', 'tflite' or 'auto').

  'auto' and 'tflite' both use TFLite when the module converts and agrees
  with TensorFlow, and TensorFlow otherwise ('tflite' says so as a warning).
  Calls may pass any number of images; TFLite runs them `invoke_batch` at a
  time.
  """
  if runtime not in BOTTLENECK_RUNTIMES:
    raise ModuleError(f'bottleneck_runtime={runtime!r} is not one of '
                      f'{", ".join(BOTTLENECK_RUNTIMES)}.',
                      fields=('bottleneck_runtime',))
  if runtime == 'tf' or _quantized(module):
    return module
  path = tflite_file(module, cache_dir)
  failed_marker = path + '.failed'
  if _failed_before(failed_marker):
    logging.info('Using TensorFlow for bottlenecks: this module did not run '
                 'on TFLite with this TensorFlow version (see %s; delete it '
                 'to try again).', failed_marker)
    return module
  _discard_unverified(path)
  try:
    if not os.path.exists(path):
      started = time.monotonic()
      logging.info('Converting the module to TFLite for faster bottlenecks '
                   '(once; a few seconds)...')
      convert(module, path)
      logging.info('TFLite model written to %s in %.1f s.', path,
                   time.monotonic() - started)
    call = TFLiteCall(path, module.input_size, invoke_batch)
    probe = np.random.default_rng(0).random(
        (2, module.input_size[0], module.input_size[1], 3)).astype(np.float32)
    diff = float(np.max(np.abs(call(probe).numpy() -
                               module.call(probe).numpy())))
    if not diff <= TOLERANCE:
      raise ValueError(f'its vectors differ from TensorFlow by {diff:.2g}')
  except ModuleError:  # the float module itself cannot be loaded: no fallback
    raise
  except Exception as e:  # noqa: BLE001 any failure falls back to TensorFlow, with its reason logged
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    log = logging.warning if runtime == 'tflite' else logging.info
    log('Using TensorFlow for bottlenecks: the module does not run on '
        'TFLite (%s).', reason)
    try:  # Remember, so later runs do not try the conversion again.
      atomic.write_text(failed_marker, _MARKER_HEAD + reason + '\n')
    except OSError:
      pass
    return module
  logging.info('Bottlenecks run on TFLite/XNNPACK, %d calls at a time (max '
               'difference from TensorFlow on a probe batch: %.1g).',
               call.parallel_calls, diff)
  return features.derive(module, call=call,
                         parallel_calls=call.parallel_calls)


# --- Verification of the cached files (retrain/features/cache_files.py) ---
# A .failed marker holds for the TensorFlow version it names only.
_MARKER_HEAD = f'tensorflow {tf.__version__}\n'


def _failed_before(marker: str) -> bool:
  """Whether `marker` says the conversion failed with this TensorFlow."""
  try:
    with open(marker, encoding='utf-8') as f:
      return f.read(len(_MARKER_HEAD)) == _MARKER_HEAD
  except OSError:
    return False


def _discard_unverified(path: str) -> None:
  """Removes a cached .tflite that does not match its size and hash record
  (or has none), so it is converted again instead of loaded."""
  if not os.path.exists(path):
    return
  why = cache_files.check_file(path)
  if why:
    logging.warning('Converting the module to TFLite again: the cached %s '
                    'cannot be used (%s).', path, why)
    cache_files.remove_file(path)


def _quantized(module: FeatureModule) -> bool:
  """True when `module` (or a member of it) runs a quantised TFLite model
  already (retrain/features/int8.py): it stays as it is."""
  return any(m.quantization for m in ensemble_lib.members(module))


def deferred(module: FeatureModule, runtime: str,
             cache_dir: Optional[str] = None) -> FeatureModule:
  """`with_runtime`, done when the module is first called, not before.

  A run whose vectors are all cached never calls the module, so it does not
  pay for opening the interpreter and checking it on a probe batch.
  """
  if runtime not in BOTTLENECK_RUNTIMES:  # a bad value fails now, not mid-run
    with_runtime(module, runtime, cache_dir)
  chosen = []

  def prepare():
    if not chosen:
      chosen.append(with_runtime(module, runtime, cache_dir))
      lazy.parallel_calls = chosen[0].parallel_calls

  def call(images):
    prepare()
    return chosen[0].call(images)

  lazy = features.derive(module, call=call, prepare=prepare)
  return lazy

