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
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

import bottleneck_cache
from retrain.bottlenecks import distort as distort_lib
from retrain.common import atomic
from retrain.common import earlier_outputs as keep
from retrain.errors import DatasetError
from retrain.features import efficientnet_lite, ensemble_presets
from retrain.features import ensemble as ensemble_lib
from retrain.features.modules import FeatureModule
from retrain.finetune import hub_full
from retrain.finetune import lite as lite_lib
from retrain.finetune import plans as plans_lib
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


def _refuse(field: str, text: str):
  raise DatasetError(text, fields=(field,))


def check_options(config,
                  default_from: Optional[int] = None) -> None:
  """Raises DatasetError for fine-tuning settings that cannot work; warns
  about ones that probably will not (and about a fine_tune_from other than
  `default_from`, the default, that a non-bundled module ignores). Does
  nothing unless fine_tune. `config`: the run's retrain.config.Config."""
  if not config.finetune.fine_tune:
    return
  for name in ('fine_tune_epochs', 'fine_tune_batch_size'):
    if getattr(config.finetune, name) < 1:
      _refuse(name, f'{name}={getattr(config.finetune, name)} must be at least 1.')
  lr = config.finetune.fine_tune_learning_rate
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
    if not 0 <= getattr(config.finetune, name) < 1:
      _refuse(name, f'{name}={getattr(config.finetune, name)} must be in [0, 1).')
  for name in ('fine_tune_weight_decay', 'fine_tune_warmup_epochs',
               'fine_tune_patience'):
    if getattr(config.finetune, name) < 0:
      _refuse(name, f'{name}={getattr(config.finetune, name)} must be 0 or more.')
  if (config.data.validation_percentage <= 0 and not config.data.validation_csv and
      config.data.image_layout != 'split_folders'):
    raise DatasetError(
        'fine_tune needs a validation set for early stopping, but '
        f'validation_percentage={config.data.validation_percentage:g}: pass '
        'validation_percentage 10 (or more), or drop fine_tune.',
        fields=('fine_tune', 'validation_percentage'))
  members = ensemble_presets.member_handles(config.module.tfhub_module)
  variants = [plans_lib.bundled_variant(handle) for handle in members]
  if len(members) > 1:
    _check_ensemble(config, members, variants)
  elif variants[0] is not None:
    lite_lib.check_boundary(config.finetune.fine_tune_from,
                            efficientnet_lite.block_specs(variants[0]),
                            variants[0].title)
  elif default_from is not None and config.finetune.fine_tune_from != default_from:
    logging.warning(
        'fine_tune_from=%d is ignored: %s is not a bundled EfficientNet-Lite '
        'module, so it has no block boundary to cut at and is fine-tuned '
        'whole.', config.finetune.fine_tune_from, config.module.tfhub_module)


def _check_ensemble(config, members: Sequence[str],
                    variants) -> None:
  """An ensemble is fine-tuned member by member from a cut counted from
  each member's end, so every member must be a bundled EfficientNet-Lite
  and fine_tune_from negative."""
  others = [h for h, v in zip(members, variants, strict=True) if v is None]
  if others:
    raise DatasetError(
        f'fine_tune on an ensemble needs every member to be a bundled '
        f'EfficientNet-Lite module, and tfhub_module={config.module.tfhub_module!r} has '
        f'{", ".join(others)}: fine-tune that module alone, or an ensemble '
        'of efficientnet_lite0/1/2 only.', fields=('fine_tune', 'tfhub_module'))
  unknown = sorted(set(plans_lib.tuned_members(
      config.finetune.fine_tune_members, members)) - set(members))
  if unknown:
    raise DatasetError(
        f'fine_tune_members={config.finetune.fine_tune_members!r} names '
        f'{", ".join(unknown)}, which is not a member of '
        f'tfhub_module={config.module.tfhub_module!r}: name members of it, or "all".',
        fields=('fine_tune_members',))
  if config.finetune.fine_tune_from >= 0:
    raise DatasetError(
        f'fine_tune_from={config.finetune.fine_tune_from} names one block, but the members '
        f'of {config.module.tfhub_module!r} have different numbers of blocks: pass a '
        'count from each member\'s end (-1: the last block; -2: the last '
        'two; ...).', fields=('fine_tune_from',))
  for variant in variants:
    lite_lib.check_boundary(config.finetune.fine_tune_from,
                            efficientnet_lite.block_specs(variant),
                            variant.title)


