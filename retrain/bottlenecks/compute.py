"""Computing bottleneck vectors for images, through the on-disk cache.

The expensive step of a run: every image is decoded, resized and passed
through the module once; the vectors then live in `bottleneck_cache` so a
re-run only computes images it has not seen. Images stream through a
tf.data pipeline that decodes in parallel and overlaps decoding with the
module, so memory stays flat however many images there are.

Each image file is read once per pass, bounded (retrain.common.walk
.read_file: regular files only, at most image_header.max_file_bytes), and
those very bytes are hashed, header-checked and decoded: bytes whose hash
is not the key they were looked up under (the file changed since it was
hashed) are never stored under that key. A file that cannot be read or
decoded is reported with its reason and left out; the run goes on. Files TensorFlow's decoder rejects get a second try,
after the parallel pass, through `retrain.images.load_image` (Pillow
fallback: TIFF and other rarities), the very function inference uses.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

import bottleneck_cache
from retrain import image_header
from retrain import images as images_lib
from retrain.bottlenecks import kept, thumbnails
from retrain.common import names
from retrain.common import phases as phases_lib
from retrain.common import walk as walk_lib
from retrain.common.progress import Progress
from retrain.errors import ImageError, OutputError
from retrain.features import modules as features
from retrain.features.modules import FeatureModule

# Content hashing is I/O bound and hashlib releases the GIL.
_HASH_THREADS = 8
# Files hashed between progress lines (at most) and between saves of the
# digest memo: a killed run resumes from the last save (saving a
# million-file memo takes a few seconds, so not too often).
_HASH_PART = 10_000
_MEMO_SAVE_EVERY = 100_000
# Images decoded at once: one per core.
_DECODE_THREADS = features.usable_cores()
# Photos per cache shard (~10 ms of HDF5 each; at most what a kill loses).
STORE_EVERY = 32


@dataclasses.dataclass
class Bottlenecks:
  """Vectors for a list of images.

  Attributes:
    vectors: float32 [n_ok, D], row i for the i-th image whose `ok` is True.
    ok: bool [n], False for images that could not be used.
    failures: (path, reason) for each image that could not be used.
    stats: what the cache did (reused, computed, failed).
    digests: content hash of each image (None where unreadable), in the
      order of the paths.
  """
  vectors: np.ndarray
  ok: np.ndarray
  failures: list
  stats: bottleneck_cache.Stats
  digests: list = dataclasses.field(default_factory=list)


def cache_namespace(module: FeatureModule) -> dict:
  """The cache namespace of plain (undistorted) vectors of a module."""
  # The preprocessing version: bumped whenever the pixels change (v2: JPEGs
  # turned upright by their EXIF orientation; v3: area resize when
  # shrinking), so vectors cached by an older version are never reused.
  return dict(module.identity(), kind='bottleneck', preprocessing='v3')


def _hash_files(paths: Sequence[str], memo: bottleneck_cache.DigestMemo
                ) -> list:
  """SHA-256 hex digest of each file, or an OSError for files that cannot
  be read (see _hash_compact)."""
  return _hex_digests(*_hash_compact(paths, memo))


def _hash_compact(paths: Sequence[str], memo: bottleneck_cache.DigestMemo
                  ) -> tuple:
  """(uint8 [n, 32]: the SHA-256 of each file, zeros where unreadable;
  {index: OSError} of the files that cannot be read).

  Files whose size, mtime and inode the memo knows are not read again, so
  a re-run (or a run resumed after a kill: the memo is saved every
  _MEMO_SAVE_EVERY files) only stats them. Progress is shown for more than
  _HASH_PART files (a small folder hashes in a blink). Memory: 32 bytes a
  file, plus the memo's 72; no per-path dict unless a path is listed
  twice. The digests stay bytes until the memo is gone (_hex_digests):
  a hex string is 112 bytes.
  """
  def digest(path):
    try:
      return memo.digest(path)
    except OSError as e:
      return e

  def digest_all(some_paths):
    return [digest(path) for path in some_paths]
  # Each file once: with --crop_to_boxes a photo is listed once per box.
  # The test compares the paths' 64-bit hashes (8 bytes a path, freed at
  # once), not a set of the path strings: `paths` may make each string
  # when read (retrain.data.discover.image_paths). Equal hashes, whether
  # from a repeated path or a rare collision, lead to the exact dict below.
  first = None
  hashes = np.fromiter((hash(path) for path in paths), np.int64, len(paths))
  if len(np.unique(hashes)) < len(hashes):
    first = {}
    for i, path in enumerate(paths):
      first.setdefault(path, i)
  del hashes
  unique = (range(len(paths)) if first is None
            else sorted(first.values()))
  progress = (Progress('Hashing', len(unique), unit='files')
              if len(unique) > _HASH_PART else None)
  found = np.zeros((len(paths), 32), np.uint8)
  errors = {}
  with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
    for start in range(0, len(unique), _HASH_PART):
      part = unique[start:start + _HASH_PART]
      # One task per thread (every _HASH_THREADS-th file), not one per file:
      # a Future costs about 1 KB, 10 MB for a part of 10,000.
      for k, values in enumerate(pool.map(digest_all, [
          [paths[i] for i in part[k::_HASH_THREADS]]
          for k in range(_HASH_THREADS)])):
        rows, hexes = [], []
        for i, value in zip(part[k::_HASH_THREADS], values, strict=True):
          if isinstance(value, OSError):
            errors[i] = value
          else:
            rows.append(i)
            hexes.append(value)
        found[rows] = np.frombuffer(bytes.fromhex(''.join(hexes)),
                                    np.uint8).reshape(len(rows), 32)
      if progress is not None:
        progress.update(len(part))
      done = start + len(part)
      if done % _MEMO_SAVE_EVERY == 0 and done < len(unique):
        memo.save()
        phases_lib.trim_heap()
  memo.save()
  phases_lib.trim_heap()
  if progress is not None:
    progress.finish()
  if first is not None:
    source = np.fromiter((first[path] for path in paths), np.int64,
                         len(paths))
    found = found[source]
    errors = {i: errors[j] for i, j in enumerate(source.tolist())
              if j in errors}
  return found, errors


def _hex_digests(found: np.ndarray, errors: dict) -> list:
  """The hex digest of each row of uint8 [n, 32] `found`, or its error
  from `errors` ({index: OSError}); made _HASH_PART rows at a time."""
  digests = []
  for start in range(0, len(found), _HASH_PART):
    text = found[start:start + _HASH_PART].tobytes().hex()
    digests.extend(text[j:j + 64] for j in range(0, len(text), 64))
  for i, error in errors.items():
    digests[i] = error
  return digests


def _decode_error(path: str, size, box=None,
                  max_pixels: int = image_header.MAX_IMAGE_PIXELS,
                  digest: Optional[str] = None) -> str:
  """Why one file fails to decode (called only for the rare failures)."""
  try:
    contents = read_checked(path, digest, size, max_pixels)
    images_lib.decode_bytes(contents, size, path, max_pixels, box=box)
  except ImageError as e:
    return e.reason
  except Exception as e:  # noqa: BLE001 the decoder's own message, whatever its type, is the reason
    message = getattr(e, 'message', None) or str(e)
    return message.strip().splitlines()[0] if message.strip() else type(e).__name__
  return 'could not be decoded'


CHANGED_REASON = ('changed while this run read it (its bytes no longer '
                  'match the hash taken when the run started); run again')


def read_checked(path: str, digest: Optional[str], size,
                 max_pixels: int) -> bytes:
  """The bytes of image file `path`, read once and bounded (or kept from
  hashing), or ImageError.

  Args:
    path: the image file.
    digest: its SHA-256 hex digest when hashed (its cache key), or None:
      bytes with another digest are refused (the file changed).
    size: the decoding target (h, w), for the header check.
    max_pixels: see image_header.problem; the file may have at most
      image_header.max_file_bytes(max_pixels) bytes.
  """
  # The bytes hashing read, when kept (retrain.bottlenecks.kept): their
  # SHA-256 is `digest` by construction.
  contents = kept.take(digest, path)
  if contents is None:
    try:
      contents = walk_lib.read_file(path,
                                    image_header.max_file_bytes(max_pixels))
    except OSError as e:
      raise ImageError(path, images_lib.os_error_reason(path, e)) from e
    if digest is not None and hashlib.sha256(contents).hexdigest() != digest:
      raise ImageError(path, CHANGED_REASON)
  reason, _ = image_header.check_bytes(contents, size, max_pixels)
  if reason:
    raise ImageError(path, reason)
  return contents


def read_images(indices: Sequence[int], paths: Sequence[str],
                digests: Optional[Sequence[str]], size, max_pixels: int,
                reasons: dict) -> tf.data.Dataset:
  """(int64 index, string bytes) of each of `indices` whose file passes
  read_checked (paths[i], digests[i]), in order, read ahead on
  _HASH_THREADS threads; the others get their reason in `reasons`."""
  def read(i):
    try:
      return i, read_checked(paths[i], None if digests is None else
                             digests[i], size, max_pixels)
    except ImageError as e:
      reasons[int(i)] = e.reason
      return i, None

  def generate():
    for i, contents in map_ordered(read, [int(i) for i in indices],
                                   _HASH_THREADS):
      if contents is not None:
        yield i, contents
  return tf.data.Dataset.from_generator(generate, output_signature=(
      tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string)))


def image_batches(items, load, batch_size: int) -> tf.data.Dataset:
  """Batches of `load(*item)` for the items of `items`, in order.

  Args:
    items: tensors whose first dimension runs over the items (as for
      tf.data.Dataset.from_tensor_slices), or a tf.data.Dataset of them.
    load: (item tensors...) -> (index, float32 [h, w, 3] image) in graph ops.
    batch_size: items per batch.

  Items whose `load` fails are left out (their indices are missing from the
  batches). One decoding call per core, two batches decoded ahead, and no
  tf.data autotuning: on 2 cores, with the module on two 1-thread TFLite
  interpreters (see run_module), this ran at 146-158 images/s on a
  4000-image copy of the flower sample (bench/pipeline_bench.py,
  EfficientNet-Lite0); with autotuning, trial runs swung between 97 and
  156.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  source = (items if isinstance(items, tf.data.Dataset)
            else tf.data.Dataset.from_tensor_slices(items))
  return (source
          .map(load, num_parallel_calls=_DECODE_THREADS, deterministic=True)
          .ignore_errors()
          .batch(batch_size)
          .prefetch(2)
          .with_options(options))


