"""Fine-tuning as a step of the pipeline: checks, data, training, results.

`check_config` runs before any slow work; `check_split` as soon as the
split is known; `fine_tune` after the head is trained and before export.
It returns the fine-tuned network as a `FeatureModule` (whose `obj` is the
fine-tuned feature extractor, images -> float32 [b, D]) and a `Head`, so
every export format (SavedModel with both signatures, frozen graph,
TFLite) is written by the unchanged export code.

Two ways, chosen by the module:
  bundled EfficientNet-Lite: the blocks from --fine_tune_from on, the head
    conv and the classifier, trained on cached activations
    (`retrain.finetune.activations`, `retrain.finetune.lite`);
  any other module: the whole module through hub.KerasLayer(trainable=True)
    on images streamed from disk (`retrain.finetune.hub_full`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

import bottleneck_cache
from retrain.bottlenecks import distort as distort_lib
from retrain.common import atomic
from retrain.common import earlier_outputs as keep
from retrain.errors import DatasetError
from retrain.features import efficientnet_lite, ensemble_presets, presets
from retrain.features import ensemble as ensemble_lib
from retrain.features.modules import FeatureModule
from retrain.finetune import activations as activations_lib
from retrain.finetune import hub_full
from retrain.finetune import lite as lite_lib
from retrain.finetune import train as train_lib
from retrain.head.model import Head

REPORT_FILE = 'fine_tune.json'
# Above this, AdamW fine-tuning of pretrained blocks tends to wipe out what
# they learnt in the first epoch (1e-3 overfit within a few epochs on
# flowers_sample); only a warning, as a small dataset may still want it.
_HIGH_LEARNING_RATE = 1e-3
# Fewer validation images of a class than this: one image moves that
# class's accuracy by more than 20 points.
_FEW_VALIDATION = 5


def bundled_variant(handle: str) -> Optional[efficientnet_lite.Variant]:
  """The EfficientNet-Lite variant of a bundled preset name, else None."""
  preset = presets.PRESETS.get(handle)
  if preset is None or not preset.bundled:
    return None
  return efficientnet_lite.get_variant(preset.name)


@dataclasses.dataclass(frozen=True)
class FineTuneOptions:
  """The settings fine-tuning reads (named as retrain.config.Config's
  fields; see there for each one's meaning and default)."""
  fine_tune: bool
  fine_tune_from: int
  fine_tune_epochs: int
  fine_tune_learning_rate: float
  fine_tune_weight_decay: float
  fine_tune_dropout: float
  fine_tune_batch_size: int
  fine_tune_warmup_epochs: float
  fine_tune_patience: int
  fine_tune_label_smoothing: float
  fine_tune_members: str
  tfhub_module: str
  validation_percentage: float
  validation_csv: str
  image_layout: str
  distorted_copies: int
  random_seed: int
  bottleneck_dir: str
  bottleneck_batch_size: int
  checkpoint_path: str
  summaries_dir: str
  report_dir: str


def _refuse(field: str, text: str):
  raise DatasetError(text, fields=(field,))


def check_options(o: FineTuneOptions,
                  default_from: Optional[int] = None) -> None:
  """Raises DatasetError for fine-tuning settings that cannot work; warns
  about ones that probably will not (and about a fine_tune_from other than
  `default_from`, the default, that a non-bundled module ignores). Does
  nothing unless fine_tune."""
  if not o.fine_tune:
    return
  for name in ('fine_tune_epochs', 'fine_tune_batch_size'):
    if getattr(o, name) < 1:
      _refuse(name, f'{name}={getattr(o, name)} must be at least 1.')
  lr = o.fine_tune_learning_rate
  if not (math.isfinite(lr) and lr > 0):
    _refuse('fine_tune_learning_rate', f'fine_tune_learning_rate={lr} must '
            'be a positive number; 1e-4 is the default.')
  if lr > _HIGH_LEARNING_RATE:
    logging.warning(
        'fine_tune_learning_rate=%g is high for fine-tuning pretrained '
        'layers (they change in the first steps far more than the head '
        'needs, and accuracy usually drops or training diverges); try 1e-4.',
        lr)
  for name in ('fine_tune_dropout', 'fine_tune_label_smoothing'):
    if not 0 <= getattr(o, name) < 1:
      _refuse(name, f'{name}={getattr(o, name)} must be in [0, 1).')
  for name in ('fine_tune_weight_decay', 'fine_tune_warmup_epochs',
               'fine_tune_patience'):
    if getattr(o, name) < 0:
      _refuse(name, f'{name}={getattr(o, name)} must be 0 or more.')
  if (o.validation_percentage <= 0 and not o.validation_csv and
      o.image_layout != 'split_folders'):
    raise DatasetError(
        'fine_tune needs a validation set for early stopping, but '
        f'validation_percentage={o.validation_percentage:g}: pass '
        'validation_percentage 10 (or more), or drop fine_tune.',
        fields=('fine_tune', 'validation_percentage'))
  members = ensemble_presets.member_handles(o.tfhub_module)
  variants = [bundled_variant(handle) for handle in members]
  if len(members) > 1:
    _check_ensemble(o, members, variants)
  elif variants[0] is not None:
    lite_lib.check_boundary(o.fine_tune_from,
                            efficientnet_lite.block_specs(variants[0]),
                            variants[0].title)
  elif default_from is not None and o.fine_tune_from != default_from:
    logging.warning(
        'fine_tune_from=%d is ignored: %s is not a bundled EfficientNet-Lite '
        'module, so it has no block boundary to cut at and is fine-tuned '
        'whole.', o.fine_tune_from, o.tfhub_module)


def _check_ensemble(o: FineTuneOptions, members: Sequence[str],
                    variants) -> None:
  """An ensemble is fine-tuned member by member from a cut counted from
  each member's end, so every member must be a bundled EfficientNet-Lite
  and fine_tune_from negative."""
  others = [h for h, v in zip(members, variants, strict=True) if v is None]
  if others:
    raise DatasetError(
        f'fine_tune on an ensemble needs every member to be a bundled '
        f'EfficientNet-Lite module, and tfhub_module={o.tfhub_module!r} has '
        f'{", ".join(others)}: fine-tune that module alone, or an ensemble '
        'of efficientnet_lite0/1/2 only.', fields=('fine_tune', 'tfhub_module'))
  unknown = sorted(set(tuned_members(o, members)) - set(members))
  if unknown:
    raise DatasetError(
        f'fine_tune_members={o.fine_tune_members!r} names '
        f'{", ".join(unknown)}, which is not a member of '
        f'tfhub_module={o.tfhub_module!r}: name members of it, or "all".',
        fields=('fine_tune_members',))
  if o.fine_tune_from >= 0:
    raise DatasetError(
        f'fine_tune_from={o.fine_tune_from} names one block, but the members '
        f'of {o.tfhub_module!r} have different numbers of blocks: pass a '
        'count from each member\'s end (-1: the last block; -2: the last '
        'two; ...).', fields=('fine_tune_from',))
  for variant in variants:
    lite_lib.check_boundary(o.fine_tune_from,
                            efficientnet_lite.block_specs(variant),
                            variant.title)


def tuned_members(o: FineTuneOptions, members: Sequence[str]) -> list:
  """The handles of the ensemble `members` whose tops are fine-tuned:
  fine_tune_members "" the first, "all" every one, else those it names;
  a single module (one member) is always fine-tuned."""
  if len(members) == 1:
    return list(members)
  if not o.fine_tune_members.strip():
    return list(members[:1])
  if o.fine_tune_members.strip() == 'all':
    return list(members)
  return [h.strip() for h in o.fine_tune_members.split(',') if h.strip()]


def check_split(o: FineTuneOptions, labels: Sequence[str], y: np.ndarray,
                validation: np.ndarray) -> None:
  """Raises DatasetError if a class has no validation image (early stopping
  would not see it), naming the classes and the fix; warns when a class
  has only a few."""
  if not o.fine_tune:
    return
  counts = np.bincount(y[validation], minlength=len(labels))
  empty = [labels[i] for i in range(len(labels)) if counts[i] == 0]
  if empty:
    raise DatasetError(
        f'fine_tune needs validation images of every class, and '
        f'{len(empty)} class(es) have none: {", ".join(empty[:5])}. Add '
        'images to them (about 10 or more per class), raise '
        f'validation_percentage (now {o.validation_percentage:g}), '
        'or drop fine_tune.', fields=('fine_tune', 'validation_percentage'))
  few = [labels[i] for i in range(len(labels)) if counts[i] < _FEW_VALIDATION]
  if few:
    logging.warning(
        'Fine-tuning chooses the epoch it keeps on the validation set, but '
        '%d class(es) have fewer than %d validation images (%s), so that '
        'choice is mostly noise: add images or raise validation_percentage '
        '(now %g).', len(few), _FEW_VALIDATION, ', '.join(few[:5]),
        o.validation_percentage)


@dataclasses.dataclass
class FineTuned:
  """What fine-tuning produced.

  Attributes:
    module: the fine-tuned feature extractor as a FeatureModule (obj and
      call run it: float32 [b, H, W, 3] in [0, 1] -> float32 [b, D]).
    head: the fine-tuned classifier on those features.
    network: the in-memory network (`logits`, `features`, `top_variables`).
    fit: the training history (retrain.finetune.train.FitResult).
    test_before, test_after: test accuracy in [0, 1] of the head alone (on
      the same inputs) and after fine-tuning; nan without a test set.
    test_predictions: int64 [n_test] class ids after fine-tuning.
    validation_features: float32 [n_val, D] pooled features of the
      validation images from the fine-tuned network (for calibration and
      the reports), validation_labels: int64 [n_val] their class ids,
      validation_rows: int64 [n_val] their indices into `paths` (an image
      whose activations could not be made is in none of them); test_*
      the same of the test images.
    metadata: what the export's retrain_metadata.json says about it.
    timings: seconds per phase ('activations', 'training').
  """
  module: FeatureModule
  head: Head
  network: tf.Module
  fit: train_lib.FitResult
  test_before: float
  test_after: float
  test_count: int
  test_predictions: np.ndarray
  metadata: dict
  timings: dict
  validation_features: Optional[np.ndarray] = None
  validation_labels: Optional[np.ndarray] = None
  validation_rows: Optional[np.ndarray] = None
  test_features: Optional[np.ndarray] = None
  test_labels: Optional[np.ndarray] = None
  test_rows: Optional[np.ndarray] = None


def tuned_feature_module(module: FeatureModule, network) -> FeatureModule:
  """`module` with obj and call running network.features (trackable, so the
  export saves the fine-tuned variables)."""

  class TunedFeatures(tf.Module):

    def __init__(self):
      super().__init__(name='fine_tuned_features')
      self.network = network

    def __call__(self, images):
      # Plain Python, traced inline into each export's own tf.function: a
      # nested tf.function would give its captured variables numeric names,
      # which TF renames in a log line hundreds of names long.
      return self.network.features(tf.convert_to_tensor(images, tf.float32))

  obj = TunedFeatures()
  return dataclasses.replace(module, obj=obj, call=obj.__call__,
                             prepare=None, parallel_calls=1)


def _digest(*arrays) -> str:
  h = hashlib.sha256()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:20]