def check_split(config, labels: Sequence[str], y: np.ndarray,
                validation: np.ndarray) -> None:
  """Raises DatasetError if a class has no validation image (early stopping
  would not see it), naming the classes and the fix; warns when a class
  has only a few."""
  if not config.finetune.fine_tune:
    return
  counts = np.bincount(y[validation], minlength=len(labels))
  empty = [labels[i] for i in range(len(labels)) if counts[i] == 0]
  if empty:
    raise DatasetError(
        f'fine_tune needs validation images of every class, and '
        f'{len(empty)} class(es) have none: {", ".join(empty[:5])}. Add '
        'images to them (about 10 or more per class), raise '
        f'validation_percentage (now {config.data.validation_percentage:g}), '
        'or drop fine_tune.', fields=('fine_tune', 'validation_percentage'))
  few = [labels[i] for i in range(len(labels)) if counts[i] < _FEW_VALIDATION]
  if few:
    logging.warning(
        'Fine-tuning chooses the epoch it keeps on the validation set, but '
        '%d class(es) have fewer than %d validation images (%s), so that '
        'choice is mostly noise: add images or raise validation_percentage '
        '(now %g).', len(few), _FEW_VALIDATION, ', '.join(few[:5]),
        config.data.validation_percentage)


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
      the same of the test images; train_* of the training images (no
      distorted copies), made only when fine-tuning beat its starting
      head (for the novelty score the exports carry), else None.
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
  train_features: Optional[np.ndarray] = None
  train_labels: Optional[np.ndarray] = None
  train_rows: Optional[np.ndarray] = None


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


def _fit_options(config) -> train_lib.FitOptions:
  ft = config.finetune
  return train_lib.FitOptions(
      epochs=ft.fine_tune_epochs, learning_rate=ft.fine_tune_learning_rate,
      weight_decay=ft.fine_tune_weight_decay,
      warmup_epochs=ft.fine_tune_warmup_epochs, patience=ft.fine_tune_patience,
      seed=config.head.random_seed, label_smoothing=ft.fine_tune_label_smoothing)


def checkpoint_dir(config, identity: dict) -> str:
  """<checkpoint_path>.fine_tune/, or, without one, a folder of the
  bottleneck cache named by the run's identity (so resume always works)."""
  if config.outputs.checkpoint_path:
    return f'{config.outputs.checkpoint_path}.fine_tune'
  return os.path.join(config.cache.bottleneck_dir, 'fine_tune_checkpoints',
                      bottleneck_cache.namespace_id(identity))


def _writers(summaries_dir: str):
  """(train, validation, test) writers under <summaries_dir>/fine_tune/; an
  earlier run's are moved aside."""
  root = os.path.join(summaries_dir, 'fine_tune')
  if os.path.isdir(root) and os.listdir(root):
    keep.move_aside(root)
  return tuple(tf.summary.create_file_writer(os.path.join(root, run))
               for run in ('train', 'validation', 'test'))


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


def _identity(config, module, head, labels,
              images: plans_lib.Images, distortions) -> dict:
  """What a checkpoint must match to be resumed."""
  keys, y, split = images.keys, images.y, images.split
  ft = config.finetune
  return dict(
      module.identity(), labels=list(labels),
      head=_digest(head.weights, head.biases),
      train=_digest(np.array([keys[i] for i in split.train]), y[split.train]),
      validation=_digest(np.array([keys[i] for i in split.validation])),
      options=dataclasses.asdict(_fit_options(config)),
      dropout=ft.fine_tune_dropout, batch_size=ft.fine_tune_batch_size,
      block=ft.fine_tune_from, members=plans_lib.tuned_members(
          ft.fine_tune_members, [m.handle for m in ensemble_lib.members(module)]),
      distortions=distortions.describe() if distortions else None,
      distorted_copies=config.distort.distorted_copies if distortions else 0)


def _train_and_test(config, plan: plans_lib.Plan, identity: dict,
                    on_epoch):
  """Trains plan.network; returns (FitResult, test accuracy before, after,
  test predictions int64 [n])."""
  network = plan.network

  def infer(x):
    return network.logits(x, False)

  _, before, _ = train_lib.evaluate(infer, plan.test_batches())
  writers = _writers(config.outputs.summaries_dir)
  try:
    fit = train_lib.fit(
        network.top_variables, network.logits, train_lib.Batches(
            plan.train_batches, plan.validation_batches, plan.steps),
        _fit_options(config),
        checkpoint_dir(config, identity), identity, writers[:2], on_epoch)
    _, after, predictions = train_lib.evaluate(infer, plan.test_batches())
    last = fit.history[-1].epoch if fit.history else config.finetune.fine_tune_epochs
    with writers[2].as_default():
      for step, value in ((0, before), (max(last, 1), after)):
        if math.isfinite(value):
          tf.summary.scalar('accuracy', value, step=step)
  finally:
    for w in writers:
      w.close()
  return fit, before, after, predictions