def grouped(batches, rows: Optional[int] = None):
  """(indices [n], vectors [n, D]) batches joined, in order, to >= rows."""
  rows = STORE_EVERY if rows is None else rows
  held = []
  for batch in batches:
    held.append(batch)
    if sum(len(i) for i, _ in held) >= rows:
      yield tuple(np.concatenate(part) for part in zip(*held))
      held = []
  if held:
    yield tuple(np.concatenate(part) for part in zip(*held))


def map_ordered(fn, items, width: int):
  """fn(item) for each item of `items`, in order, up to `width` calls at
  once, each on its own thread, with one more item fetched (decoded) ahead
  so no core idles while the next is being decoded; width <= 1 calls fn
  on this thread."""
  if width <= 1:
    for item in items:
      yield fn(item)
    return
  with concurrent.futures.ThreadPoolExecutor(width) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) > width:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def run_module(module: FeatureModule, batches):
  """(indices, float32 [n, D] vectors) for each (indices, images) batch of
  `batches`, in order.

  Up to `module.parallel_calls` module calls run at once (one per core with
  the TFLite runtime); see map_ordered.
  """
  if module.prepare is not None:
    module.prepare()
  return map_ordered(
      lambda batch: (batch[0].numpy(), module.call(batch[1]).numpy()),
      batches, module.parallel_calls)


