"""Ensembles: several feature modules whose vectors are concatenated.

`--tfhub_module` takes a comma-separated list of modules (preset names,
handles or folders) or an ensemble preset name (ENSEMBLE_PRESETS, e.g.
`efficientnet_lite0+lite2`). The head then trains on the members' vectors
side by side: float32 [batch, D1 + D2 + ...], member order as given.

Export: the ensemble is one `FeatureModule` whose `obj` takes float32 images
[batch, H, W, 3] in [0, 1] at the largest member's size and resizes them
inside the graph to each smaller member's size by area averaging
(`area_resize`: gathers and matrix products, so TFLite and frozen graphs
carry it with builtin ops), then concatenates the members' vectors.
Everything downstream (the SavedModel's float and bytes signatures, the
frozen graph, TFLite float and quantized, label_image) sees one module and
works unchanged; each image is decoded once.

Training computes exactly that: each member runs as `at_ensemble_size`
makes it, on the image decoded at the largest member's size and, for a
smaller member, area-resized by the same `area_resize`, so the head trains
on the vectors the export gives. A member whose size is the largest keeps
the cache namespace a single-module run of it uses (adding it to an
ensemble reuses those vectors); a smaller member's vectors differ from a
single-module run's, so its namespace also names the ensemble's input size
(ResizedMember.identity) and the two are never mixed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.features import modules as features
from retrain.features.ensemble_presets import (  # noqa: F401 (re-exported)
  ENSEMBLE_PRESETS,
  SEPARATOR,
  member_handles,
)
from retrain.features.modules import FeatureModule


# Plain numpy, run as it is when a tf.function traces the ensemble: left to
# AutoGraph, its two Python loops cost one converted call per pixel pair
# (about 19,000 for the default ensemble, 8 % of a warm run's export).
@tf.autograph.experimental.do_not_convert
def area_matrix(size_in: int, size_out: int) -> np.ndarray:
  """float32 [size_out, size_in]: row o averages the input pixels under
  output pixel o, each weighted by how much of it the box covers (what
  tf.image.resize(method='area') does along one axis)."""
  scale = size_in / size_out
  matrix = np.zeros((size_out, size_in), np.float64)
  for o in range(size_out):
    start, stop = o * scale, (o + 1) * scale
    for i in range(int(np.floor(start)), min(size_in, int(np.ceil(stop)))):
      matrix[o, i] = min(stop, i + 1) - max(start, i)
  return (matrix / scale).astype(np.float32)


def full_area_resize(images: tf.Tensor, size_in: Tuple[int, int],
                     size_out: Tuple[int, int]) -> tf.Tensor:
  """area_resize by its definition: float32 [b, H, W, C] -> [b, h, w, C]
  (h <= H, w <= W), each axis one matrix product over every input pixel.
  The reference area_resize's bits are checked against (tests); 4 times
  slower eagerly."""
  rows = tf.constant(area_matrix(size_in[0], size_out[0]))  # [h, H]
  cols = tf.constant(area_matrix(size_in[1], size_out[1]))  # [w, W]
  # [b, H, W, C] -> [b, C, H, W]: then both products are plain matmuls.
  x = tf.transpose(images, [0, 3, 1, 2])
  x = tf.matmul(tf.matmul(rows, x), cols, transpose_b=True)
  return tf.transpose(x, [0, 2, 3, 1])


# Output rows per block of area_resize (8 to 32 ran alike, 64 slower).
_BAND_ROWS = 16


@functools.lru_cache(maxsize=None)
def _bands(size_in: int, size_out: int) -> Tuple[np.ndarray, np.ndarray]:
  """area_matrix(size_in, size_out) cut into blocks of _BAND_ROWS output
  rows: (float32 [blocks, _BAND_ROWS, K], each block's weights on K
  consecutive input pixels that hold all its non-zero ones; int32
  [blocks, K], those input pixels). Rows past size_out are zeros."""
  matrix = area_matrix(size_in, size_out)
  count = -(-size_out // _BAND_ROWS)
  spans = []
  for b in range(count):
    used = np.flatnonzero(matrix[b * _BAND_ROWS:(b + 1) * _BAND_ROWS].any(0))
    spans.append((int(used[0]), int(used[-1]) + 1))
  width = max(stop - start for start, stop in spans)
  weights = np.zeros((count, _BAND_ROWS, width), np.float32)
  pixels = np.zeros((count, width), np.int32)
  for b, (start, _) in enumerate(spans):
    start = min(start, size_in - width)
    part = matrix[b * _BAND_ROWS:(b + 1) * _BAND_ROWS, start:start + width]
    weights[b, :len(part)] = part
    pixels[b] = np.arange(start, start + width)
  return weights, pixels


def area_resize(images, size_in: Tuple[int, int],
                size_out: Tuple[int, int]) -> tf.Tensor:
  """float32 [b, H, W, C] -> [b, h, w, C] by area averaging (h <= H,
  w <= W; what tf.image.resize(method='area') does), as matrix products
  that TFLite runs with builtin ops (GATHER, BATCH_MATMUL, RESHAPE,
  TRANSPOSE).

  The one resize of an ensemble's smaller members: the bottleneck pass,
  the exported graphs (float, int8, TFLite) and the heat maps all call
  it. Each output pixel sums over the few input pixels its box covers (a
  block of _BAND_ROWS output rows reads a band of about
  1.2 x _BAND_ROWS + 2 input rows), not over all of them as
  full_area_resize does, and the rows are summed on the images as they
  lie (no transpose): about half full_area_resize's CPU time eagerly
  (260 -> 224 and -> 240, batch 8). The same non-zero products in the
  same order; only zero products are left out, so a matmul kernel that
  sums each output's products in order gives full_area_resize's bits (the
  tests check it on this CPU).
  """
  images = tf.convert_to_tensor(images, tf.float32)
  (rows, row_pixels), (cols, col_pixels) = (_bands(size_in[0], size_out[0]),
                                            _bands(size_in[1], size_out[1]))
  batch, channels = tf.shape(images)[0], tf.shape(images)[3]
  # Rows on [b, H, W*C] as it is (no transpose): one matmul per block.
  x = tf.reshape(images, [batch, size_in[0], -1])
  x = tf.matmul(rows, tf.gather(x, row_pixels, axis=1))  # [b, blocks, R, W*C]
  x = tf.reshape(x, [batch, -1, size_in[1], channels])[:, :size_out[0]]
  # Columns on [W, b*h*C].
  x = tf.reshape(tf.transpose(x, [2, 0, 1, 3]), [size_in[1], -1])
  x = tf.reshape(tf.matmul(cols, tf.gather(x, col_pixels)),
                 [-1, batch, size_out[0], channels])[:size_out[1]]  # [w, b, h, C]
  return tf.transpose(x, [1, 2, 0, 3])


def concatenated(calls, sizes, input_size: Tuple[int, int],
                 images: tf.Tensor) -> tf.Tensor:
  """Each member's vectors of `images` (float32 [b, H, W, 3] at
  input_size, the largest), area-resized to the member's own size first
  when smaller, side by side: float32 [b, sum of D], member order.

  Args:
    calls: per member, images at its size -> float32 [b, D_i].
    sizes: per member, its (height, width).
  """
  vectors = []
  for call, size in zip(calls, sizes, strict=True):
    x = images if tuple(size) == tuple(input_size) else area_resize(
        images, input_size, size)
    vectors.append(call(x))
  return tf.concat(vectors, axis=1)


class Ensemble(tf.Module):
  """Members side by side: images at the largest size -> concatenated
  vectors float32 [batch, sum of D]."""

  def __init__(self, members: Sequence[FeatureModule]):
    super().__init__(name='ensemble')
    self.members = [m.obj for m in members]
    self._sizes = [tuple(m.input_size) for m in members]
    self.input_size = largest_size(members)
    height, width = self.input_size
    # A Python loop over the members: nothing for AutoGraph to convert.
    self._call = tf.function(self._concatenated, input_signature=[
        tf.TensorSpec([None, height, width, 3], tf.float32)], autograph=False)

  def _concatenated(self, images):
    return concatenated(self.members, self._sizes, self.input_size, images)

  def __call__(self, images):
    return self._call(images)


@dataclasses.dataclass
class ResizedMember(FeatureModule):
  """A member as its ensemble runs it (see at_ensemble_size): `call` takes
  images at the ensemble's `input_size` and area-resizes them to
  `member_size`, the member's own, first."""
  member_size: Tuple[int, int] = (0, 0)

  def identity(self) -> dict:
    """The member's own identity plus the ensemble's input size: its
    vectors differ from a single-module run's, so never share a cache
    namespace with them."""
    return dict(super().identity(), input_size=list(self.member_size),
                ensemble_input_size=list(self.input_size))