def _fit_options(o: FineTuneOptions) -> train_lib.FitOptions:
  return train_lib.FitOptions(
      epochs=o.fine_tune_epochs, learning_rate=o.fine_tune_learning_rate,
      weight_decay=o.fine_tune_weight_decay,
      warmup_epochs=o.fine_tune_warmup_epochs, patience=o.fine_tune_patience,
      seed=o.random_seed, label_smoothing=o.fine_tune_label_smoothing)


def checkpoint_dir(o: FineTuneOptions, identity: dict) -> str:
  """<checkpoint_path>.fine_tune/, or, without one, a folder of the
  bottleneck cache named by the run's identity (so resume always works)."""
  if o.checkpoint_path:
    return f'{o.checkpoint_path}.fine_tune'
  return os.path.join(o.bottleneck_dir, 'fine_tune_checkpoints',
                      bottleneck_cache.namespace_id(identity))


def _writers(summaries_dir: str):
  """(train, validation, test) writers under <summaries_dir>/fine_tune/; an
  earlier run's are moved aside."""
  root = os.path.join(summaries_dir, 'fine_tune')
  if os.path.isdir(root) and os.listdir(root):
    keep.move_aside(root)
  return tuple(tf.summary.create_file_writer(os.path.join(root, run))
               for run in ('train', 'validation', 'test'))


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
class FixedFeatures:
  """The frozen features the head trained on, for ensemble members that
  are not fine-tuned (fine_tune_members).

  Attributes:
    vectors: float32 [n, D] of every image (rows as `paths`; columns the
      members' vectors side by side in --tfhub_module order).
    copies: the training images' distorted copies (source: the index into
      split.train; copy: which copy), or None without distortions.
  """
  vectors: np.ndarray
  copies: Optional[distort_lib.DistortedCopies] = None


