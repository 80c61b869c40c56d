"""The Beam bottleneck job: list -> hash -> decode -> RunInference -> shards.

`run(config, options, pipeline_args)` computes every vector a following
`python -m retrain` with the same Config would need (plain vectors of every
image; distorted copies of the training images when distortion flags are
set) and writes them into the cache at config.bottleneck_dir:

  launcher   lists the images with retrain.data.sources (any layout, CSVs),
             loads the module once (bundled presets are converted into the
             module cache then, so workers load a plain SavedModel folder)
             and works out the cache namespaces.
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

Files that cannot be read or decoded go to a failures output (a TSV of
path and reason, as retrain's skipped-files report) and the job goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from absl import logging
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import (
  DirectOptions,
  PipelineOptions,
  StandardOptions,
)

import bottleneck_cache
from bottleneck_cache import shards, temporaries
from retrain import image_header
from retrain.beam import handler as handler_lib
from retrain.beam.options import BeamOptions
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort
from retrain.common import walk as walk_lib
from retrain.config import Config, subset
from retrain.errors import DatasetError

FAILURES_FILE = 'beam_failures.tsv'
_METRICS = 'retrain_beam'
# Runner names that mean "in this process". Beam's DirectRunner is a
# switch that may hand the pipeline to the Prism runner, which downloads a
# Go binary on first use (impossible offline); these names run the Python
# FnApiRunner instead, which honours --direct_num_workers and
# --direct_running_mode (in_memory, multi_threading, multi_processing).
IN_PROCESS_RUNNERS = ('DirectRunner', 'direct', 'SwitchingDirectRunner',
                      'FnApiRunner')
_RAW = CompressionTypes.UNCOMPRESSED


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
      fn_runner,  # pylint: disable=g-import-not-at-top
    )
    direct = pipeline_options.view_as(DirectOptions)
    if (direct.direct_num_workers or 1) > 1 and (
        direct.direct_running_mode == 'in_memory'):
      # in_memory runs one worker whatever the count; threads share the GIL
      # between decoding and the module less badly than nothing.
      direct.direct_running_mode = 'multi_threading'
    return fn_runner.FnApiRunner()
  return None


# --- Cache folders through FileSystems ----------------------------------------


def namespace_dir(root: str, description: dict) -> str:
  return FileSystems.join(root, bottleneck_cache.namespace_id(description))


def prepare_namespace(root: str, description: dict) -> str:
  """Creates the namespace folder and its namespace.json; returns the folder.

  A local root goes through BottleneckStore, which also removes the
  temporary files of killed writers; any other (gs://, s3://...) through
  FileSystems.
  """
  if '://' not in root:
    return bottleneck_cache.BottleneckStore(root, description).directory
  import json  # pylint: disable=g-import-not-at-top
  directory = namespace_dir(root, description)
  path = FileSystems.join(directory, bottleneck_cache.store.NAMESPACE_FILE)
  if not FileSystems.exists(path):
    with FileSystems.create(path, compression_type=_RAW) as f:
      f.write(json.dumps(description, indent=2, sort_keys=True).encode())
  return directory


def existing_keys(directory: str) -> set:
  """Keys of every readable shard in a namespace folder (any file system)."""
  found = set()
  pattern = FileSystems.join(directory, f'{shards.SHARD_PREFIX}*'
                             f'{shards.SHARD_SUFFIX}')
  for metadata in FileSystems.match([pattern])[0].metadata_list:
    try:
      with FileSystems.open(metadata.path, compression_type=_RAW) as f:
        keys = shards.read_shard_keys(f)
    except (OSError, ValueError, KeyError) as e:
      logging.warning('Cannot read shard %s (%s); its vectors are computed '
                      'again.', metadata.path, e)
      continue
    found.update(k.decode('utf-8') for k in keys)
  return found


def write_shard_file(directory: str, keys: Sequence[str],
                     vectors: np.ndarray) -> Optional[str]:
  """Writes one immutable shard: temporary name, then rename.

  Rows are sorted by key and the name is a hash of the keys, so writing the
  same keys twice (a retried bundle) gives the same file. Returns the shard
  path, or None when it was already there.
  """
  order = sorted(range(len(keys)), key=keys.__getitem__)
  keys = [keys[i] for i in order]
  final = FileSystems.join(directory, shards.content_shard_name(keys))
  if FileSystems.exists(final):
    return None
  # The owner tag (pid@host) lets BottleneckStore's clean-up remove it once
  # that process is gone (or, from another host, once it is an hour old).
  tmp = FileSystems.join(
      directory, f'{shards.TMP_PREFIX}{temporaries.owner_tag()}')
  data = shards.encode_shard(keys, np.asarray(vectors, np.float32)[order])
  with FileSystems.create(tmp, compression_type=_RAW) as f:
    f.write(data)
  FileSystems.rename([tmp], [final])
  return final


# The largest image file read, as in-process (image_header.max_file_bytes).
_MAX_FILE_BYTES = image_header.max_file_bytes(image_header.MAX_IMAGE_PIXELS)


def _read(path: str) -> bytes:
  """The file's bytes, at most _MAX_FILE_BYTES (ValueError past them: a
  larger file is refused from its listed size, unread)."""
  listed = FileSystems.match([path])[0].metadata_list
  if listed and listed[0].size_in_bytes > _MAX_FILE_BYTES:
    raise ValueError(walk_lib.too_large_reason(listed[0].size_in_bytes,
                                               _MAX_FILE_BYTES))
  with FileSystems.open(path, compression_type=_RAW) as f:
    contents = f.read(_MAX_FILE_BYTES + 1)
  if len(contents) > _MAX_FILE_BYTES:
    raise ValueError(walk_lib.too_large_reason(len(contents),
                                               _MAX_FILE_BYTES))
  return contents


def _unreadable_reason(path: str, error: Exception) -> str:
  from retrain import images as images_lib  # pylint: disable=g-import-not-at-top
  if isinstance(error, OSError) and '://' not in path:
    return images_lib.os_error_reason(path, error)
  return f'cannot be read: {error}'


# --- The transforms -------------------------------------------------------------


class HashFiles(beam.DoFn):
  """(path, copies) -> (key, (path, copy, image key)) for each vector the
  cache lacks: the plain one (copy -1) and copies 0..copies-1. Unreadable
  files go to the 'failures' output as (path, reason)."""

  def __init__(self, directories: Sequence[str]):
    self._directories = list(directories)
    self._present = set()
    self._skipped = Metrics.counter(_METRICS, 'present')

  def setup(self):
    for directory in self._directories:
      self._present |= existing_keys(directory)

  def process(self, item):
    from retrain.bottlenecks import distort  # pylint: disable=g-import-not-at-top
    path, copies = item
    try:
      key = hashlib.sha256(_read(path)).hexdigest()
    except Exception as e:  # pylint: disable=broad-except
      # Any file system's error means the same: this file cannot be used.
      yield beam.pvalue.TaggedOutput('failures',
                                     (path, _unreadable_reason(path, e)))
      return
    wanted = [(key, -1)] + [(distort.copy_key(key, c), c)
                            for c in range(copies)]
    for item_key, copy in wanted:
      if item_key in self._present:
        self._skipped.inc()
      else:
        yield item_key, (path, copy, key)


class DecodeImages(beam.DoFn):
  """(key, (path, copy, image key)) -> (key, float32 [h, w, 3] in [0, 1]).

  Plain images (copy -1) go through retrain.images.decode_and_resize, with
  decode_bytes (Pillow) for what TensorFlow rejects; copies through
  distort.distort_image seeded by distort.copy_seed. Failures go to the
  'failures' output as (path, reason).
  """

  def __init__(self, size: Tuple[int, int], distortions, seed: int):
    self._size = tuple(int(s) for s in size)
    self._distortions = distortions
    self._seed = int(seed)

  def setup(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from retrain import images as images_lib  # pylint: disable=g-import-not-at-top
    from retrain.bottlenecks import distort  # pylint: disable=g-import-not-at-top
    size, d = self._size, self._distortions
    self._tf = tf
    self._images = images_lib
    self._distort = distort
    # Graph functions, as the in-process tf.data map runs them.
    self._plain = tf.function(
        lambda contents: images_lib.decode_and_resize(contents, size),
        input_signature=[tf.TensorSpec([], tf.string)])
    self._copy = None
    if d is not None:
      self._copy = tf.function(
          lambda contents, seed: distort.distort_image(contents, size, seed, d),
          input_signature=[tf.TensorSpec([], tf.string),
                           tf.TensorSpec([2], tf.int64)])

  def process(self, element):
    key, (path, copy, image_key) = element
    failure = beam.pvalue.TaggedOutput
    try:
      contents = _read(path)
    except Exception as e:  # pylint: disable=broad-except
      yield failure('failures', (path, _unreadable_reason(path, e)))
      return
    # The bytes decoded are the bytes hashed, and within the header limits.
    reason = (bottlenecks_lib.CHANGED_REASON
              if hashlib.sha256(contents).hexdigest() != image_key else
              image_header.check_bytes(contents, self._size,
                                       image_header.MAX_IMAGE_PIXELS)[0])
    if reason:
      yield failure('failures', (path, reason))
      return
    tf = self._tf
    try:
      if copy < 0:
        image = self._plain(tf.constant(contents))
      else:
        seed = self._distort.copy_seed(self._seed, image_key, copy)
        image = self._copy(tf.constant(contents),
                           tf.constant(seed, tf.int64))
    except tf.errors.OpError:
      try:
        image = self._images.decode_bytes(contents, self._size, path)
      except self._images.ImageError as e:
        yield failure('failures', (path, e.reason))
        return
      if copy >= 0:  # as in-process: copies only of what TensorFlow decodes
        yield failure('failures', (path, f'distorted copy {copy}: TensorFlow '
                                   'cannot decode the file'))
        return
    yield key, image.numpy()


class WriteShards(beam.DoFn):
  """(key, float32 [D]) -> shards: one per bundle and namespace (more when
  a bundle exceeds max_vectors). Copy keys ('<digest>:<c>') go to the
  distorted namespace, plain keys to the plain one."""

  def __init__(self, plain_dir: str, distorted_dir: Optional[str],
               max_vectors: int):
    self._dirs = (plain_dir, distorted_dir)
    self._max = max_vectors
    self._written = Metrics.counter(_METRICS, 'computed')
    self._shards = Metrics.counter(_METRICS, 'shards')
    self._bad = Metrics.counter(_METRICS, 'non_finite')
    self._pending = {}

  def start_bundle(self):
    self._pending = {}

  def process(self, element):
    key, vector = element
    if not np.all(np.isfinite(vector)):
      self._bad.inc()
      return
    directory = self._dirs[1] if ':' in key else self._dirs[0]
    keys, vectors = self._pending.setdefault(directory, ([], []))
    keys.append(key)
    vectors.append(np.asarray(vector, np.float32))
    if len(keys) >= self._max:
      self._flush(directory)

  def finish_bundle(self):
    for directory in list(self._pending):
      self._flush(directory)

  def _flush(self, directory):
    keys, vectors = self._pending.pop(directory)
    if keys:
      write_shard_file(directory, keys, np.stack(vectors))
      self._written.inc(len(keys))
      self._shards.inc()


def _format_failure(failure) -> str:
  path, reason = failure
  return f'{path}\t{" ".join(str(reason).split())}'


def build(pipeline, items: Sequence[Tuple[str, int]], *, plain_dir: str,
          distorted_dir: Optional[str], module_path: str,
          input_size: Tuple[int, int], distortions, seed: int,
          options: BeamOptions, failures_prefix: str):
  """Adds the job's transforms to `pipeline`.

  Args:
    items: (image path, distorted copies wanted) per image.
    plain_dir, distorted_dir: namespace folders (distorted_dir None when no
      copies are wanted).
    module_path: the SavedModel folder; input_size: (h, w).
    distortions: a distort.Distortions, or None.
    failures_prefix: the failures TSV is written to this path.
  """
  handler = handler_lib.FeatureModuleHandler(
      module_path, input_size, min_batch_size=options.min_batch_size,
      max_batch_size=options.max_batch_size, large_model=options.large_model,
      model_copies=options.model_copies)
  hashed = (pipeline
            | 'List' >> beam.Create(list(items))
            | 'Spread' >> beam.Reshuffle()
            | 'Hash' >> beam.ParDo(HashFiles(
                [d for d in (plain_dir, distorted_dir) if d])).with_outputs(
                    'failures', main='todo'))
  decoded = (hashed.todo
             | 'OnePerKey' >> beam.CombinePerKey(min)
             | 'Decode' >> beam.ParDo(DecodeImages(
                 input_size, distortions, seed)).with_outputs(
                     'failures', main='images'))
  _ = (decoded.images
       | 'Infer' >> RunInference(KeyedModelHandler(handler))
       | 'Vectors' >> beam.MapTuple(lambda key, result: (key,
                                                         result.inference))
       | 'Write' >> beam.ParDo(WriteShards(plain_dir, distorted_dir,
                                           options.shard_max_vectors)))
  _ = ((hashed.failures, decoded.failures)
       | 'Failures' >> beam.Flatten()
       | 'Count' >> beam.Map(_count_failure)
       | 'Format' >> beam.Map(_format_failure)
       | 'WriteFailures' >> beam.io.WriteToText(
           failures_prefix, shard_name_template='',
           header='path\treason'))


_FAILED = Metrics.counter(_METRICS, 'failures')


def _count_failure(failure):
  _FAILED.inc()
  return failure


def _training_copies(config: Config, layout) -> List[int]:
  """Distorted copies wanted per image of layout: config.distorted_copies
  for training images, 0 for the others.

  The split is the one retrain makes when every image decodes; an image
  that fails to decode can move a small class's borrowed image to another
  set, in which case retrain computes the one or two copies it then lacks.
  """
  from retrain.data import sources as layouts  # pylint: disable=g-import-not-at-top
  images = layout.dataset.images
  everything = np.arange(len(images), dtype=np.int64)
  labels = np.array([image.label for image in images], dtype=np.int64)
  split = layouts.make_split(layout, everything, labels,
                             config.validation_percentage,
                             config.testing_percentage)
  copies = np.zeros(len(images), dtype=np.int64)
  copies[split.train] = config.distorted_copies
  return copies.tolist()


def _counter(result, name: str) -> int:
  found = result.metrics().query(
      MetricsFilter().with_namespace(_METRICS).with_name(name))['counters']
  return int(sum(c.committed or c.attempted or 0 for c in found))


def run(config: Config, options: BeamOptions,
        pipeline_args: Sequence[str] = ()) -> BeamResult:
  """Runs the job to completion; see the module docstring and _run_one.

  An ensemble (--tfhub_module a,b or a preset of several modules) is
  computed one member at a time, each into the namespace a single-module
  run of it uses: retrain's ensemble bottlenecks read the largest member's
  from there, and compute a smaller member's (resized as the export does)
  in a namespace of their own.
  Distorted copies of an ensemble are left to retrain (with a warning).
  """
  from retrain.features import ensemble as ensemble_lib  # pylint: disable=g-import-not-at-top
  loaded = ensemble_lib.load(config.tfhub_module, config.image_size,
                             config.module_cache_dir, trust=config.trust_module)
  members = getattr(loaded, 'members', None)
  if not members:
    return _run_one(config, options, pipeline_args)
  if subset(distort.Distortions, config).any():
    logging.warning('Distorted copies of an ensemble are not computed by the '
                    'Beam job; retrain computes them.')
  results = [_run_one(dataclasses.replace(
      config, tfhub_module=member.handle, flip_left_right=False,
      random_crop=0.0, random_scale=0.0, random_brightness=0.0,
      random_rotation=0.0, random_shift=0.0), options, pipeline_args)
             for member in members]
  return BeamResult(
      images=results[0].images, present=sum(r.present for r in results),
      computed=sum(r.computed for r in results),
      failures=results[0].failures, failures_path=results[0].failures_path,
      namespaces=[d for r in results for d in r.namespaces],
      seconds=sum(r.seconds for r in results))


def _check_supported(config) -> None:
  """Refuses settings the Beam job does not compute yet."""
  if config.crop_to_boxes:
    # Whole images would fill the cache with vectors a --crop_to_boxes run
    # never reads.
    raise DatasetError('crop_to_boxes is not supported by the Beam job yet: '
                       'compute crops with python -m retrain (in-process).',
                       fields=('crop_to_boxes',))


def _run_one(config: Config, options: BeamOptions,
             pipeline_args: Sequence[str] = ()) -> BeamResult:
  """Runs the job to completion; see the module docstring.

  Args:
    config: retrain's Config; the input, module, bottleneck_dir, distortion,
      distorted_copies, random_seed and report_dir fields are used.
    options: the Beam job's own settings.
    pipeline_args: Beam pipeline options, e.g. ['--runner', 'DirectRunner',
      '--direct_num_workers', '2'].

  Raises:
    RetrainError: bad input or module (before any work starts).
  """
  from retrain.bottlenecks import compute as bottlenecks_lib  # pylint: disable=g-import-not-at-top
  from retrain.data import sources as layouts  # pylint: disable=g-import-not-at-top
  from retrain.features import modules as features  # pylint: disable=g-import-not-at-top
  started = time.monotonic()
  options.check()
  _check_supported(config)
  layout_options = subset(layouts.LayoutOptions, config)
  layouts.check_layout_options(layout_options)
  distortions = subset(distort.Distortions, config)
  distort.check_settings(distortions, config.distorted_copies)
  layout = layouts.load_layout(layout_options)
  images = layout.dataset.images
  logging.info('Found %d images: %s.', len(images), layout.description)

  module = features.load_module(config.tfhub_module, config.image_size,
                                config.module_cache_dir, config.trust_module)
  plain_dir = prepare_namespace(config.bottleneck_dir,
                                bottlenecks_lib.cache_namespace(module))
  distorted_dir = None
  copies = [0] * len(images)
  if distortions.any():
    distorted_dir = prepare_namespace(
        config.bottleneck_dir,
        distort.cache_namespace(module, distortions, config.random_seed))
    copies = _training_copies(config, layout)
  failures_path = FileSystems.join(config.report_dir, FAILURES_FILE)
  if '://' not in config.report_dir:
    os.makedirs(config.report_dir, exist_ok=True)

  pipeline_options = PipelineOptions(list(pipeline_args))
  runner = make_runner(pipeline_options)
  logging.info('Computing bottlenecks with Apache Beam (%s) into %s.',
               type(runner).__name__ if runner else
               pipeline_options.view_as(StandardOptions).runner, plain_dir)
  pipeline = beam.Pipeline(runner=runner, options=pipeline_options)
  build(pipeline, list(zip((image.path for image in images), copies, strict=True)),
        plain_dir=plain_dir, distorted_dir=distorted_dir,
        module_path=module.path, input_size=module.input_size,
        distortions=distortions if distortions.any() else None,
        seed=config.random_seed, options=options,
        failures_prefix=failures_path)
  result = pipeline.run()
  result.wait_until_finish()

  namespaces = [d for d in (plain_dir, distorted_dir) if d]
  if options.merge_local and '://' not in config.bottleneck_dir:
    for directory in namespaces:
      description = (bottlenecks_lib.cache_namespace(module)
                     if directory == plain_dir else
                     distort.cache_namespace(module, distortions,
                                             config.random_seed))
      bottleneck_cache.BottleneckStore(config.bottleneck_dir,
                                       description).merge()
  done = BeamResult(images=len(images), present=_counter(result, 'present'),
                    computed=_counter(result, 'computed'),
                    failures=_counter(result, 'failures'),
                    failures_path=failures_path, namespaces=namespaces,
                    seconds=time.monotonic() - started)
  logging.info('Beam bottlenecks: %d images, %d vectors already cached, %d '
               'computed, %d files failed (listed in %s), %.1f s.',
               done.images, done.present, done.computed, done.failures,
               failures_path, done.seconds)
  return done