def at_ensemble_size(member: FeatureModule, input_size: Tuple[int, int]
                     ) -> FeatureModule:
  """`member` as an ensemble whose images are at `input_size` (its
  largest member's) runs it: the member itself when that is its own size,
  else a ResizedMember whose call is member.call(area_resize(images)),
  exactly what the exported ensemble computes (concatenated), so the
  head trains on the vectors the export gives. `prepare` and
  `parallel_calls` follow the member's."""
  own = tuple(member.input_size)
  size = tuple(input_size)
  if own == size:
    return member

  def call(images):
    return member.call(area_resize(images, size, own))

  def prepare():
    if member.prepare is not None:
      member.prepare()
    resized.parallel_calls = member.parallel_calls

  resized = features.derive(member, ResizedMember, member_size=own,
                            input_size=size, call=call, prepare=prepare)
  return resized


def largest_size(members: Sequence[FeatureModule]) -> Tuple[int, int]:
  """The (H, W) of the member with the most pixels."""
  return max((tuple(m.input_size) for m in members),
             key=lambda s: (s[0] * s[1], s))


@dataclasses.dataclass
class EnsembleModule(FeatureModule):
  """A FeatureModule made of `members` (see the module docstring)."""
  members: Tuple[FeatureModule, ...] = ()

  def identity(self) -> dict:
    return {'ensemble': [m.identity() for m in self.members],
            'input_size': list(self.input_size),
            'output_dim': self.output_dim}