@dataclasses.dataclass
class _Plan:
  """One kind of fine-tuning, ready to train: the network (logits,
  features, top_variables, final_weights/biases), its batches (train by
  epoch, validation, test), steps per epoch, what it is (for the
  metadata), the seconds its data took and the rows (indices into the
  paths) of the validation and test items its batches hold, in order."""
  network: tf.Module
  train_batches: Callable
  validation_batches: Callable
  test_batches: Callable
  steps: int
  what: dict
  timings: dict
  rows: dict


def _identity(o: FineTuneOptions, module, head, labels, keys, y, split,
              distortions) -> dict:
  """What a checkpoint must match to be resumed."""
  return dict(
      module.identity(), labels=list(labels),
      head=_digest(head.weights, head.biases),
      train=_digest(np.array([keys[i] for i in split.train]), y[split.train]),
      validation=_digest(np.array([keys[i] for i in split.validation])),
      options=dataclasses.asdict(_fit_options(o)),
      dropout=o.fine_tune_dropout, batch_size=o.fine_tune_batch_size,
      block=o.fine_tune_from, members=tuned_members(o, [
          m.handle for m in ensemble_lib.members(module)]),
      distortions=distortions.describe() if distortions else None,
      distorted_copies=o.distorted_copies if distortions else 0)