def make_compute_fn(paths: Sequence[str], module: FeatureModule,
                    batch_size: int, reasons: Optional[dict] = None,
                    max_pixels: int = image_header.MAX_IMAGE_PIXELS,
                    boxes: Optional[np.ndarray] = None,
                    digests: Optional[Sequence[str]] = None):
  """A `bottleneck_cache.ComputeFn` that runs `module` on images `paths`.

  Args:
    paths: image files.
    module: the feature module.
    batch_size: images per module call.
    reasons: if given, filled with {index into paths: why it is unusable}
      for the images that no decoder could use.
    max_pixels: images whose header declares more decoded pixels than
      this, or whose data ends early, are not decoded (reason recorded);
      files larger than image_header.max_file_bytes(max_pixels) not read.
    boxes: None for whole images, else float32 [len(paths), 4], the crop of
      each (see images.decode_and_resize).
    digests: None, or the SHA-256 hex digest of each path (its cache key):
      each file is read once and only bytes with that digest are used.
  """
  size = module.input_size
  reasons = {} if reasons is None else reasons
  box_table = None if boxes is None else tf.constant(boxes, tf.float32)

  def load(index, contents):
    if box_table is None:  # the projector's thumbnails from these pixels
      return index, thumbnails.decode_and_resize(contents, size, index, paths)
    return index, images_lib.decode_and_resize(
        contents, size, tf.gather(box_table, index))

  def compute(missing: Sequence[int]):
    # One bounded read per file: hashed, header-checked and decoded bytes
    # are the same (a few KB can declare gigapixels: retrain.image_header).
    dataset = image_batches(
        read_images(missing, paths, digests, size, max_pixels, reasons),
        load, batch_size)
    done = set()
    for indices, vectors in grouped(run_module(module, dataset)):
      done.update(indices.tolist())
      yield indices, vectors
    # Second chance, one file at a time, for what TensorFlow rejected
    # (Pillow: TIFF and rarities): few files, so the pass above stays fast.
    pending_indices, pending_images = [], []
    for i in [int(i) for i in missing]:
      if i in done or i in reasons:
        continue
      try:
        contents = read_checked(paths[i], None if digests is None else
                                digests[i], size, max_pixels)
        pending_images.append(images_lib.decode_bytes(
            contents, size, paths[i], max_pixels,
            box=None if boxes is None else boxes[i]))
        pending_indices.append(i)
      except ImageError as e:
        reasons[i] = e.reason
      if len(pending_indices) == batch_size:
        yield (np.array(pending_indices),
               module.call(tf.stack(pending_images)).numpy())
        pending_indices, pending_images = [], []
    if pending_indices:
      yield (np.array(pending_indices),
             module.call(tf.stack(pending_images)).numpy())

  return compute


