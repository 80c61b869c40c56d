"""Integer bottlenecks: a full-integer int8 copy of a feature module.

`--bottleneck_precision int8` runs each feature module as a TFLite model
whose weights and activations are int8 (post-training full-integer
quantisation; float32 input and output, so it is called exactly like the
float module: float32 [n, H, W, 3] in [0, 1] -> float32 [n, D]). On a CPU
with integer dot-product instructions (AVX-512 VNNI, ARM dotprod) XNNPACK
runs it 2-3 times faster than the float module (bench/int8.py).

Calibration rule. The activation ranges are measured on CALIBRATION_COUNT
synthetic images made from a fixed seed (calibration_images: smooth
colour fields with 1/f-like detail at several scales, and hard-edged
shapes), never on the user's photos. So the int8 model is a pure function
of the float module (and of the converter's version): every run, every
folder and every user of one module cache get the same int8 model and
therefore the same vectors, and one cache namespace (QUANTIZATION, beside
the module's identity) holds them.

The model is converted once, written atomically into the module cache
beside the float TFLite model (`retrain-tflite/<fingerprint>-int8-<rule>.tflite`)
and verified before use: it must load and its vectors of the calibration
images must agree with the float module's (median cosine at least
MIN_SYNTHETIC_COSINE); a model that fails is remembered (`.failed`) and the
run uses float vectors.

The guard on the user's photos (guard_passes) compares float and int8
vectors of a fixed probe sample of the user's images; `auto` also needs
the int8 model measured faster than the float one on this CPU kind
(measured once, stored beside the model in a `.speed.json`).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.common import atomic
from retrain.common.names import BOTTLENECK_PRECISIONS
from retrain.errors import ModuleError
from retrain.features import modules as features
from retrain.features import tflite_runtime
from retrain.features.modules import FeatureModule

# The calibration rule's name: part of the int8 model's file name and of
# its vectors' cache namespace. Change it whenever calibration_images or
# the converter settings change, so old vectors are never mixed with new.
QUANTIZATION = 'int8-synthetic-v1'
CALIBRATION_COUNT = 64
CALIBRATION_SEED = 20240
# The converted model is refused when its vectors of the calibration
# images agree less than this with the float module's (median cosine): a
# check that the conversion works, not of accuracy (the synthetic images
# are far from photos; EfficientNet-Lite0/1/2 reach 0.88-0.95 on them,
# a broken conversion about 0). The guard on the photos judges accuracy.
MIN_SYNTHETIC_COSINE = 0.7
# The guard on the user's photos: probe images, and the median and 5th
# percentile cosine of (float, int8) vectors of one photo they must reach.
# Measured with bench/int8.py (5-fold, a logistic head): on flowers_sample
# the medians are 0.991-0.992 (5th percentiles 0.965-0.971) and a head
# trained on int8 vectors loses at most 0.6 points on float ones; on
# sign_language_digits the medians are 0.913-0.939 and it loses 3.5-11.6
# points (while int8 heads on int8 vectors match float ones there).
PROBE_COUNT = 64
MIN_MEDIAN_COSINE = 0.97
MIN_LOW_COSINE = 0.9
# `auto` takes int8 only when it runs at least this much faster (a tiny
# module's int8 copy can run at float speed, and timings of a few
# milliseconds are noisy; EfficientNet-Lite0/1/2 run 2-3x faster).
MIN_SPEEDUP = 1.2
# ... and only for a module whose float call costs at least this many
# milliseconds per image (EfficientNet-Lite0 costs 10-25).
MIN_FLOAT_MS_PER_IMAGE = 1.0
# Images per interpreter call when timing float against int8.
_TIMING_IMAGES = 4


def calibration_images(size: Tuple[int, int], count: int = CALIBRATION_COUNT,
                       seed: int = CALIBRATION_SEED) -> np.ndarray:
  """float32 [count, H, W, 3] in [0, 1]: the fixed synthetic calibration set.

  Even images are colour fields: noise at grid sizes 2, 4, ..., 64 upsampled
  bilinearly, each octave half as strong as the one before (the power
  spectrum of natural photos falls about as 1/f^2), mixed through a random
  colour matrix and stretched to a random contrast. Odd images add sharp
  rectangles and discs of random colours over such a field. The same
  `seed` gives the same images on every machine (numpy's PCG64 and
  tf.image.resize are deterministic).
  """
  rng = np.random.default_rng(seed)
  height, width = size
  out = np.empty((count, height, width, 3), np.float32)
  yy, xx = np.mgrid[0:height, 0:width]
  for n in range(count):
    field = np.zeros((height, width, 3), np.float32)
    for octave in range(1, 7):
      grid = 2 ** octave
      noise = rng.standard_normal((1, grid, grid, 3)).astype(np.float32)
      up = tf.image.resize(noise, (height, width), method='bilinear')
      field += up.numpy()[0] / (2 ** (octave - 1))
    field = field @ rng.uniform(-1, 1, (3, 3)).astype(np.float32)
    field += rng.uniform(-0.3, 0.3, 3).astype(np.float32)
    if n % 2:
      for _ in range(rng.integers(2, 8)):
        colour = rng.uniform(-2, 2, 3).astype(np.float32)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(4, height / 2), rng.uniform(4, width / 2)
        if rng.random() < 0.5:
          mask = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        else:
          mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        field[mask] = colour
    low, high = np.percentile(field, [1, 99])
    contrast = rng.uniform(0.5, 1.0)
    field = (field - low) / max(high - low, 1e-6) * contrast
    field += rng.uniform(0, 1 - contrast)
    out[n] = np.clip(field, 0, 1)
  return out


def int8_file(module: FeatureModule, cache_dir: Optional[str] = None) -> str:
  """Where the module's int8 model lives (beside its float TFLite model)."""
  float_path = tflite_runtime.tflite_file(module, cache_dir)
  return float_path[:-len('.tflite')] + f'-{QUANTIZATION}.tflite'