def _lite_plan(o: FineTuneOptions, distortions, module, head, paths, keys,
               y, split, fixed: Optional['FixedFeatures']) -> _Plan:
  """The top of a bundled EfficientNet-Lite (of each member of an ensemble
  of them that fine_tune_members names), on cached activations."""
  members = ensemble_lib.members(module)
  tuned = tuned_members(o, [m.handle for m in members])
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
    block = lite_lib.check_boundary(o.fine_tune_from, weights.blocks,
                                    variant.title)
    head_args = ((head.weights, head.biases) if len(members) == 1 else
                 (None, None))
    nets.append(lite_lib.LiteNetwork(weights, block, *head_args,
                                     o.fine_tune_dropout))
    described.append({'module': variant.name, 'fine_tuned': True,
                      'from_block': block,
                      'blocks': len(weights.blocks),
                      'activation_shape': list(nets[-1].activation_shape)})
    logging.info('Fine-tuning %s from block %d on: activations of %dx%dx%d '
                 'entering it are computed once and cached.', variant.title,
                 block, *nets[-1].activation_shape)
  started = time.monotonic()
  train_x, train_y, val, test = _lite_data(o, members, nets, paths, keys, y,
                                           split, distortions, fixed)
  rows = {'validation': val[2], 'test': test[2]}
  val, test = val[:2], test[:2]
  if len(members) == 1:
    network = nets[0]
    what = {k: v for k, v in described[0].items() if k != 'fine_tuned'}
    what['kind'] = 'top of EfficientNet-Lite on cached activations'
    train_x, val, test = train_x[0], (val[0][0], val[1]), (test[0][0],
                                                            test[1])
  else:
    network = lite_lib.EnsembleNetwork(nets, head.weights, head.biases,
                                       o.fine_tune_dropout)
    what = {'kind': 'top of each EfficientNet-Lite member on cached '
                    'activations', 'module': module.handle,
            'from_block': o.fine_tune_from, 'fine_tuned_members': tuned,
            'members': described}
  batch = o.fine_tune_batch_size
  return _Plan(
      network=network,
      train_batches=lambda epoch: _array_batches(
          train_x, train_y, batch,
          _epoch_order(o.random_seed, epoch, len(train_y))),
      validation_batches=lambda: _array_batches(*val, batch * 4),
      test_batches=lambda: _array_batches(*test, batch * 4),
      steps=math.ceil(len(train_y) / batch), what=what,
      timings={'activations': time.monotonic() - started}, rows=rows)


