"""The bottleneck step: every image's vector (from the cache or computed)
and where they live (`Vectors.storage`), the skipped files, the split and
the training set with its distorted copies."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np
from absl import logging

import bottleneck_cache
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.bottlenecks import ensemble as ensemble_bottlenecks
from retrain.bottlenecks import kept, thumbnails
from retrain.bottlenecks import usable as usable_lib
from retrain.common import names
from retrain.config import Config
from retrain.data import boxes as boxes_lib
from retrain.data import duplicates, leakage, sources
from retrain.data import split as split_lib
from retrain.errors import OutputError
from retrain.features import ensemble as ensemble_lib
from retrain.finetune import plans as plans_lib
from retrain.head import held_out as held_out_lib
from retrain.head import math as head_math
from retrain.report import skipped as skipped_report
from retrain.steps import streamed


def _log_counts(labels, y, split) -> None:
  for i, name in enumerate(labels):
    logging.info('Class %-20s train %5d  validation %4d  test %4d', name,
                 int(np.sum(y[split.train] == i)),
                 int(np.sum(y[split.validation] == i)),
                 int(np.sum(y[split.test] == i)))


def warn_skipped(skipped: list, reports: Sequence[str]) -> None:
  """The closing warning of a run that skipped images (also streamed's)."""
  if skipped:
    logging.warning('%s skipped because they could not be used; '
                    'see the warnings above and %s.',
                    names.plural(len(skipped), 'image') +
                    (' was' if len(skipped) == 1 else ' were'),
                    reports[0] if reports else 'the log')


# Where a run's vectors live: 'memory' (every vector loaded, float32
# [n, D]) or 'cache' (past --max_vectors_in_memory: they stay in the cache
# and training and evaluation read them in chunks, retrain/steps/streamed.py).
STORAGES = ('memory', 'cache')


@dataclasses.dataclass
class Vectors:
  """What the bottleneck step hands on.

  Attributes:
    storage: one of STORAGES; with 'cache', images.vectors is empty.
    computed: the bottlenecks of every discovered image.
    images: the usable ones (vectors, class ids, paths, digests).
    labels: class names, class id i is labels[i].
    skipped: (path, reason) of each image that cannot be used.
    reports: the skipped-files report files written.
  """
  storage: str
  computed: bottlenecks_lib.Bottlenecks
  images: usable_lib.UsableImages
  labels: List[str]
  skipped: list
  reports: List[str]


def choose_storage(config: Config, prepared) -> str:
  """'cache' when the run's training vectors exceed the memory budget
  (streamed.needed), else 'memory'. Crops to boxes keep them in memory
  (the stream reads whole images)."""
  if prepared.crops is not None:
    return 'memory'
  images = len(prepared.layout.dataset.images)
  if not streamed.needed(config, images, prepared.module):
    return 'memory'
  logging.info('About %d training vectors exceed --max_vectors_in_memory=%d: '
               'training and evaluation read them from the cache in chunks '
               '(no TensorBoard summaries or per-class reports on this path; '
               'see docs/scale.md).',
               streamed.expected_training_vectors(config, images),
               config.scale.max_vectors_in_memory)
  return 'cache'


def compute(config: Config, prepared) -> Vectors:
  """The bottleneck step: chooses the storage, computes (or reads) every
  image's vector, reports the skipped files. prepared: a
  retrain.steps.prepare.Prepared."""
  storage = choose_storage(config, prepared)
  layout = prepared.layout
  want_thumbnails(config, layout.dataset, storage == 'memory' and
                  prepared.crops is None and not config.data.multi_label)
  # --fine_tune's activations from the pixels decoded here (whole images;
  # only the softmax head in memory fine-tunes).
  extra = (plans_lib.activation_passes(config, prepared.module)
           if prepared.crops is None and storage == 'memory' and
           not config.data.multi_label else [])
  computed = bottlenecks(config, layout.dataset, prepared.module,
                         prepared.runner, prepared.crops,
                         load_vectors=storage == 'memory',
                         keyed=prepared.keyed, extra=extra)
  thumbnails.settle(config.cache.bottleneck_dir,
                    [image.path for image in layout.dataset.images],
                    computed.digests, config.data.max_image_pixels)
  skipped, reports = report_skipped(config, layout, computed)
  return Vectors(storage, computed,
                 usable_lib.usable_images(layout.dataset, computed),
                 list(layout.dataset.labels), skipped, reports)


def want_thumbnails(config: Config, dataset, projector: bool) -> None:
  """Asks the bottleneck pass for the thumbnails of the images the
  embedding projector will show (its evenly spread sample; an image
  skipped shifts the sample, and a thumbnail not made is read from the
  file), so that it need not open them again."""
  count = config.outputs.projector_max_images if projector else 0
  paths = [dataset.images[i].path for i in head_math.evenly_spread(
      len(dataset.images), count)]
  thumbnails.want(paths)


def bottlenecks(config: Config, dataset, module, runner, crops=None,
                load_vectors: bool = True,
                keyed: Optional[tuple] = None,
                extra: Sequence[tuple] = ()) -> bottlenecks_lib.Bottlenecks:
  """The bottleneck vector of every discovered image, cached under the
  module's identity and computed by `runner` (the module on its runtime);
  load_vectors False: computed into the cache only (retrain/steps/streamed.py);
  keyed: what hash_images returned (None: the files are hashed here);
  extra: (runner, store) pairs computed from the same decoded pixels
  (finetune.plans.activation_passes)."""
  paths = [image.path for image in dataset.images]
  try:
    # Each member of the ensemble (one for a single module) in its own
    # namespace.
    computed = ensemble_bottlenecks.compute_bottlenecks(
        paths, module, runner, config.cache.bottleneck_dir,
        config.cache.bottleneck_runtime, config.cache.bottleneck_batch_size,
        config.module.module_cache_dir, keyed=keyed, extra=extra,
        options=bottlenecks_lib.PassOptions(
            max_pixels=config.data.max_image_pixels, load_vectors=load_vectors),
        **boxes_lib.Crops.bottleneck_args(crops))
  except bottleneck_cache.CacheError as e:
    raise OutputError(f'bottleneck_dir: {e}', fields=('bottleneck_dir',)
                      ) from e
  finally:
    kept.forget()  # the bytes hashing kept for this pass
  log_bottlenecks(computed.stats, len(computed.failures),
                  config.cache.bottleneck_dir, len(ensemble_lib.members(module)))
  return computed


def log_bottlenecks(stats: bottleneck_cache.Stats, skipped: int,
                    cache_dir: str, modules: int = 1) -> None:
  """One line: how many vectors the cache gave and how many were computed
  (all from the cache: said so), and how many images were skipped."""
  what = 'Bottlenecks' if modules == 1 else f'Bottlenecks of {modules} modules'
  unit = 'vector'
  if not stats.computed and stats.reused:
    read = (f'all {names.plural(stats.reused, unit)} read from the cache in '
            f'{cache_dir}, none computed')
  else:
    read = (f'{names.plural(stats.reused, unit)} read from the cache, '
            f'{stats.computed} computed')
  logging.info('%s: %s; %s skipped.', what, read,
               names.plural(skipped, 'image'))


def report_skipped(config: Config, layout: sources.Layout,
                   computed: bottlenecks_lib.Bottlenecks):
  """Writes the skipped-files report and warns of duplicate files in two
  classes; returns (skipped (path, reason) pairs, report files)."""
  dataset = layout.dataset
  skipped = list(layout.skipped) + list(computed.failures)
  reports = skipped_report.write_skipped_report(config.outputs.report_dir, skipped)
  if skipped and reports:
    logging.info('The %d skipped files and why are listed in %s.',
                 len(skipped), ' and '.join(reports))
  # Only usable images: two empty files in two classes are no conflict.
  duplicates.warn_conflicting_duplicates(duplicates.conflicting_duplicates(
      [d if ok else None for d, ok in zip(computed.digests, computed.ok)],
      [image.label for image in dataset.images],
      [image.path for image in dataset.images]))
  return skipped, reports


def make_split(config: Config, layout: sources.Layout,
               images: usable_lib.UsableImages) -> split_lib.Split:
  """Train / validation / test rows of `images`."""
  split = sources.make_split(layout, images.index, images.labels,
                             config.data.validation_percentage,
                             config.data.testing_percentage)
  _log_counts(layout.dataset.labels, images.labels, split)
  # The same bytes in two of train/validation/test is leakage.
  leakage.report_leakage(
      leakage.find_leakage(images.digests, split, images.paths),
      config.outputs.report_dir)
  return split


@dataclasses.dataclass
class TrainingSet:
  """The vectors the head trains on.

  Attributes:
    x: float32 [m, D], the training images' vectors, then their copies'.
    y: int64 [m] class ids.
    copies: the distorted copies (distort.training_copies), or None.
  """
  x: np.ndarray
  y: np.ndarray
  copies: Optional[object]


def training_set(config: Config, runner, images: usable_lib.UsableImages,
                 split: split_lib.Split, crops=None) -> TrainingSet:
  """The training images' vectors and distorted copies of them (validation
  and test stay as they are); training samples originals and copies
  alike."""
  train_x = images.vectors[split.train]
  train_y = images.labels[split.train]
  copies = distort_lib.training_copies(
      distort_lib.CopyRecipe(config.distort,
                             config.distort.distorted_copies, config.head.random_seed),
      config.cache.bottleneck_dir, config.cache.bottleneck_batch_size, runner,
      images.paths_of(split.train), images.digests_of(split.train),
      boxes=None if crops is None else crops.boxes[images.index[split.train]])
  if copies is not None:
    train_x = np.concatenate([train_x, copies.vectors])
    train_y = np.concatenate([train_y, train_y[copies.source]])
  return TrainingSet(train_x, train_y, copies)


def near_duplicates(images: usable_lib.UsableImages,
                    split: split_lib.Split) -> np.ndarray:
  """int64 [n_train + n_val]: the near-duplicate group
  (split.near_duplicate_groups of the file names) of each training image,
  then of each validation image."""
  return split_lib.near_duplicate_groups(images.paths_of(
      np.concatenate([split.train, split.validation])))


def training_groups(split: split_lib.Split, copies,
                    near: np.ndarray) -> held_out_lib.Groups:
  """The held_out.Groups of the rows training_set returned, then the
  validation images': row i of the training images is photo i, each
  distorted copy joins its source's photo; a photo, its copies and its
  near-duplicates (near: what near_duplicates returned) share a fold, so
  held-out predictions never see a copy of what they predict."""
  own = np.arange(len(split.train), dtype=np.int64)
  source = (np.zeros(0, np.int64) if copies is None else
            np.asarray(copies.source, np.int64))
  train_near = near[:len(split.train)]
  return held_out_lib.Groups(
      photo=np.concatenate([own, source]),
      fold=np.concatenate([train_near, train_near[source],
                           near[len(split.train):]]))
