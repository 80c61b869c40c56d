"""The Beam bottleneck job: list -> hash -> decode -> RunInference -> shards.

`run(config, options, pipeline_args)` computes every vector a following
`python -m retrain` with the same Config would need (plain vectors of every
image; distorted copies of the training images when distortion flags are
set) and writes them into the cache at config.cache.bottleneck_dir:

  launcher   lists the images and loads the module once, through the
             first step of retrain's run (retrain.steps.prepare: any
             layout, CSVs; bundled presets are converted into the module
             cache then, so workers load a plain SavedModel folder), and
             works out the cache namespaces (retrain/beam/cache.py).
  Hash       workers read each file through FileSystems and compute the
             content hash that is the cache key (bottleneck_cache's
             stream_digest, as the in-process run); keys already in the
             cache are dropped here, which makes a re-run resume.
  Dedupe     one item per key (identical files are computed once).
  Decode     retrain.images.decode_and_resize (Pillow fallback through
             decode_bytes), or distort.distort_image for a copy: the very
             functions of the in-process run, so the vectors agree.
  Infer      RunInference with handler.FeatureModuleHandler, batched.
  Write      each bundle writes immutable shards (bottleneck_cache.shards)
             to a temporary name through FileSystems and renames them; the
             name is a hash of the shard's keys, so a retried bundle
             replaces its own shard instead of adding a duplicate.

The transforms are in retrain/beam/transforms.py. Files that cannot be
read or decoded go to a failures output (a TSV of path and reason, as
retrain's skipped-files report) and the job goes on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Sequence

import apache_beam as beam
import numpy as np
from absl import logging
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
  DirectOptions,
  PipelineOptions,
  StandardOptions,
)

import bottleneck_cache
from retrain.beam import cache as cache_lib
from retrain.beam import transforms
from retrain.beam.options import BeamOptions
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.common import phases as phases_lib
from retrain.config import Config, Distort
from retrain.data import sources
from retrain.errors import DatasetError
from retrain.features import ensemble as ensemble_lib
from retrain.steps import prepare

FAILURES_FILE = 'beam_failures.tsv'
# Runner names that mean "in this process". Beam's DirectRunner is a
# switch that may hand the pipeline to the Prism runner, which downloads a
# Go binary on first use (impossible offline); these names run the Python
# FnApiRunner instead, which honours --direct_num_workers and
# --direct_running_mode (in_memory, multi_threading, multi_processing).
IN_PROCESS_RUNNERS = ('DirectRunner', 'direct', 'SwitchingDirectRunner',
                      'FnApiRunner')


@dataclasses.dataclass
class BeamResult:
  """What one job did.

  Attributes:
    images: images listed.
    present: vectors (plain and copies) already in the cache, not recomputed.
    computed: vectors computed and written now.
    failures: files that could not be read or decoded.
    failures_path: the TSV listing them with reasons.
    namespaces: the cache namespace folder(s) written.
    seconds: wall time of the job, launcher included.
  """
  images: int
  present: int
  computed: int
  failures: int
  failures_path: str
  namespaces: List[str]
  seconds: float


def make_runner(pipeline_options: PipelineOptions):
  """The runner object for the options: FnApiRunner for the in-process
  names (see IN_PROCESS_RUNNERS), else None (Beam resolves the name)."""
  name = pipeline_options.view_as(StandardOptions).runner
  if name is None or name in IN_PROCESS_RUNNERS:
    from apache_beam.runners.portability.fn_api_runner import (
      fn_runner,
    )
    direct = pipeline_options.view_as(DirectOptions)
    if (direct.direct_num_workers or 1) > 1 and (
        direct.direct_running_mode == 'in_memory'):
      # in_memory runs one worker whatever the count; threads share the GIL
      # between decoding and the module less badly than nothing.
      direct.direct_running_mode = 'multi_threading'
    return fn_runner.FnApiRunner()
  return None


def _training_copies(config: Config, layout) -> List[int]:
  """Distorted copies wanted per image of layout: config.distort.distorted_copies
  for training images, 0 for the others.

  The split is the one retrain makes when every image decodes; an image
  that fails to decode can move a small class's borrowed image to another
  set, in which case retrain computes the one or two copies it then lacks.
  """
  images = layout.dataset.images
  everything = np.arange(len(images), dtype=np.int64)
  labels = np.array([image.label for image in images], dtype=np.int64)
  split = sources.make_split(layout, everything, labels,
                             config.data.validation_percentage,
                             config.data.testing_percentage)
  copies = np.zeros(len(images), dtype=np.int64)
  copies[split.train] = config.distort.distorted_copies
  return copies.tolist()


def _counter(result, name: str) -> int:
  found = result.metrics().query(
      MetricsFilter().with_namespace(transforms.METRICS).with_name(
          name))['counters']
  return int(sum(c.committed or c.attempted or 0 for c in found))


def run(config: Config, options: BeamOptions,
        pipeline_args: Sequence[str] = ()) -> BeamResult:
  """Runs the job to completion; see the module docstring.

  Args:
    config: retrain's Config; the input, module, bottleneck_dir, distortion,
      distorted_copies, random_seed and report_dir fields are used.
    options: the Beam job's own settings.
    pipeline_args: Beam pipeline options, e.g. ['--runner', 'DirectRunner',
      '--direct_num_workers', '2'].

  The images are listed and the module loaded as retrain's run does
  (retrain.steps.prepare; the files are hashed on the workers). An
  ensemble (--tfhub_module a,b or a preset of several modules) is
  computed one member at a time, each into the namespace a single-module
  run of it uses: retrain's ensemble bottlenecks read the largest member's
  from there, and compute a smaller member's (resized as the export does)
  in a namespace of their own.
  Distorted copies of an ensemble are left to retrain (with a warning).

  Raises:
    RetrainError: bad input or module (before any work starts).
  """
  started = time.monotonic()
  options.check()
  config.check()
  _check_supported(config)
  sources.check_layout_options(config.data)
  distortions = config.distort
  distort_lib.check_settings(distortions, config.distort.distorted_copies)
  # Listed as a single-label run lists them: a multi-label run reads the
  # same files' vectors.
  phases_lib.freeze_imports()
  prepared = prepare.prepare(config.replace(multi_label=False),
                             whole_run=False, hash_files=False)
  members = ensemble_lib.members(prepared.module)
  if len(members) > 1 and distortions.any():
    logging.warning('Distorted copies of an ensemble are not computed by the '
                    'Beam job; retrain computes them.')
    distortions = Distort()
  results = [_run_one(config, options, pipeline_args, prepared.layout,
                      member, distortions) for member in members]
  return BeamResult(
      images=results[0].images, present=sum(r.present for r in results),
      computed=sum(r.computed for r in results),
      failures=results[0].failures, failures_path=results[0].failures_path,
      namespaces=[d for r in results for d in r.namespaces],
      seconds=time.monotonic() - started)


def _check_supported(config) -> None:
  """Refuses settings the Beam job does not compute yet."""
  if config.crop.crop_to_boxes:
    # Whole images would fill the cache with vectors a --crop_to_boxes run
    # never reads.
    raise DatasetError('crop_to_boxes is not supported by the Beam job yet: '
                       'compute crops with python -m retrain (in-process).',
                       fields=('crop_to_boxes',))


def _places(config: Config, module, distortions) -> transforms.Places:
  """The namespace folders (made, with their namespace.json) and the
  failures TSV of a job of `module`."""
  plain_dir = cache_lib.prepare_namespace(
      config.cache.bottleneck_dir, bottlenecks_lib.cache_namespace(module))
  distorted_dir = None
  if distortions.any():
    distorted_dir = cache_lib.prepare_namespace(
        config.cache.bottleneck_dir,
        distort_lib.cache_namespace(module, distortions, config.head.random_seed))
  if '://' not in config.outputs.report_dir:
    os.makedirs(config.outputs.report_dir, exist_ok=True)
  return transforms.Places(plain_dir, distorted_dir, FileSystems.join(
      config.outputs.report_dir, FAILURES_FILE))


def _run_one(config: Config, options: BeamOptions,
             pipeline_args: Sequence[str], layout, module,
             distortions) -> BeamResult:
  """One job: the vectors of `module` (one module) of every image of
  `layout`, and its copies' under `distortions` (none: Distort())."""
  started = time.monotonic()
  images = layout.dataset.images
  places = _places(config, module, distortions)
  copies = (_training_copies(config, layout) if distortions.any()
            else [0] * len(images))
  pipeline_options = PipelineOptions(list(pipeline_args))
  runner = make_runner(pipeline_options)
  logging.info('Computing bottlenecks with Apache Beam (%s) into %s.',
               type(runner).__name__ if runner else
               pipeline_options.view_as(StandardOptions).runner,
               places.plain_dir)
  pipeline = beam.Pipeline(runner=runner, options=pipeline_options)
  transforms.build(
      pipeline, list(zip((image.path for image in images), copies,
                         strict=True)), places, module,
      distortions if distortions.any() else None, config.head.random_seed,
      options)
  result = pipeline.run()
  result.wait_until_finish()

  namespaces = [d for d in (places.plain_dir, places.distorted_dir) if d]
  if options.merge_local and '://' not in config.cache.bottleneck_dir:
    for directory in namespaces:
      description = (bottlenecks_lib.cache_namespace(module)
                     if directory == places.plain_dir else
                     distort_lib.cache_namespace(module, distortions,
                                             config.head.random_seed))
      bottleneck_cache.BottleneckStore(config.cache.bottleneck_dir,
                                       description).merge()
  done = BeamResult(images=len(images), present=_counter(result, 'present'),
                    computed=_counter(result, 'computed'),
                    failures=_counter(result, 'failures'),
                    failures_path=places.failures_prefix,
                    namespaces=namespaces,
                    seconds=time.monotonic() - started)
  logging.info('Beam bottlenecks: %d images, %d vectors already cached, %d '
               'computed, %d files failed (listed in %s), %.1f s.',
               done.images, done.present, done.computed, done.failures,
               places.failures_prefix, done.seconds)
  return done