def _hub_plan(o: FineTuneOptions, distortions, module, head, paths, keys, y,
              split) -> _Plan:
  """The whole module through hub.KerasLayer, on images streamed."""
  network = hub_full.HubNetwork(module, head.weights, head.biases,
                                o.fine_tune_dropout)
  train_paths = [paths[i] for i in split.train]
  train_y = y[split.train]
  seeds = None
  if distortions is not None:
    seeds = np.array([distort_lib.copy_seed(o.random_seed, keys[i], 0)
                      for i in split.train], np.int64)
  size, batch = module.input_size, o.fine_tune_batch_size

  def train_batches(epoch):
    # Other distortions each epoch, the same ones for a resumed epoch.
    epoch_seeds = None if seeds is None else seeds ^ np.int64(epoch)
    return hub_full.image_batches(
        train_paths, train_y, size, batch,
        _epoch_order(o.random_seed, epoch, len(train_paths)), distortions,
        epoch_seeds)

  def subset_batches(rows):
    return lambda: hub_full.image_batches([paths[i] for i in rows], y[rows],
                                          size, batch)

  hub_full.log_estimate(
      module.handle, hub_full.estimate_epoch_seconds(
          network, batch, len(train_paths)), o.fine_tune_epochs,
      len(train_paths))
  return _Plan(
      network=network, train_batches=train_batches,
      validation_batches=subset_batches(split.validation),
      test_batches=subset_batches(split.test),
      steps=math.ceil(len(train_paths) / batch),
      what={'kind': 'whole module through hub.KerasLayer(trainable=True)',
            'module': module.handle, 'from_block': None}, timings={},
      rows={'validation': np.asarray(split.validation, np.int64),
            'test': np.asarray(split.test, np.int64)})


def _train_and_test(o: FineTuneOptions, plan: _Plan, identity: dict,
                    on_epoch):
  """Trains plan.network; returns (FitResult, test accuracy before, after,
  test predictions int64 [n])."""
  network = plan.network

  def infer(x):
    return network.logits(x, False)

  _, before, _ = train_lib.evaluate(infer, plan.test_batches())
  writers = _writers(o.summaries_dir)
  try:
    fit = train_lib.fit(
        network.top_variables, network.logits, train_lib.Batches(
            plan.train_batches, plan.validation_batches, plan.steps),
        _fit_options(o),
        checkpoint_dir(o, identity), identity, writers[:2], on_epoch)
    _, after, predictions = train_lib.evaluate(infer, plan.test_batches())
    last = fit.history[-1].epoch if fit.history else o.fine_tune_epochs
    with writers[2].as_default():
      for step, value in ((0, before), (max(last, 1), after)):
        if math.isfinite(value):
          tf.summary.scalar('accuracy', value, step=step)
  finally:
    for w in writers:
      w.close()
  return fit, before, after, predictions