def with_members(module: FeatureModule,
                 chosen: Sequence[FeatureModule]) -> FeatureModule:
  """The ensemble `module` with `chosen` (its members, each e.g. at another
  precision) in their place: its call concatenates theirs, its obj is
  left to load on first use (features.derive)."""
  chosen = tuple(chosen)
  sizes = [tuple(c.input_size) for c in chosen]

  def call(images):
    # Each member's call read when called: a float member loads on first use.
    return concatenated([c.call for c in chosen], sizes,
                        tuple(module.input_size), images)
  return features.derive(module, members=chosen, call=call)


def members(module: FeatureModule) -> Tuple[FeatureModule, ...]:
  """The modules whose vectors `module` gives, in order: an ensemble's
  members, or (module,) for a single module (an ensemble of one)."""
  return tuple(getattr(module, 'members', None) or (module,))


def describe_modules(module: FeatureModule) -> List[dict]:
  """One entry per member module (one for a plain module), for metadata."""
  return [{'handle': m.handle, 'resolved': m.resolved,
           'fingerprint': m.fingerprint,
           'input_size': list(m.input_size), 'output_dim': m.output_dim}
          for m in members(module)]


def check_handles(spec: str, image_size: Optional[int] = None,
                  trust: bool = False) -> Tuple[str, ...]:
  """features.check_handle for each module `spec` names; cheap (nothing
  is loaded). Returns the handles (member_handles), for `load`.

  Raises:
    ModuleError: a malformed spec, or a handle load would refuse.
  """
  handles = tuple(member_handles(spec))
  for handle in handles:
    features.check_handle(handle, image_size, trust)
  return handles


def _ensemble_of(members: Sequence[FeatureModule]):
  """(obj, call) of an EnsembleModule: an Ensemble of the members' loaded
  objects (each loaded now if not yet)."""
  obj = Ensemble(members)
  return obj, obj


def load(spec: str, image_size: Optional[int] = None,
         cache_dir: Optional[str] = None, trust: bool = False,
         checked: Optional[Sequence[str]] = None) -> FeatureModule:
  """The module(s) `--tfhub_module` names: a FeatureModule for one, an
  EnsembleModule for several (see member_handles and load_module).
  checked: what check_handles returned for `spec` in this run (None: the
  spec is parsed and each module checked here)."""
  handles = member_handles(spec) if checked is None else list(checked)
  known = checked is not None
  if len(handles) == 1:
    return features.load_module(handles[0], image_size, cache_dir, trust,
                                checked=known)
  members = tuple(features.load_module(h, image_size, cache_dir, trust,
                                       checked=known)
                  for h in handles)
  fingerprint = hashlib.sha256(
      ''.join(m.fingerprint for m in members).encode()).hexdigest()[:32]
  module = EnsembleModule(
      handle=SEPARATOR.join(m.handle for m in members),
      resolved=SEPARATOR.join(m.resolved for m in members),
      path=members[0].path, fingerprint=fingerprint,
      input_size=largest_size(members),
      output_dim=sum(m.output_dim for m in members),
      loader=functools.partial(_ensemble_of, members), members=members)
  logging.info('Ensemble of %d modules (%s): input %dx%d, %d-d vectors.',
               len(members), module.handle, *module.input_size,
               module.output_dim)
  return module