def _cache_error(error: Exception) -> OutputError:
  """A cache problem (full disk, unwritable folder) as a user error."""
  return OutputError(f'bottleneck_dir: {error}', fields=('bottleneck_dir',))


def cache_keys(paths: Sequence[str], store: bottleneck_cache.BottleneckStore,
                key_suffixes: Optional[Sequence[str]],
                max_pixels: int = image_header.MAX_IMAGE_PIXELS):
  """(cache key or OSError of each path, indices of the readable paths,
  (path, reason) of the unreadable ones). Files larger than
  image_header.max_file_bytes(max_pixels) are unreadable (never read)."""
  # The memo lives at the cache root: file digests do not depend on the
  # module, so every namespace shares it.
  return content_keys(paths, os.path.dirname(store.directory), key_suffixes,
                      max_pixels)


def content_keys(paths: Sequence[str], cache_root: str,
                 key_suffixes: Optional[Sequence[str]],
                 max_pixels: int = image_header.MAX_IMAGE_PIXELS):
  """cache_keys with the cache's root folder instead of a store: needs no
  module, so a run hashes its files before loading one. The indices of the
  readable paths are int64 [m]."""
  max_bytes = image_header.max_file_bytes(max_pixels)
  # The bytes read to hash a file are kept for the bottleneck pass (up to
  # kept.BUDGET), which then does not open it again.
  kept.forget()
  memo = bottleneck_cache.DigestMemo(
      cache_root, kept.keeping(lambda path: walk_lib.open_file(path,
                                                               max_bytes)))
  found, errors = _hash_compact(paths, memo)
  # The memo (72 bytes a file) goes before the hex strings (112 each) are
  # made: both at once were the peak of hashing a million files.
  del memo
  phases_lib.trim_heap()
  digests = _hex_digests(found, errors)
  del found
  # int64 [n readable]: 8 bytes an image, not a list of Python ints (36).
  readable = np.ones(len(digests), bool)
  readable[list(errors)] = False
  readable = np.flatnonzero(readable)
  failures = [(paths[i], images_lib.os_error_reason(paths[i], errors[i]))
              for i in sorted(errors)]
  if key_suffixes is not None:
    digests = [d if isinstance(d, OSError) else d + suffix
               for d, suffix in zip(digests, key_suffixes, strict=True)]
  return digests, readable, failures


def copies_note(copies: int) -> str:
  """'; 3 images are copies (same bytes) of others, computed once' or ''."""
  if not copies:
    return ''
  return (f'; {names.plural(copies, "image")} '
          f'{"is a copy" if copies == 1 else "are copies"} (same bytes) of '
          'others, computed once')