def fine_tune(o: FineTuneOptions, distortions: distort_lib.Distortions,
              module: FeatureModule, head: Head, labels: Sequence[str],
              paths: Sequence[str], keys: Sequence[str], y: np.ndarray,
              split, on_epoch=None,
              fixed: Optional[FixedFeatures] = None) -> FineTuned:
  """Fine-tunes the top of `module` (or all of it) together with `head`.

  Args:
    o: the settings; distortions: the run's (copies as for the head).
    module: the feature module the head was trained on.
    head: the trained head (weights float32 [D, N], biases [N]).
    labels: class names; class id i is labels[i].
    paths, keys: the usable images and their content hashes.
    y: int64 [len(paths)] class ids.
    split: train, validation, test index arrays into paths.
    on_epoch: called with each EpochPoint (tests stop a run with it).
    fixed: the head's frozen features, which the members that
      fine_tune_members leaves out train on (needed only then).
  """
  check_split(o, labels, y, split.validation)
  distortions = distortions if distortions.any() else None
  identity = _identity(o, module, head, labels, keys, y, split, distortions)
  members = ensemble_lib.members(module)
  if all(bundled_variant(m.handle) is not None for m in members):
    plan = _lite_plan(o, distortions, module, head, paths, keys, y, split,
                      fixed)
  else:
    plan = _hub_plan(o, distortions, module, head, paths, keys, y, split)
  started = time.monotonic()
  fit, before, after, predictions = _train_and_test(o, plan, identity,
                                                    on_epoch)
  plan.timings['training'] = time.monotonic() - started
  logging.info('Fine-tuning: test accuracy %.1f%% before, %.1f%% after '
               '(N=%d).', 100 * before, 100 * after, len(predictions))
  what = dict(plan.what, epochs_run=[p.epoch for p in fit.history if p.epoch],
              best_epoch=fit.best_epoch, resumed_from_epoch=fit.resumed_from,
              learning_rate=o.fine_tune_learning_rate,
              test_accuracy_before=before, test_accuracy_after=after)
  network = plan.network
  width = network.final_weights.shape[0]

  def pooled(batches):
    """(features float32 [n, D], class ids int64 [n]) of the batches."""
    both = [(network.pooled(x).numpy(), y.numpy()) for x, y in batches]
    return (np.concatenate([x for x, _ in both] or
                           [np.zeros((0, width), np.float32)]),
            np.concatenate([y for _, y in both] or [np.zeros(0, np.int64)]))

  validation, test = (pooled(plan.validation_batches()),
                      pooled(plan.test_batches()))
  result = FineTuned(
      module=tuned_feature_module(module, network),
      head=Head(network.final_weights.numpy(), network.final_biases.numpy()),
      network=network, fit=fit, test_before=before, test_after=after,
      test_count=len(predictions), test_predictions=predictions,
      metadata={'fine_tuned': what}, timings=plan.timings,
      validation_features=validation[0], validation_labels=validation[1],
      validation_rows=plan.rows['validation'], test_features=test[0],
      test_labels=test[1], test_rows=plan.rows['test'])
  write_report(o.report_dir, result)
  return result


