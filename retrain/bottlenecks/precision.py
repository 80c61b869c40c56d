"""Which precision each feature module runs at for bottlenecks.

`--bottleneck_precision`:

* `float32`: the float module, exactly as without this setting (same
  vectors, same cache namespace);
* `int8`: each module's int8 copy (retrain/features/int8.py), unless the
  copy cannot be made or the guard below refuses it;
* `auto`: the int8 copy where it was measured faster than the float
  module on this CPU kind and the guard passes; float elsewhere.

The guard runs on the user's own photos: a fixed probe sample (the
int8.PROBE_COUNT images with the smallest content hashes) gets float and
int8 vectors, both kept in their own cache namespaces (so a later run
reads them and decides the same way at no cost); when the two agree less
than int8.MIN_MEDIAN_COSINE (median cosine) or int8.MIN_LOW_COSINE (5th
percentile), that module runs in float, with one line saying why.

int8 vectors live in their own cache namespace (the module's identity
plus its `quantization`), never mixed with float ones. An ensemble decides
member by member. Fine-tuning trains the float network, so `auto` keeps
float vectors with `--fine_tune` and `int8` falls back to float with a
line.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from absl import logging

import bottleneck_cache
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import ensemble as ensemble_bottlenecks
from retrain.common import phases as phases_lib
from retrain.features import ensemble as ensemble_lib
from retrain.features import int8, tflite_runtime
from retrain.features.modules import FeatureModule


@dataclasses.dataclass(frozen=True)
class Probe:
  """What the guard needs of the run's images.

  Attributes:
    paths: every image file of the run.
    keyed: what bottlenecks_lib.content_keys returned for `paths`.
    bottleneck_dir: the cache root.
    batch_size: images per module call.
    max_pixels: the decoding limit (see bottlenecks_lib.make_compute_fn).
  """
  paths: Sequence[str]
  keyed: tuple
  bottleneck_dir: str
  batch_size: int
  max_pixels: int


def _probe_vectors(module: FeatureModule, runner: FeatureModule,
                   probe: Probe, rows):
  """float32 [n, D] vectors of the probe rows through the cache (ok rows)."""
  digests, _, _ = probe.keyed
  keyed = ([digests[i] for i in rows], list(range(len(rows))), [])
  store = bottleneck_cache.BottleneckStore(
      probe.bottleneck_dir, bottlenecks_lib.cache_namespace(module))
  done = bottlenecks_lib.compute_bottlenecks(
      [probe.paths[i] for i in rows], runner, store, probe.batch_size,
      bottlenecks_lib.PassOptions(max_pixels=probe.max_pixels), keyed=keyed)
  return done.vectors, done.ok


def _probe_once(member: FeatureModule, quantized: FeatureModule,
                float_runner: FeatureModule, probe: Probe, rows) -> None:
  """Computes the float and int8 vectors of the probe rows in one pass
  (ensemble_bottlenecks.shared_pass: each photo read and decoded once for
  both, one pipeline), into the namespaces _probe_vectors reads; what it
  cannot use is left to _probe_vectors, which records why."""
  digests, _, _ = probe.keyed
  keyed = ([digests[i] for i in rows], np.arange(len(rows)), [])
  stores = [bottleneck_cache.BottleneckStore(
      probe.bottleneck_dir, bottlenecks_lib.cache_namespace(m))
            for m in (member, quantized)]
  ensemble_bottlenecks.shared_pass(
      [probe.paths[i] for i in rows], [float_runner, quantized], stores,
      probe.batch_size, probe.max_pixels, keyed)


def _guard(member: FeatureModule, quantized: FeatureModule,
           float_runner: FeatureModule, probe: Probe) -> bool:
  """True when the int8 and float vectors of the probe sample agree (see
  the module doc); logs one line when they do not."""
  digests, readable, _ = probe.keyed
  keys = [digests[i] for i in readable]
  rows = [int(readable[r]) for r in int8.probe_rows(keys)]
  _probe_once(member, quantized, float_runner, probe, rows)
  float_vectors, float_ok = _probe_vectors(member, float_runner, probe, rows)
  int8_vectors, int8_ok = _probe_vectors(quantized, quantized, probe, rows)
  both = float_ok & int8_ok
  passes, median, low = int8.guard_passes(
      float_vectors[both[float_ok]], int8_vectors[both[int8_ok]])
  if not passes:
    logging.warning(
        'Using float bottlenecks for %s: on %d of your photos its int8 '
        'vectors agree with the float ones only to a median cosine of %.3f '
        '(5th percentile %.3f; needed %.2f and %.2f).', member.handle,
        int(both.sum()), median, low, int8.MIN_MEDIAN_COSINE,
        int8.MIN_LOW_COSINE)
  return passes


def _choose_member(member: FeatureModule, precision: str, runtime: str,
                   cache_dir: Optional[str], probe: Probe) -> FeatureModule:
  """The member itself, or its int8 copy (see the module doc)."""
  float_runner = tflite_runtime.deferred(member, runtime, cache_dir)
  if precision == 'auto':
    quantized = int8.auto_choice(member, float_runner, cache_dir)
    if quantized is None:
      logging.info('Using float bottlenecks for %s: an int8 copy would not '
                   'be faster on this CPU.', member.handle)
      return member
  else:
    quantized = int8.load(member, cache_dir)
    if quantized is None:
      return member
  if not _guard(member, quantized, float_runner, probe):
    return member
  return quantized


def choose(module: FeatureModule, precision: str, runtime: str,
           cache_dir: Optional[str], probe: Probe,
           fine_tune: bool = False) -> FeatureModule:
  """`module` with each member (or the module itself) replaced by its int8
  copy where `precision` and the guard say so (see the module doc).

  The result's `identity()` (so every cache namespace derived from it)
  names the precision of each member; its `obj` stays the float module's.
  For an ensemble with int8 members, `call` runs each member's own call
  (ensemble_lib.concatenated), so distorted copies use the same precision.
  """
  int8.check_precision(precision)
  if precision == 'float32':
    return module
  if fine_tune:
    if precision == 'int8':
      logging.warning('Using float bottlenecks: fine_tune trains the float '
                      'network, so its head needs float vectors.')
    return module
  members = ensemble_lib.members(module)
  if len(members) == 1:
    return _choose_member(module, precision, runtime, cache_dir, probe)
  chosen = []
  for member in members:
    chosen.append(_choose_member(member, precision, runtime, cache_dir,
                                 probe))
    # The guard's float interpreters sit in reference cycles: freed now,
    # not beside the next member's.
    phases_lib.release_memory()
  chosen = tuple(chosen)
  if all(c is m for c, m in zip(chosen, members, strict=True)):
    return module
  return ensemble_lib.with_members(module, chosen)


def close(module: FeatureModule) -> None:
  """Lets the int8 interpreters of `module`'s members go once no more
  vectors are computed (they open again if called)."""
  for member in ensemble_lib.members(module):
    if isinstance(member.call, int8.LazyCall):
      member.call.close()
  phases_lib.release_memory()


def describe(module: FeatureModule) -> str:
  """'int8', 'float32', or per member e.g. 'int8, int8, float32'."""
  return ', '.join(m.quantization and 'int8' or 'float32'
                   for m in ensemble_lib.members(module))


# Accuracy points the float exports may lose against the head's figure on
# the int8 vectors it was trained on.
MAX_EXPORT_LOSS_POINTS = 0.3


def is_quantized(module: FeatureModule) -> bool:
  """True when any member of `module` (or the module) runs int8."""
  return any(m.quantization for m in ensemble_lib.members(module))


def check_float_exports(float_module: FeatureModule, head, probe: Probe,
                        labels, int8_accuracy: float, subset: str,
                        runtime: str, cache_dir: Optional[str]
                        ) -> Optional[dict]:
  """The held-out accuracy of exports that compute float features.

  The exports hold each int8 member as its translated graph
  (retrain.export.int8_graph), which computes the int8 vectors; a member
  whose int8 model cannot be translated is exported float, and a head
  trained on int8 vectors sees float ones there. This measures the head on
  the vectors the exports compute for the held-out images (float ones
  cached in the float namespace, so a warm run pays nothing) against
  `int8_accuracy`, its figure on the int8 vectors; logs both, warns when
  the exports lose more than MAX_EXPORT_LOSS_POINTS.

  Args:
    float_module: the module (or ensemble) whose vectors the exports
      compute: float where a member fell back, int8 elsewhere.
    head: the exported head (logits of float32 [n, D]).
    probe: the held-out images (paths, keyed) and the cache settings.
    labels: int class ids [n] of probe.paths.
    int8_accuracy: in [0, 1], the head's accuracy on their int8 vectors.
    subset: 'test' or 'validation', for the messages.

  Returns:
    {'float_export_accuracy', 'int8_accuracy', 'loss_points', 'count',
    'subset', 'max_loss_points'} (accuracies in [0, 1]), or None when there
    are no held-out images.
  """
  if not len(probe.paths):
    return None
  runner = tflite_runtime.deferred(float_module, runtime, cache_dir)
  done = ensemble_bottlenecks.compute_bottlenecks(
      probe.paths, float_module, runner, probe.bottleneck_dir, runtime,
      probe.batch_size, cache_dir, keyed=probe.keyed,
      options=bottlenecks_lib.PassOptions(max_pixels=probe.max_pixels,
                                          progress_interval=30))
  predicted = np.asarray(head.logits(done.vectors)).argmax(axis=1)
  truth = np.asarray(labels)[done.ok]
  accuracy = float(np.mean(predicted == truth)) if len(truth) else float('nan')
  loss = 100 * (int8_accuracy - accuracy)
  logging.info(
      'Exports with float features (%s) on the %d %s images: %.1f %%, '
      'against %.1f %% for the head on the int8 vectors it was trained on '
      '(%+.1f points).', describe(float_module), len(truth), subset,
      100 * accuracy, 100 * int8_accuracy, -loss)
  if loss > MAX_EXPORT_LOSS_POINTS:
    logging.warning(
        'The exports lose %.1f points against the int8 figure (more than '
        '%.1f): for exports that match training exactly, run with '
        'bottleneck_precision float32.', loss, MAX_EXPORT_LOSS_POINTS)
  return {'float_export_accuracy': accuracy, 'int8_accuracy': int8_accuracy,
          'loss_points': loss, 'count': int(len(truth)), 'subset': subset,
          'max_loss_points': MAX_EXPORT_LOSS_POINTS}
