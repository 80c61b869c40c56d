"""The data and network of one kind of fine-tuning, ready to train.

`lite_plan`: the top of a bundled EfficientNet-Lite (of each chosen member
of an ensemble of them) on activations cached at the cut;
`hub_plan`: any other module whole, through hub.KerasLayer, on images
streamed from disk. Each returns a `Plan`: the network and its batches of
training (by epoch), validation and test items.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.bottlenecks import distort as distort_lib
from retrain.features import efficientnet_lite, presets
from retrain.features import ensemble as ensemble_lib
from retrain.finetune import activations as activations_lib
from retrain.finetune import hub_full
from retrain.finetune import lite as lite_lib


def bundled_variant(handle: str) -> Optional[efficientnet_lite.Variant]:
  """The EfficientNet-Lite variant of a bundled preset name, else None."""
  preset = presets.PRESETS.get(handle)
  if preset is None or not preset.bundled:
    return None
  return efficientnet_lite.get_variant(preset.name)


def tuned_members(spec: str, members: Sequence[str]) -> list:
  """The handles of the ensemble `members` whose tops are fine-tuned:
  `spec` (fine_tune_members) "" the first, "all" every one, else those it
  names; a single module (one member) is always fine-tuned."""
  if len(members) == 1:
    return list(members)
  if not spec.strip():
    return list(members[:1])
  if spec.strip() == 'all':
    return list(members)
  return [h.strip() for h in spec.split(',') if h.strip()]


def _array_batches(x, y: np.ndarray, batch_size: int,
                   order: Optional[np.ndarray] = None):
  """Batches (x, y int64 [b]) in `order`; x an array, or a tuple of arrays
  (one per ensemble member) batched alike."""
  order = np.arange(len(y)) if order is None else order
  for start in range(0, len(order), batch_size):
    idx = np.sort(order[start:start + batch_size])
    batch = (tuple(tf.constant(a[idx]) for a in x) if isinstance(x, tuple)
             else tf.constant(x[idx]))
    yield batch, tf.constant(y[idx], tf.int64)


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([int(seed) & 0x7FFFFFFF, epoch]).permutation(n)


@dataclasses.dataclass(frozen=True)
class Images:
  """The images fine-tuning reads.

  Attributes:
    paths: the usable images' files; keys: their content hashes.
    y: int64 [len(paths)] class ids.
    split: train, validation, test index arrays into paths.
  """
  paths: Sequence[str]
  keys: Sequence[str]
  y: np.ndarray
  split: object


@dataclasses.dataclass
class Plan:
  """One kind of fine-tuning, ready to train: the network (logits,
  features, top_variables, final_weights/biases), its batches (train by
  epoch, validation, test, and the training images once without copies:
  originals), steps per epoch, what it is (for the metadata), the seconds
  its data took and the rows (indices into the paths) of the 'train'
  (originals), 'validation' and 'test' items its batches hold, in
  order."""
  network: tf.Module
  train_batches: Callable
  validation_batches: Callable
  test_batches: Callable
  steps: int
  what: dict
  timings: dict
  rows: dict
  originals: Optional[Callable] = None


def _lite_networks(config, members, head, tuned: Sequence[str]) -> tuple:
  """(nets, described): per member, its LiteNetwork cut at
  fine_tune_from (or a FixedMember when `tuned` leaves it out) and what
  it is, for the metadata."""
  nets, described = [], []
  for member in members:
    variant = bundled_variant(member.handle)
    weights = efficientnet_lite.load_folded_weights(variant)
    if member.handle not in tuned:
      nets.append(lite_lib.FixedMember(weights))
      described.append({'module': variant.name, 'fine_tuned': False})
      logging.info('%s is not fine-tuned (fine_tune_members): its features '
                   'stay as they are.', variant.title)
      continue
    block = lite_lib.check_boundary(config.finetune.fine_tune_from, weights.blocks,
                                    variant.title)
    head_args = ((head.weights, head.biases) if len(members) == 1 else
                 (None, None))
    nets.append(lite_lib.LiteNetwork(weights, block, *head_args,
                                     config.finetune.fine_tune_dropout))
    described.append({'module': variant.name, 'fine_tuned': True,
                      'from_block': block,
                      'blocks': len(weights.blocks),
                      'activation_shape': list(nets[-1].activation_shape)})
    logging.info('Fine-tuning %s from block %d on: activations of %dx%dx%d '
                 'entering it are computed once and cached.', variant.title,
                 block, *nets[-1].activation_shape)
  return nets, described


def lite_plan(config, distortions, module, head, images: Images,
              fixed=None) -> Plan:
  """The top of a bundled EfficientNet-Lite (of each member of an ensemble
  of them that fine_tune_members names), on cached activations. `fixed`:
  the run.FixedFeatures the members left out train on."""
  members = ensemble_lib.members(module)
  tuned = tuned_members(config.finetune.fine_tune_members, [m.handle for m in members])
  nets, described = _lite_networks(config, members, head, tuned)
  started = time.monotonic()
  train_x, train_y, subsets = _lite_data(config, members, nets, images,
                                         distortions, fixed)
  rows = {name: subset[2] for name, subset in subsets.items()}
  subsets = {name: subset[:2] for name, subset in subsets.items()}
  if len(members) == 1:
    network = nets[0]
    what = {k: v for k, v in described[0].items() if k != 'fine_tuned'}
    what['kind'] = 'top of EfficientNet-Lite on cached activations'
    train_x = train_x[0]
    subsets = {name: (x[0], y) for name, (x, y) in subsets.items()}
  else:
    network = lite_lib.EnsembleNetwork(nets, head.weights, head.biases,
                                       config.finetune.fine_tune_dropout)
    what = {'kind': 'top of each EfficientNet-Lite member on cached '
                    'activations', 'module': module.handle,
            'from_block': config.finetune.fine_tune_from, 'fine_tuned_members': tuned,
            'members': described}
  batch = config.finetune.fine_tune_batch_size
  return Plan(
      network=network,
      train_batches=lambda epoch: _array_batches(
          train_x, train_y, batch,
          _epoch_order(config.head.random_seed, epoch, len(train_y))),
      validation_batches=lambda: _array_batches(*subsets['validation'],
                                                batch * 4),
      test_batches=lambda: _array_batches(*subsets['test'], batch * 4),
      steps=math.ceil(len(train_y) / batch), what=what,
      timings={'activations': time.monotonic() - started}, rows=rows,
      originals=lambda: _array_batches(*subsets['train'], batch * 4))


def hub_plan(config, distortions, module, head, images: Images) -> Plan:
  """The whole module through hub.KerasLayer, on images streamed."""
  paths, keys, y, split = images.paths, images.keys, images.y, images.split
  network = hub_full.HubNetwork(module, head.weights, head.biases,
                                config.finetune.fine_tune_dropout)
  train_paths = [paths[i] for i in split.train]
  train_y = y[split.train]
  seeds = None
  if distortions is not None:
    seeds = np.array([distort_lib.copy_seed(config.head.random_seed, keys[i], 0)
                      for i in split.train], np.int64)
  size, batch = module.input_size, config.finetune.fine_tune_batch_size

  def train_batches(epoch):
    # Other distortions each epoch, the same ones for a resumed epoch.
    epoch_seeds = None if seeds is None else seeds ^ np.int64(epoch)
    return hub_full.image_batches(
        train_paths, train_y, size, batch,
        _epoch_order(config.head.random_seed, epoch, len(train_paths)), distortions,
        epoch_seeds)

  def subset_batches(rows):
    return lambda: hub_full.image_batches([paths[i] for i in rows], y[rows],
                                          size, batch)

  hub_full.log_estimate(
      module.handle, hub_full.estimate_epoch_seconds(
          network, batch, len(train_paths)), config.finetune.fine_tune_epochs,
      len(train_paths))
  return Plan(
      network=network, train_batches=train_batches,
      validation_batches=subset_batches(split.validation),
      test_batches=subset_batches(split.test),
      steps=math.ceil(len(train_paths) / batch),
      what={'kind': 'whole module through hub.KerasLayer(trainable=True)',
            'module': module.handle, 'from_block': None}, timings={},
      rows={name: np.asarray(getattr(split, name), np.int64)
            for name in ('train', 'validation', 'test')},
      originals=subset_batches(split.train))


def _member_bottom(config, member, net, size=None) -> tuple:
  """(member at `size`, its bottom as a FeatureModule, the Float16Store of
  its plain activations): see _member_activations."""
  shape = net.activation_shape
  own = tuple(member.input_size)
  size = own if size is None else tuple(size)
  member = ensemble_lib.at_ensemble_size(member, size)

  def bottom(images):
    return net.bottom(images if size == own else
                      ensemble_lib.area_resize(images, size, own))
  bottom = activations_lib.bottom_module(member, tf.function(bottom), shape,
                                         size)
  store = activations_lib.Float16Store(
      config.cache.bottleneck_dir, activations_lib.namespace(member, net.block, shape))
  return member, bottom, store


def activation_passes(config, module) -> list:
  """[(bottom FeatureModule, Float16Store)] of each member whose plain
  activations --fine_tune will read from the cache (bundled
  EfficientNet-Lite members it tunes; [] without fine_tune or for other
  modules), so that the bottleneck pass computes them from the pixels it
  decodes anyway: fine-tuning then finds them cached and reads no image.
  The same bottoms, sizes and namespaces as _member_activations."""
  members = ensemble_lib.members(module)
  if not config.finetune.fine_tune or any(
      bundled_variant(m.handle) is None for m in members):
    return []
  tuned = tuned_members(config.finetune.fine_tune_members,
                        [m.handle for m in members])
  size = ensemble_lib.largest_size(members)
  passes = []
  for member in members:
    if member.handle not in tuned:
      continue
    variant = bundled_variant(member.handle)
    weights = efficientnet_lite.load_folded_weights(variant)
    block = lite_lib.check_boundary(config.finetune.fine_tune_from,
                                    weights.blocks, variant.title)
    net = lite_lib.LiteNetwork(weights, block, None, None,
                               config.finetune.fine_tune_dropout)
    passes.append(_member_bottom(config, member, net, size)[1:])
  return passes


def _member_activations(config, member, net, images: Images, distortions,
                        size=None):
  """(plain, copies or None): the Activations of every image, and of the
  distorted copies of the training images (image-major, copy-minor), at
  `net`'s cut of `member`. `size`: an ensemble's input size (None: the
  member's own); the images are decoded at it and area-resized to the
  member's size, as the exported ensemble does
  (ensemble_lib.at_ensemble_size, whose namespace they are cached in)."""
  paths, keys, train_idx = images.paths, images.keys, images.split.train
  shape = net.activation_shape
  member, bottom, store = _member_bottom(config, member, net, size)
  plain = activations_lib.plain_activations(
      paths, keys, bottom, store, shape, config.cache.bottleneck_batch_size)
  logging.info('Activations of %s: %d reused from the cache, %d computed.',
               member.handle, plain.stats.reused, plain.stats.computed)
  if distortions is None:
    return plain, None
  dstore = activations_lib.Float16Store(
      config.cache.bottleneck_dir, activations_lib.distorted_namespace(
          member, net.block, shape, distortions, config.head.random_seed))
  copies, _ = activations_lib.distorted_activations(
      [paths[i] for i in train_idx], [keys[i] for i in train_idx], bottom,
      dstore, shape, distortions, activations_lib.Copies(
          config.distort.distorted_copies, config.head.random_seed,
          config.cache.bottleneck_batch_size))
  return plain, copies


def _fixed_activations(fixed, columns: slice,
                       train_count: int, copies: int, distortions):
  """(plain, copies or None) as _member_activations returns them, for a
  member that is not fine-tuned: its columns of the frozen features."""
  if fixed is None:
    raise ValueError('fine_tune_members leaves a member as it is, so '
                     'fine_tune needs the frozen features (fixed=).')
  plain = activations_lib.Activations(
      fixed.vectors[:, columns], np.ones(len(fixed.vectors), bool), None)
  if distortions is None:
    return plain, None
  made = fixed.copies
  if made is None:
    raise ValueError('Distortions are on, so fine_tune needs the distorted '
                     'copies\' frozen features (FixedFeatures.copies).')
  items = made.source * copies + made.copy
  ok = np.zeros(train_count * copies, bool)
  ok[items] = True
  return plain, activations_lib.Activations(
      made.vectors[np.argsort(items), columns], ok, None)


def _aligned(found: Sequence[activations_lib.Activations]):
  """(ok bool [n]: items every member has, rows: per member int [n], the
  row of its values holding item i)."""
  ok = np.logical_and.reduce([a.ok for a in found])
  return ok, [np.cumsum(a.ok) - 1 for a in found]


def _lite_data(config, members, nets, images: Images, distortions, fixed=None):
  """(train_x, train_y, {'train', 'validation', 'test': (x, y, rows)});
  each x a tuple with one float16 array [n, h, w, c] per member (a fixed
  member's: float32 vectors [n, D]); train_x's rows: originals then
  copies, the subsets' 'train' the originals alone; rows int64 index
  `images.paths`. An image (or copy) that some member could not read
  (already skipped for bottlenecks, so rare) is left out for all."""
  y, split = images.y, images.split
  train_idx = np.asarray(split.train)
  found, offset = [], 0
  size = ensemble_lib.largest_size(members)
  for member, net in zip(members, nets, strict=True):
    columns = slice(offset, offset + member.output_dim)
    offset += member.output_dim
    found.append(
        _fixed_activations(fixed, columns, len(train_idx), config.distort.distorted_copies,
                           distortions)
        if isinstance(net, lite_lib.FixedMember) else
        _member_activations(config, member, net, images, distortions, size))
  ok, rows = _aligned([plain for plain, _ in found])

  def subset(indices):
    indices = np.asarray(indices, np.int64)
    indices = indices[ok[indices]]
    return tuple(plain.values[r[indices]] for (plain, _), r in
                 zip(found, rows, strict=True)), y[indices], indices

  subsets = {name: subset(getattr(split, name))
             for name in ('train', 'validation', 'test')}
  train_x, train_y, _ = subsets['train']
  if distortions is not None:
    copies_ok, copy_rows = _aligned([copies for _, copies in found])
    items = np.flatnonzero(copies_ok)
    train_x = tuple(np.concatenate([x, copies.values[r[items]]])
                    for x, (_, copies), r in zip(train_x, found, copy_rows,
                                                 strict=True))
    source = train_idx[items // config.distort.distorted_copies]
    train_y = np.concatenate([train_y, y[source]])
  return train_x, train_y, subsets
