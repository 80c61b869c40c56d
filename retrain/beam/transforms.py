"""The Beam job's transforms: Hash -> Decode -> (RunInference) -> Write, and
the failures output (see retrain/beam/job.py)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from retrain import image_header
from retrain.beam import cache as cache_lib
from retrain.beam import handler as handler_lib
from retrain.beam.options import BeamOptions
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.common import walk as walk_lib

METRICS = 'retrain_beam'


_MAX_FILE_BYTES = image_header.max_file_bytes(image_header.MAX_IMAGE_PIXELS)


def _read(path: str) -> bytes:
  """The file's bytes, at most _MAX_FILE_BYTES (ValueError past them: a
  larger file is refused from its listed size, unread)."""
  listed = FileSystems.match([path])[0].metadata_list
  if listed and listed[0].size_in_bytes > _MAX_FILE_BYTES:
    raise ValueError(walk_lib.too_large_reason(listed[0].size_in_bytes,
                                               _MAX_FILE_BYTES))
  with FileSystems.open(path, compression_type=cache_lib.RAW) as f:
    contents = f.read(_MAX_FILE_BYTES + 1)
  if len(contents) > _MAX_FILE_BYTES:
    raise ValueError(walk_lib.too_large_reason(len(contents),
                                               _MAX_FILE_BYTES))
  return contents


def _unreadable_reason(path: str, error: Exception) -> str:
  from retrain import images as images_lib
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
    self._skipped = Metrics.counter(METRICS, 'present')

  def setup(self):
    for directory in self._directories:
      self._present |= cache_lib.existing_keys(directory)

  def process(self, item):
    from retrain.bottlenecks import distort as distort_lib
    path, copies = item
    try:
      key = hashlib.sha256(_read(path)).hexdigest()
    except Exception as e:  # noqa: BLE001
      # Any file system's error means the same: this file cannot be used.
      yield beam.pvalue.TaggedOutput('failures',
                                     (path, _unreadable_reason(path, e)))
      return
    wanted = [(key, -1)] + [(distort_lib.copy_key(key, c), c)
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
    import tensorflow as tf

    from retrain import images as images_lib
    from retrain.bottlenecks import distort as distort_lib
    size, d = self._size, self._distortions
    self._tf = tf
    self._images = images_lib
    self._distort = distort_lib
    # Graph functions, as the in-process tf.data map runs them.
    self._plain = tf.function(
        lambda contents: images_lib.decode_and_resize(contents, size),
        input_signature=[tf.TensorSpec([], tf.string)])
    self._copy = None
    if d is not None:
      self._copy = tf.function(
          lambda contents, seed: distort_lib.distort_image(contents, size, seed, d),
          input_signature=[tf.TensorSpec([], tf.string),
                           tf.TensorSpec([2], tf.int64)])

  def process(self, element):
    key, (path, copy, image_key) = element
    failure = beam.pvalue.TaggedOutput
    try:
      contents = _read(path)
    except Exception as e:  # noqa: BLE001
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
    self._written = Metrics.counter(METRICS, 'computed')
    self._shards = Metrics.counter(METRICS, 'shards')
    self._bad = Metrics.counter(METRICS, 'non_finite')
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
      cache_lib.write_shard_file(directory, keys, np.stack(vectors))
      self._written.inc(len(keys))
      self._shards.inc()


def _format_failure(failure) -> str:
  path, reason = failure
  return f'{path}\t{" ".join(str(reason).split())}'


@dataclasses.dataclass
class Places:
  """Where one job writes.

  Attributes:
    plain_dir: the namespace folder of the images' vectors.
    distorted_dir: that of their distorted copies, None when no copies are
      wanted.
    failures_prefix: the failures TSV is written to this path.
  """
  plain_dir: str
  distorted_dir: Optional[str]
  failures_prefix: str


def build(pipeline, items: Sequence[Tuple[str, int]], places: Places,
          module, distortions, seed: int, options: BeamOptions):
  """Adds the job's transforms to `pipeline`.

  Args:
    items: (image path, distorted copies wanted) per image.
    module: the FeatureModule (its SavedModel folder, path, and input size
      (h, w) are used).
    distortions: a retrain.config.Distort, or None.
  """
  plain_dir, distorted_dir = places.plain_dir, places.distorted_dir
  module_path, input_size = module.path, module.input_size
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
           places.failures_prefix, shard_name_template='',
           header='path\treason'))


_FAILED = Metrics.counter(METRICS, 'failures')


def _count_failure(failure):
  _FAILED.inc()
  return failure
