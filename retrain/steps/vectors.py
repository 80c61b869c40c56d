"""The bottleneck step: every image's vector (from the cache or computed),
the skipped files, the split and the training set with its distorted
copies."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from absl import logging

import bottleneck_cache
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.bottlenecks import ensemble as ensemble_bottlenecks
from retrain.bottlenecks import usable as usable_lib
from retrain.common import names
from retrain.config import Config, subset
from retrain.data import boxes as boxes_lib
from retrain.data import duplicates, leakage
from retrain.data import sources as layouts
from retrain.data import split as split_lib
from retrain.errors import OutputError
from retrain.report import skipped as skipped_report


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


def bottlenecks(config: Config, dataset, module, runner, crops=None,
                load_vectors: bool = True,
                keyed: Optional[tuple] = None) -> bottlenecks_lib.Bottlenecks:
  """The bottleneck vector of every discovered image, cached under the
  module's identity and computed by `runner` (the module on its runtime);
  load_vectors False: computed into the cache only (retrain/steps/streamed.py);
  keyed: what hash_images returned (None: the files are hashed here)."""
  paths = [image.path for image in dataset.images]
  try:
    # An ensemble computes each member in its own namespace.
    if getattr(module, 'members', None):
      computed = ensemble_bottlenecks.compute_bottlenecks(
          paths, module, runner, config.bottleneck_dir,
          config.bottleneck_runtime, config.bottleneck_batch_size,
          config.module_cache_dir, max_pixels=config.max_image_pixels,
          keyed=keyed, **boxes_lib.Crops.bottleneck_args(crops))
      log_bottlenecks(computed.stats, len(computed.failures),
                      config.bottleneck_dir, len(module.members))
      return computed
    store = bottleneck_cache.BottleneckStore(
        config.bottleneck_dir, bottlenecks_lib.cache_namespace(module))
  except bottleneck_cache.CacheError as e:
    raise OutputError(f'bottleneck_dir: {e}', fields=('bottleneck_dir',)
                      ) from e
  computed = bottlenecks_lib.compute_bottlenecks(
      paths, runner, store,
      config.bottleneck_batch_size, max_pixels=config.max_image_pixels,
      load_vectors=load_vectors, keyed=keyed,
      **boxes_lib.Crops.bottleneck_args(crops))
  log_bottlenecks(computed.stats, len(computed.failures),
                  config.bottleneck_dir)
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


def report_skipped(config: Config, layout: layouts.Layout,
                   computed: bottlenecks_lib.Bottlenecks):
  """Writes the skipped-files report and warns of duplicate files in two
  classes; returns (skipped (path, reason) pairs, report files)."""
  dataset = layout.dataset
  skipped = list(layout.skipped) + list(computed.failures)
  reports = skipped_report.write_skipped_report(config.report_dir, skipped)
  if skipped and reports:
    logging.info('The %d skipped files and why are listed in %s.',
                 len(skipped), ' and '.join(reports))
  # Only usable images: two empty files in two classes are no conflict.
  duplicates.warn_conflicting_duplicates(duplicates.conflicting_duplicates(
      [d if ok else None for d, ok in zip(computed.digests, computed.ok)],
      [image.label for image in dataset.images],
      [image.path for image in dataset.images]))
  return skipped, reports


def make_split(config: Config, layout: layouts.Layout,
               images: usable_lib.UsableImages) -> split_lib.Split:
  """Train / validation / test rows of `images`."""
  split = layouts.make_split(layout, images.index, images.labels,
                             config.validation_percentage,
                             config.testing_percentage)
  _log_counts(layout.dataset.labels, images.labels, split)
  # The same bytes in two of train/validation/test is leakage.
  leakage.report_leakage(
      leakage.find_leakage(images.digests, split, images.paths),
      config.report_dir)
  return split


def training_set(config: Config, runner, images: usable_lib.UsableImages,
                 split: split_lib.Split, crops=None):
  """(vectors float32 [m, D], class ids int64 [m], distorted copies or None).

  Distorted copies of the training images only (validation and test stay
  as they are); training samples originals and copies alike.
  """
  train_x = images.vectors[split.train]
  train_y = images.labels[split.train]
  copies = distort_lib.training_copies(
      subset(distort_lib.Distortions, config), config.distorted_copies,
      config.random_seed, config.bottleneck_dir, config.bottleneck_batch_size,
      runner, images.paths_of(split.train), images.digests_of(split.train),
      boxes=None if crops is None else crops.boxes[images.index[split.train]])
  if copies is not None:
    train_x = np.concatenate([train_x, copies.vectors])
    train_y = np.concatenate([train_y, train_y[copies.source]])
  return train_x, train_y, copies


def training_groups(split: split_lib.Split, copies) -> np.ndarray:
  """int64 [m] group of each row training_set returned: row i of the
  training images is group i, and each distorted copy joins its source's
  (so held-out predictions hold an image and its copies out together)."""
  own = np.arange(len(split.train), dtype=np.int64)
  return own if copies is None else np.concatenate(
      [own, np.asarray(copies.source, np.int64)])