def _member_activations(o: FineTuneOptions, member, net, paths, keys,
                        train_idx: np.ndarray, distortions, size=None):
  """(plain, copies or None): the Activations of every image, and of the
  distorted copies of the training images (image-major, copy-minor), at
  `net`'s cut of `member`. `size`: an ensemble's input size (None: the
  member's own); the images are decoded at it and area-resized to the
  member's size, as the exported ensemble does
  (ensemble_lib.at_ensemble_size, whose namespace they are cached in)."""
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
      o.bottleneck_dir, activations_lib.namespace(member, net.block, shape))
  plain = activations_lib.plain_activations(
      paths, keys, bottom, store, shape, o.bottleneck_batch_size)
  logging.info('Activations of %s: %d reused from the cache, %d computed.',
               member.handle, plain.stats.reused, plain.stats.computed)
  if distortions is None:
    return plain, None
  dstore = activations_lib.Float16Store(
      o.bottleneck_dir, activations_lib.distorted_namespace(
          member, net.block, shape, distortions, o.random_seed))
  copies, _ = activations_lib.distorted_activations(
      [paths[i] for i in train_idx], [keys[i] for i in train_idx], bottom,
      dstore, shape, distortions, o.distorted_copies, o.random_seed,
      o.bottleneck_batch_size)
  return plain, copies


def _fixed_activations(fixed: Optional[FixedFeatures], columns: slice,
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


def _lite_data(o: FineTuneOptions, members, nets, paths, keys, y, split,
               distortions, fixed: Optional[FixedFeatures] = None):
  """(train_x, train_y, (val_x, val_y, val_rows), (test_x, test_y,
  test_rows)); each x a tuple with one float16 array [n, h, w, c] per
  member (a fixed member's: float32 vectors [n, D]), training rows:
  originals then copies; val_rows and test_rows int64 index `paths`. An
  image (or copy) that some member could not read (already skipped for
  bottlenecks, so rare) is left out for all."""
  train_idx = np.asarray(split.train)
  found, offset = [], 0
  size = ensemble_lib.largest_size(members)
  for member, net in zip(members, nets, strict=True):
    columns = slice(offset, offset + member.output_dim)
    offset += member.output_dim
    found.append(
        _fixed_activations(fixed, columns, len(train_idx), o.distorted_copies,
                           distortions)
        if isinstance(net, lite_lib.FixedMember) else
        _member_activations(o, member, net, paths, keys, train_idx,
                            distortions, size))
  ok, rows = _aligned([plain for plain, _ in found])

  def subset(indices):
    indices = np.asarray(indices, np.int64)
    indices = indices[ok[indices]]
    return tuple(plain.values[r[indices]] for (plain, _), r in
                 zip(found, rows, strict=True)), y[indices], indices

  train_x, train_y, _ = subset(train_idx)
  val, test = subset(split.validation), subset(split.test)
  if distortions is not None:
    copies_ok, copy_rows = _aligned([copies for _, copies in found])
    items = np.flatnonzero(copies_ok)
    train_x = tuple(np.concatenate([x, copies.values[r[items]]])
                    for x, (_, copies), r in zip(train_x, found, copy_rows,
                                                 strict=True))
    source = train_idx[items // o.distorted_copies]
    train_y = np.concatenate([train_y, y[source]])
  return train_x, train_y, val, test


def retire_report(report_dir: str) -> Optional[str]:
  """Moves an earlier run's <report_dir>/fine_tune.json aside (a run
  without fine-tuning would otherwise leave it to read as its own);
  returns where it went, or None."""
  if not report_dir:
    return None
  return keep.move_aside(os.path.join(report_dir, REPORT_FILE))


def write_report(report_dir: str, result: FineTuned) -> Optional[str]:
  """<report_dir>/fine_tune.json: what was fine-tuned, before and after on
  test, and each epoch's figures."""
  if not report_dir:
    return None
  return atomic.write_json(
      os.path.join(report_dir, REPORT_FILE),
      dict(result.metadata['fine_tuned'], test_count=result.test_count,
           timings_seconds=result.timings,
           history=[dataclasses.asdict(p) for p in result.fit.history]),
      indent=2)