def _announce(keys: Sequence[str], store: bottleneck_cache.BottleneckStore,
              module: FeatureModule, name: str) -> int:
  """How many distinct `keys` the cache lacks; says so before the slow
  part and checks there is room for them (a clean error if not)."""
  missing_count = len({k for k in keys if k not in store})
  if not missing_count:
    return 0
  logging.info(
      'Computing bottlenecks%s for %s (%d found in the cache %s%s). This '
      'is the slow part, done once: later runs read them from the cache.',
      f' of {name}' if name else '', names.plural(missing_count, 'image'),
      len(set(keys)) - missing_count, store.directory,
      copies_note(len(keys) - len(set(keys))))
  try:  # Full disk: checked before, and a clean error if it fills anyway.
    bottleneck_cache.check_free_space(
        store.directory, bottleneck_cache.bytes_needed(
            missing_count, module.output_dim, len(store)))
  except bottleneck_cache.CacheError as e:
    raise _cache_error(e) from e
  return missing_count


@dataclasses.dataclass(frozen=True)
class PassOptions:
  """How one compute_bottlenecks pass reads, reports and returns.

  Attributes:
    max_pixels: the largest decoded image, in pixels (see make_compute_fn).
    progress_interval: seconds between progress lines.
    name: the module's name in the progress lines (an ensemble's member;
      '' for a single module).
    load_vectors: False leaves `vectors` empty ([0, D]); the caller reads
      them from the cache later (retrain/steps/streamed.py, past the memory
      budget).
  """
  max_pixels: int = image_header.MAX_IMAGE_PIXELS
  progress_interval: float = 5.0
  name: str = ''
  load_vectors: bool = True


def compute_bottlenecks(paths: Sequence[str], module: FeatureModule,
                        store: bottleneck_cache.BottleneckStore,
                        batch_size: int,
                        options: PassOptions = PassOptions(),
                        boxes: Optional[np.ndarray] = None,
                        key_suffixes: Optional[Sequence[str]] = None,
                        keyed: Optional[tuple] = None) -> Bottlenecks:
  """Vectors of `paths`, from the cache where possible.

  Args:
    paths: image files.
    module: the feature module; vectors have length module.output_dim.
    store: the cache namespace for this module (see cache_namespace).
    batch_size: images per module call.
    options: the pixel limit, progress lines and whether to load the
      vectors (PassOptions).
    boxes: None for whole images, else float32 [n, 4], the crop of each
      path (--crop_to_boxes; retrain.data.boxes).
    key_suffixes: with boxes, n strings naming each crop (box and margin),
      appended to the file's content hash in its cache key and in `digests`.
    keyed: what cache_keys(paths, ..., key_suffixes) returned, when the
      caller hashed the files already (an ensemble: once for all members).
  """
  max_pixels = options.max_pixels
  digests, readable, failures = (keyed if keyed is not None else
                                 cache_keys(paths, store, key_suffixes,
                                            max_pixels))
  failures = list(failures)  # appended to below; keyed may be shared
  keys = [digests[i] for i in readable]
  missing_count = _announce(keys, store, module, options.name)
  if missing_count and module.prepare is not None:
    module.prepare()  # before the clock of the progress line starts
  progress = Progress('Bottlenecks', missing_count,
                      interval=options.progress_interval)
  reasons = {}
  compute = make_compute_fn([paths[i] for i in readable], module, batch_size,
                            reasons, max_pixels,
                            None if boxes is None else boxes[readable],
                            [key[:64] for key in keys])
  try:
    vectors, ok_readable, stats = store.get_or_compute(
        keys, compute, on_batch=progress.update, load=options.load_vectors)
  except bottleneck_cache.CacheError as e:
    raise _cache_error(e) from e
  if missing_count:
    progress.finish()

  ok = np.zeros(len(paths), dtype=bool)
  ok[np.asarray(readable, dtype=np.int64)[ok_readable]] = True
  for k in np.flatnonzero(~ok_readable):
    i = readable[k]
    reason = reasons.get(int(k)) or _decode_error(
        paths[i], module.input_size, None if boxes is None else boxes[i],
        max_pixels, keys[k][:64])
    failures.append((paths[i], reason))
  for path, reason in failures:
    logging.warning('Skipping %s: %s', path, reason)
  return Bottlenecks(vectors=vectors, ok=ok, failures=failures, stats=stats,
                     digests=[None if isinstance(d, OSError) else d
                              for d in digests])