def convert(module: FeatureModule, path: str) -> None:
  """Converts the module to a full-integer int8 TFLite model at `path`
  (float32 input and output), calibrated on calibration_images; written
  atomically."""
  converter = tflite_runtime.converter(module)
  images = calibration_images(module.input_size)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([images[i:i + 1]]
                                              for i in range(len(images)))
  converter.target_spec.supported_ops = [
      tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  atomic.write_bytes(path, converter.convert())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """float64 [n]: the cosine of each row of a with the same row of b."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
  return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def _verify(module: FeatureModule, call: Callable) -> float:
  """The median cosine of the int8 and float vectors of the calibration
  images; raises ValueError below MIN_SYNTHETIC_COSINE."""
  images = calibration_images(module.input_size)[:8]
  median = float(np.median(cosines(call(images).numpy(),
                                   module.call(images).numpy())))
  if not median >= MIN_SYNTHETIC_COSINE:
    raise ValueError(f'its vectors of the calibration images agree with the '
                     f'float module\'s only to a median cosine of {median:.3f}')
  return median


def load(module: FeatureModule, cache_dir: Optional[str] = None
         ) -> Optional[FeatureModule]:
  """The module's int8 copy (converted and verified on first use), or None
  with one log line when it cannot be made or fails verification.

  The copy's `call` runs the int8 model; its `quantization` is
  QUANTIZATION (so its vectors get their own cache namespace); `obj` is
  still the float module's (exports that cannot hold the int8 model use
  it).
  """
  path = int8_file(module, cache_dir)
  failed_marker = path + '.failed'
  if os.path.exists(failed_marker):
    logging.info('Using float bottlenecks: the int8 copy of %s failed '
                 'before (see %s).', module.handle, failed_marker)
    return None
  call = LazyCall(path, module.input_size)
  unverified = f'{path}.unverified-{os.getpid()}'
  try:
    if not os.path.exists(path):
      started = time.monotonic()
      logging.info('Quantising %s to int8 for faster bottlenecks (once; '
                   'calibrated on %d fixed synthetic images)...',
                   module.handle, CALIBRATION_COUNT)
      # Verified under another name, then renamed: `path` only ever holds
      # a model that passed. The interpreters opened to verify it are kept.
      convert(module, unverified)
      call._call = tflite_runtime.TFLiteCall(unverified, module.input_size)  # noqa: SLF001 the verified interpreter replaces the lazy one
      median = _verify(module, call)
      os.replace(unverified, path)
      logging.info('int8 model written to %s in %.1f s (median cosine with '
                   'the float module on the calibration images %.3f).', path,
                   time.monotonic() - started, median)
  except ModuleError:  # the float module itself cannot be loaded: no fallback
    raise
  except Exception as e:  # noqa: BLE001 any failure falls back to the float module, with its reason logged
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if os.path.exists(unverified):
      os.remove(unverified)
    logging.warning('Using float bottlenecks for %s: its int8 copy cannot be '
                    'used (%s).', module.handle, reason)
    try:
      atomic.write_text(failed_marker, reason + '\n')
    except OSError:
      pass
    return None
  return features.derive(module, call=call, prepare=None,
                         parallel_calls=call.parallel_calls,
                         quantization=QUANTIZATION)


def op_names() -> dict:
  """{builtin operator code: its name (e.g. 'CONV_2D')} of the TFLite
  schema."""
  from tensorflow.lite.python import schema_py_generated as schema
  return {v: k for k, v in vars(schema.BuiltinOperator).items()
          if not k.startswith('_') and isinstance(v, int)}


def model_path(module: FeatureModule) -> Optional[str]:
  """The int8 TFLite file that `module`'s call runs (a copy made by
  `load`), or None when it is not one."""
  if module.quantization != QUANTIZATION or not isinstance(module.call,
                                                            LazyCall):
    return None
  return module.call.path


# What may stand between a model's global average pooling and its output.
_AFTER_POOLING = ('DEQUANTIZE', 'RESHAPE', 'SQUEEZE')


def activations_model(path: str) -> bytes:
  """The int8 model at `path` with its output moved back to what its final
  global average pooling averages: int8 [n, h, w, C] (quantised; the
  interpreter's output details hold its scale and zero point), whose mean
  over h and w is the feature vector up to the pooling's rounding. For
  heat maps of the features an int8 run trains on (retrain/report/
  heatmap.py).

  Raises:
    ValueError: the output is not a global average pooling (MEAN over
      axes 1 and 2, or AVERAGE_POOL_2D to 1 x 1) of a 4-D tensor, followed
      by nothing but _AFTER_POOLING.
  """
  from tensorflow.lite.tools import flatbuffer_utils
  model = flatbuffer_utils.read_model(path)
  graph, names = model.subgraphs[0], op_names()
  made_by = {int(t): op for op in graph.operators for t in op.outputs}
  tensor = int(graph.outputs[0])
  while tensor in made_by:
    op = made_by[tensor]
    code = model.operatorCodes[op.opcodeIndex]
    name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
    if name in ('MEAN', 'AVERAGE_POOL_2D'):
      pooled = int(op.inputs[0])
      if not _global_pooling(model, graph, op, name, pooled):
        break
      graph.outputs = np.array([pooled], np.int32)
      model.signatureDefs = []  # they name the old output
      return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    if name not in _AFTER_POOLING:
      break
    tensor = int(op.inputs[0])
  raise ValueError(f'{path} does not end in a global average pooling')


def _global_pooling(model, graph, op, name: str, pooled: int) -> bool:
  """Whether pooling op `op` (`name`) averages tensor `pooled` [n, h, w,
  C] over all of h and w."""
  shape = graph.tensors[pooled].shape
  if shape is None or len(shape) != 4:
    return False
  if name == 'AVERAGE_POOL_2D':
    options = op.builtinOptions
    return (options.filterHeight, options.filterWidth) == (shape[1], shape[2])
  tensor = graph.tensors[int(op.inputs[1])]
  axes = model.buffers[tensor.buffer].data
  dtype = {2: np.int32, 4: np.int64}.get(tensor.type)  # the schema's codes
  if axes is None or dtype is None:
    return False
  axes = np.frombuffer(np.asarray(axes, np.uint8).tobytes(), dtype)
  return sorted(int(a) % 4 for a in axes) == [1, 2]


class LazyCall:
  """A TFLiteCall opened on its first call: a run whose vectors are all
  cached never opens the interpreters."""

  def __init__(self, path: str, input_size):
    self.path = path
    self._input_size = input_size
    self._call = None
    self._lock = threading.Lock()
    self.parallel_calls = min(features.usable_cores(),
                              tflite_runtime._MAX_INTERPRETERS)  # noqa: SLF001 the same interpreter cap as tflite_runtime

  def __call__(self, images) -> tf.Tensor:
    with self._lock:  # calls come from several threads at once
      if self._call is None:
        self._call = tflite_runtime.TFLiteCall(self.path, self._input_size)
      call = self._call
    return call(images)

  def close(self) -> None:
    """Lets the interpreters go (a later call opens them again)."""
    with self._lock:
      self._call = None


def _cpu_kind() -> str:
  """A name for this CPU kind (model name and its integer-relevant flags)."""
  info = {}
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        key, _, value = line.partition(':')
        info.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  flags = (info.get('flags') or info.get('Features') or '').split()
  wanted = sorted(f for f in flags if 'vnni' in f or 'dotprod' in f
                  or f.startswith('avx512'))
  name = info.get('model name') or platform.processor() or platform.machine()
  return ' '.join([name, *wanted])


def _time_call(call: Callable, images: np.ndarray, repeats: int) -> float:
  best = float('inf')
  for _ in range(repeats):
    started = time.perf_counter()
    call(images)
    best = min(best, time.perf_counter() - started)
  return best


def _read_record(path: str, cpu: str) -> Optional[dict]:
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    return record if record.get('cpu') == cpu else None
  except (OSError, ValueError, AttributeError):
    return None


def _write_record(path: str, record: dict) -> None:
  try:
    atomic.write_text(path, json.dumps(record, indent=1) + '\n')
  except OSError:
    pass


def auto_choice(module: FeatureModule, float_runner: FeatureModule,
                cache_dir: Optional[str] = None) -> Optional[FeatureModule]:
  """For `auto`: the module's int8 copy when it runs MIN_SPEEDUP times
  faster than `float_runner` on this CPU kind, else None.

  A module whose float call costs under MIN_FLOAT_MS_PER_IMAGE per image
  is not worth quantising and is not converted. Both timings (best of 3,
  interleaved, on _TIMING_IMAGES calibration images) are measured once per
  CPU kind and stored in `<int8 model>.speed.json`; later runs read them.
  """
  record_path = int8_file(module, cache_dir) + '.speed.json'
  cpu = _cpu_kind()
  record = _read_record(record_path, cpu)
  if record is None:
    if float_runner.prepare is not None:
      float_runner.prepare()
    images = calibration_images(module.input_size)[:_TIMING_IMAGES]
    float_runner.call(images)  # warm-up: the first invoke plans the graph
    float_s = min(_time_call(float_runner.call, images, 1) for _ in range(3))
    record = {'cpu': cpu, 'images': _TIMING_IMAGES, 'float_seconds': float_s,
              'int8_seconds': None}
    if 1000 * float_s / _TIMING_IMAGES < MIN_FLOAT_MS_PER_IMAGE:
      _write_record(record_path, record)
      return None
  if record['int8_seconds'] is None and (
      1000 * record['float_seconds'] / _TIMING_IMAGES
      < MIN_FLOAT_MS_PER_IMAGE):
    return None
  quantized = load(module, cache_dir)
  if quantized is None:
    return None
  if record['int8_seconds'] is None:
    images = calibration_images(module.input_size)[:_TIMING_IMAGES]
    quantized.call(images)
    int8_s = float_s = float('inf')
    for _ in range(3):  # interleaved, so both see the same load
      int8_s = min(int8_s, _time_call(quantized.call, images, 1))
      float_s = min(float_s, _time_call(float_runner.call, images, 1))
    record.update(int8_seconds=int8_s, float_seconds=float_s)
    _write_record(record_path, record)
    logging.info('%s on this CPU: int8 %.0f ms, float %.0f ms for %d images.',
                 module.handle, 1000 * int8_s, 1000 * float_s, _TIMING_IMAGES)
  if record['int8_seconds'] * MIN_SPEEDUP < record['float_seconds']:
    return quantized
  return None


def guard_passes(float_vectors: np.ndarray, int8_vectors: np.ndarray
                 ) -> Tuple[bool, float, float]:
  """(passes, median cosine, 5th-percentile cosine) of the float and int8
  vectors (float32 [n, D] each, the same images in the same order)."""
  if not len(float_vectors):
    return True, 1.0, 1.0
  c = cosines(float_vectors, int8_vectors)
  median, low = float(np.median(c)), float(np.percentile(c, 5))
  return (median >= MIN_MEDIAN_COSINE and low >= MIN_LOW_COSINE), median, low


def probe_rows(keys: Sequence[str], count: int = PROBE_COUNT) -> np.ndarray:
  """int64 [<= count]: the probe sample, chosen by content hash (the rows of
  the smallest keys), so the same photos are probed on every run."""
  order = np.argsort(np.asarray(keys, dtype=object).astype(str), kind='stable')
  return np.sort(order[:count]).astype(np.int64)


def check_precision(precision: str) -> None:
  """Raises ModuleError naming the value when it is not a known precision."""
  if precision not in BOTTLENECK_PRECISIONS:
    raise ModuleError(f'bottleneck_precision={precision!r} is not one of '
                      f'{", ".join(BOTTLENECK_PRECISIONS)}.',
                      fields=('bottleneck_precision',))