def fine_tune(config, module: FeatureModule, head: Head, labels: Sequence[str],
              images: plans_lib.Images, on_epoch=None,
              fixed: Optional[FixedFeatures] = None) -> FineTuned:
  """Fine-tunes the top of `module` (or all of it) together with `head`.

  Args:
    config: the run's retrain.config.Config (fine-tuning reads its finetune
      group, and the module, data split, distortions and their copies, seed,
      cache and output folders the rest of the run uses).
    module: the feature module the head was trained on.
    head: the trained head (weights float32 [D, N], biases [N]).
    labels: class names; class id i is labels[i].
    images: the usable images (paths, content hashes, class ids, split).
    on_epoch: called with each EpochPoint (tests stop a run with it).
    fixed: the head's frozen features, which the members that
      fine_tune_members leaves out train on (needed only then).
  """
  check_split(config, labels, images.y, images.split.validation)
  distortions = config.distort if config.distort.any() else None
  identity = _identity(config, module, head, labels, images, distortions)
  members = ensemble_lib.members(module)
  if all(plans_lib.bundled_variant(m.handle) is not None for m in members):
    plan = plans_lib.lite_plan(config, distortions, module, head, images, fixed)
  else:
    plan = plans_lib.hub_plan(config, distortions, module, head, images)
  started = time.monotonic()
  fit, before, after, predictions = _train_and_test(config, plan, identity,
                                                    on_epoch)
  plan.timings['training'] = time.monotonic() - started
  logging.info('Fine-tuning: test accuracy %.1f%% before, %.1f%% after '
               '(N=%d).', 100 * before, 100 * after, len(predictions))
  what = dict(plan.what, epochs_run=[p.epoch for p in fit.history if p.epoch],
              best_epoch=fit.best_epoch, resumed_from_epoch=fit.resumed_from,
              learning_rate=config.finetune.fine_tune_learning_rate,
              test_accuracy_before=before, test_accuracy_after=after)
  network = plan.network
  validation, test = (_pooled(network, plan.validation_batches()),
                      _pooled(network, plan.test_batches()))
  # The training images' own features (no copies) for the novelty score,
  # only when the fine-tuned network is kept (else its features go unused).
  train = (_pooled(network, plan.originals()) if fit.best_epoch else
           (None, None))
  result = FineTuned(
      module=tuned_feature_module(module, network),
      head=Head(network.final_weights.numpy(), network.final_biases.numpy()),
      network=network, fit=fit, test_before=before, test_after=after,
      test_count=len(predictions), test_predictions=predictions,
      metadata={'fine_tuned': what}, timings=plan.timings,
      validation_features=validation[0], validation_labels=validation[1],
      validation_rows=plan.rows['validation'], test_features=test[0],
      test_labels=test[1], test_rows=plan.rows['test'],
      train_features=train[0], train_labels=train[1],
      train_rows=plan.rows['train'] if fit.best_epoch else None)
  write_report(config.outputs.report_dir, result)
  return result


def _pooled(network, batches) -> tuple:
  """(features float32 [n, D], class ids int64 [n]) of the batches, from
  the fine-tuned network's pooled features."""
  both = [(network.pooled(x).numpy(), y.numpy()) for x, y in batches]
  width = network.final_weights.shape[0]
  return (np.concatenate([x for x, _ in both] or
                         [np.zeros((0, width), np.float32)]),
          np.concatenate([y for _, y in both] or [np.zeros(0, np.int64)]))


def image_features(module: FeatureModule, paths: Sequence[str],
                   batch_size: int) -> np.ndarray:
  """float32 [n, D]: the features `module` (e.g. FineTuned.module, the
  fine-tuned network as the exports run it) computes of the image files
  at `paths`, decoded as the exports decode them; files that cannot be
  read are left out (n <= len(paths))."""
  batches = [module.call(images).numpy() for images, _ in
             hub_full.image_batches(paths, np.zeros(len(paths), np.int64),
                                    module.input_size, batch_size)]
  return np.concatenate(batches or [np.zeros((0, module.output_dim),
                                             np.float32)]).astype(np.float32)


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


def versus_frozen(tuned_right: np.ndarray, frozen_right: np.ndarray) -> dict:
  """Whether the fine-tuned network beats the frozen head on the same
  held-out validation images by more than the validation set's noise.

  Args:
    tuned_right: bool [n], the fine-tuned network (kept epoch) right on
      validation image i (it trained on the training images only).
    frozen_right: bool [n], the frozen head's held-out prediction (out of
      fold when it trained on validation) right on the same image i.

  Returns:
    JSON-ready: both accuracies in [0, 1], images only the fine-tuned
    network gets right (gained) and only the frozen head (lost), the
    margin (accuracy) the difference had to exceed, and keep (bool).

  Only the images the two disagree on tell them apart; were neither
  better, each would go either way as a coin flip, so gained - lost has a
  standard deviation of sqrt(gained + lost). The fine-tuned network is
  kept when gained - lost exceeds that one standard deviation (so one
  image gained and none lost is not enough); its epoch was also chosen
  on these images, which favours it a little more.
  """
  tuned_right = np.asarray(tuned_right, bool)
  frozen_right = np.asarray(frozen_right, bool)
  n = max(len(tuned_right), 1)
  gained = int(np.sum(tuned_right & ~frozen_right))
  lost = int(np.sum(frozen_right & ~tuned_right))
  margin = math.sqrt(gained + lost)
  return {'fine_tuned_validation_accuracy': float(np.mean(tuned_right)),
          'frozen_validation_accuracy': float(np.mean(frozen_right)),
          'validation_count': len(tuned_right), 'gained': gained,
          'lost': lost, 'margin': margin / n,
          'keep': bool(gained - lost > margin)}
