"""Augmentation that keeps the cache: distorted copies, computed once.

retrain.py's distortion flags switched its bottleneck cache off and ran the
module on every image of every training batch, one image at a time. Here
each *training* image gets K distorted copies (`--distorted_copies`), made
once inside the same batched tf.data pipeline as the plain bottlenecks and
stored in the bottleneck cache; training then samples from the originals and
their copies, and validation and test images are never distorted.

Cache: one namespace per (module, distortion settings, --random_seed), with
key `<image sha256>:<copy index>`. A re-run with the same settings computes
nothing, raising K computes only the new copies, and changing any setting or
the seed selects another namespace, so copies made with other settings are
never reused.

Determinism: copy c of an image is drawn with stateless random ops seeded
from (--random_seed, a hash of the image's content key and c) only, so it is
the same whichever batch or thread it is computed in.

The distortions, in the order applied (retrain.py's meanings for the first
four), on float32 [h, w, 3] images in [0, 1]:
  random_crop (%)       the image is enlarged by 1 + random_crop/100 ...
  random_scale (%)      ... times a factor drawn from [1, 1 + random_scale/100]
                        and an h x w window is cut at a random place;
  random_rotation (deg) rotated by an angle drawn from [-r, r] ...
  random_shift (%)      ... and shifted by up to this % of the width and of
                        the height, in one bilinear transform whose empty
                        corners are filled by reflection (not black, which
                        the module would see as content);
  flip_left_right       mirrored left-right with probability 1/2;
  random_brightness (%) multiplied by a factor drawn from [1 - b/100,
                        1 + b/100], then clipped to [0, 1] (the module's
                        input range; retrain.py did not clip).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

import bottleneck_cache
from retrain import image_header
from retrain import images as images_lib
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.common.progress import Progress
from retrain.errors import DatasetError
from retrain.features.modules import FeatureModule

# Bump when the distortion code changes what a copy looks like, so that old
# copies in users' caches are not mixed with new ones.
_VERSION = 'v1'


# Each entry: flag name, lowest and highest accepted value, why the bound.
_BOUNDS = (
    ('random_crop', 0.0, 100.0, 'a margin of more than 100% would crop away '
     'more than half of the image'),
    ('random_scale', 0.0, 100.0, 'more than doubling crops away more than '
     'half of the image'),
    ('random_brightness', 0.0, 100.0, 'more than 100% would make factors '
     'below zero'),
    ('random_rotation', 0.0, 180.0, 'angles are drawn from [-r, r] degrees'),
    ('random_shift', 0.0, 50.0, 'a larger shift moves most of the image out '
     'of the frame'),
)


def check_settings(distortions, copies: int) -> None:
  """Raises DatasetError naming the bad flag value and the accepted range.

  `distortions`: the run's config.distort (retrain.config.Distort: the six
  distortions in the units of their flags, and any()/describe()).
  """
  for name, low, high, why in _BOUNDS:
    value = getattr(distortions, name)
    if not (math.isfinite(value) and low <= value <= high):
      raise DatasetError(f'{name}={value} is out of range: use a value from '
                         f'{low:g} to {high:g} ({why}).',
                         fields=(name,))
  if copies < 0:
    raise DatasetError(f'distorted_copies={copies} must be 0 or more.',
                       fields=('distorted_copies',))
  if distortions.any() and copies == 0:
    raise DatasetError(
        'distorted_copies=0 with distortions set would distort '
        'nothing: give distorted_copies 1 or more, or set no distortion.',
        fields=('distorted_copies',))


def cache_namespace(module: FeatureModule, distortions,
                    seed: int) -> dict:
  """The cache namespace of distorted copies: module, settings (a
  config.distort) and seed."""
  return dict(bottlenecks_lib.cache_namespace(module), kind='distorted',
              distortions=distortions.describe(), random_seed=int(seed),
              distortion_version=_VERSION)


def copy_key(image_key: str, copy: int) -> str:
  """The cache key of copy `copy` of the image whose content key is given."""
  return f'{image_key}:{copy}'


def copy_seed(seed: int, image_key: str, copy: int) -> Tuple[int, int]:
  """The stateless seed pair of one copy: depends on nothing else."""
  digest = hashlib.sha256(f'{image_key}:{copy}'.encode('utf-8')).digest()
  # Two int64 halves that fit: the random ops take int64 seeds.
  return (int(seed) & 0x7FFFFFFFFFFFFFFF,
          int.from_bytes(digest[:8], 'little') & 0x7FFFFFFFFFFFFFFF)


def _transform_matrix(angle, dx, dy, h, w):
  """[8] projective transform (output -> input pixel) for a rotation by
  `angle` radians about the centre followed by a shift of (dx, dy) pixels."""
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
  # Output (x, y) comes from input R^-1 (x - c - d) + c.
  ox, oy = cx + dx, cy + dy
  a0, a1 = cos, sin
  b0, b1 = -sin, cos
  a2 = cx - a0 * ox - a1 * oy
  b2 = cy - b0 * ox - b1 * oy
  return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def rotate_and_shift(image: tf.Tensor, angle, dx, dy) -> tf.Tensor:
  """float32 [h, w, 3] rotated by `angle` radians about its centre (positive:
  clockwise as displayed, rows going down), then shifted right by dx and
  down by dy pixels; bilinear, corners filled by reflection. Same shape."""
  h, w = image.shape[0], image.shape[1]
  matrix = _transform_matrix(tf.cast(angle, tf.float32),
                             tf.cast(dx, tf.float32), tf.cast(dy, tf.float32),
                             float(h), float(w))
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=matrix[None],
      output_shape=tf.constant([h, w], tf.int32),
      fill_value=tf.constant(0.0), interpolation='BILINEAR',
      fill_mode='REFLECT')[0]


def distort_image(contents: tf.Tensor, size: Tuple[int, int], seed: tf.Tensor,
                  d, box=None) -> tf.Tensor:
  """One distorted copy of an encoded image.

  Args:
    contents: scalar string, the encoded image file.
    size: (h, w), the module's input size.
    seed: int64 [2], from copy_seed.
    d: the settings (a config.distort); distortions that are off cost
      nothing.
    box: None, or the crop (--crop_to_boxes) the copy is made of, float32
      [4] as for images.decode_and_resize.

  Returns:
    float32 [h, w, 3] in [0, 1]. With every setting off it equals
    images.decode_and_resize(contents, size).
  """
  h, w = size
  seeds = tf.random.experimental.stateless_split(seed, num=6)
  if d.random_crop or d.random_scale:
    enlarge = tf.constant(1.0 + d.random_crop / 100.0) * (
        tf.random.stateless_uniform([], seeds[0], 1.0,
                                    1.0 + d.random_scale / 100.0)
        if d.random_scale else 1.0)
    big_h = tf.maximum(h, tf.cast(tf.round(enlarge * h), tf.int32))
    big_w = tf.maximum(w, tf.cast(tf.round(enlarge * w), tf.int32))
    # Decoded straight at the enlarged size (antialiased), as retrain.py
    # resized the full image before cropping, so the window keeps detail.
    image = images_lib.decode_and_resize(contents, (big_h, big_w), box)
    image = tf.image.stateless_random_crop(image, [h, w, 3], seeds[1])
  else:
    image = images_lib.decode_and_resize(contents, size, box)
  if d.random_rotation or d.random_shift:
    angle = tf.random.stateless_uniform(
        [], seeds[2], -d.random_rotation, d.random_rotation) * (math.pi / 180)
    shift = tf.random.stateless_uniform(
        [2], seeds[3], -d.random_shift / 100.0, d.random_shift / 100.0)
    image = rotate_and_shift(image, angle, shift[0] * w, shift[1] * h)
  if d.flip_left_right:
    image = tf.image.stateless_random_flip_left_right(image, seeds[4])
  if d.random_brightness:
    factor = tf.random.stateless_uniform(
        [], seeds[5], 1.0 - d.random_brightness / 100.0,
        1.0 + d.random_brightness / 100.0)
    image = image * factor
  return tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), [h, w, 3])


def make_compute_fn(paths: Sequence[str], seeds: np.ndarray,
                    module: FeatureModule, d, batch_size: int,
                    boxes: Optional[np.ndarray] = None,
                    digests: Optional[Sequence[str]] = None):
  """A `bottleneck_cache.ComputeFn` over (image, copy) items.

  Args:
    paths: the image file of each item (one per copy).
    seeds: int64 [len(paths), 2], each item's copy_seed.
    boxes: None, or float32 [len(paths), 4], each item's crop.
    digests: None, or the SHA-256 hex digest of each item's file: each is
      read once, bounded, and only bytes with that digest are used
      (bottlenecks_lib.read_images).
  """
  size = module.input_size
  seed_table = tf.constant(np.asarray(seeds, np.int64).reshape(-1, 2))
  box_table = None if boxes is None else tf.constant(boxes, tf.float32)

  def load(index, contents):
    box = None if box_table is None else tf.gather(box_table, index)
    return index, distort_image(contents, size,
                                tf.gather(seed_table, index), d, box)

  def compute(missing: Sequence[int]):
    yield from bottlenecks_lib.run_module(
        module, bottlenecks_lib.image_batches(
            bottlenecks_lib.read_images(missing, paths, digests, size,
                                        image_header.MAX_IMAGE_PIXELS, {}),
            load, batch_size))

  return compute


@dataclasses.dataclass
class DistortedCopies:
  """Vectors of distorted copies of images.

  Attributes:
    vectors: float32 [m, D], one row per copy that could be made.
    source: int64 [m], for each row the index (into the `paths` given) of
      the image it is a copy of.
    stats: what the cache did.
    copy: int64 [m], for each row which copy of its image it is (its cache
      key is copy_key(image key, copy)).
  """
  vectors: np.ndarray
  source: np.ndarray
  stats: bottleneck_cache.Stats
  copy: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class CopyRecipe:
  """Which distorted copies to make.

  Attributes:
    distortions: the settings (a config.distort).
    copies: K, the copies of each training image (--distorted_copies).
    seed: --random_seed; with the image's key and the copy index it seeds
      each copy (copy_seed).
  """
  distortions: object
  copies: int
  seed: int


def compute_distorted(paths: Sequence[str], module: FeatureModule,
                      store: bottleneck_cache.BottleneckStore,
                      recipe: CopyRecipe, batch_size: int,
                      image_keys: Optional[Sequence[str]] = None,
                      load_vectors: bool = True,
                      boxes: Optional[np.ndarray] = None) -> DistortedCopies:
  """`recipe.copies` distorted copies of each image, from the cache where
  possible; a progress line every 5 seconds while computing.

  Args:
    paths: image files (the training images).
    module: the feature module; vectors have length module.output_dim.
    store: the namespace from cache_namespace(module, recipe.distortions,
      recipe.seed).
    recipe: the distortions, K copies per image and the seed.
    batch_size: images per module call.
    image_keys: the content keys of `paths` (bottleneck_cache.file_digest),
      if already known; computed otherwise.
    load_vectors: False leaves `vectors` empty (read later from the cache).
    boxes: None, or float32 [len(paths), 4]: copies of these crops (then
      image_keys must be the crops' keys).
  """
  distortions, copies, seed = recipe.distortions, recipe.copies, recipe.seed
  if image_keys is None:
    image_keys = [bottleneck_cache.file_digest(p) for p in paths]
  item_paths, item_source, keys, seeds = [], [], [], []
  for i, (path, key) in enumerate(zip(paths, image_keys)):
    for c in range(copies):
      item_paths.append(path)
      item_source.append(i)
      keys.append(copy_key(key, c))
      seeds.append(copy_seed(seed, key, c))
  seeds = np.asarray(seeds, dtype=np.int64).reshape(-1, 2)
  missing_count = len({k for k in keys if k not in store})
  if missing_count:
    logging.info(
        'Computing %d distorted copies (%d per training image; %d found in '
        'the cache %s). Each costs about as much as one bottleneck; this is '
        'done once, later runs with the same distortion settings read them '
        'from the cache.', missing_count, copies,
        len(set(keys)) - missing_count, store.directory)
  progress = Progress('Distorted copies', missing_count)
  compute = make_compute_fn(
      item_paths, seeds, module, distortions, batch_size,
      None if boxes is None else boxes[np.asarray(item_source, np.int64)],
      [image_keys[i][:64] for i in item_source])
  vectors, ok, stats = store.get_or_compute(keys, compute,
                                            on_batch=progress.update,
                                            load=load_vectors)
  if missing_count:
    progress.finish()
  source = np.asarray(item_source, dtype=np.int64)[ok]
  copy_index = np.tile(np.arange(copies, dtype=np.int64), len(paths))[ok]
  if stats.failed:
    logging.warning('%d distorted copies could not be made; training uses '
                    'the others.', stats.failed)
  return DistortedCopies(vectors=vectors, source=source, stats=stats,
                         copy=copy_index)


def training_copies(recipe: CopyRecipe, bottleneck_dir: str,
                    batch_size: int, module: FeatureModule,
                    paths: Sequence[str], image_keys: Sequence[str],
                    load_vectors: bool = True,
                    boxes: Optional[np.ndarray] = None
                    ) -> Optional[DistortedCopies]:
  """The distorted copies asked for, or None if no distortion is set.

  Args:
    recipe: the distortions, K copies per image and the seed.
    bottleneck_dir: the cache root; batch_size: images per module call.
    module: the feature module.
    paths, image_keys: the training images and their content keys.
    load_vectors: False leaves `vectors` empty (read later from the cache).
    boxes: None, or float32 [len(paths), 4], the crops (--crop_to_boxes).
  """
  if not recipe.distortions.any():
    return None
  store = bottleneck_cache.BottleneckStore(
      bottleneck_dir, cache_namespace(module, recipe.distortions, recipe.seed))
  copies = compute_distorted(
      paths, module, store, recipe, batch_size,
      image_keys=image_keys, load_vectors=load_vectors, boxes=boxes)
  logging.info('Distorted copies: %d reused from the cache, %d computed; '
               'training on %d originals and %d copies.', copies.stats.reused,
               copies.stats.computed, len(paths), len(copies.source))
  return copies
