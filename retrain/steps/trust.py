"""The trust step: the novelty score and <report_dir>/trust.json."""

from __future__ import annotations

import dataclasses
import os
import types
from typing import Optional

import numpy as np
from absl import logging

from retrain.bottlenecks import usable as usable_lib
from retrain.common import names
from retrain.config import Config
from retrain.data import split as split_lib
from retrain.finetune import run as finetune_lib
from retrain.head import calibration as calibration_lib
from retrain.head import folds as folds_lib
from retrain.head import novelty as novelty_lib
from retrain.report import trust as trust_report
from retrain.steps import head, vectors


def in_memory(images: usable_lib.UsableImages, split: split_lib.Split):
  """The `read` of trust_checks for vectors in memory: every row of the
  named subsets, in the order named."""

  def read(names):
    rows = np.concatenate([split.subset(name) for name in names])
    return images.vectors[rows], images.labels[rows]

  return read


def fit_novelty(config: Config, read, num_classes: int, tuned=None,
                groups: Optional[np.ndarray] = None):
  """The novelty score on the features the exported model computes of the
  training and validation images (the frozen vectors, read: see
  trust_checks; or after accepted fine-tuning the fine-tuned network's),
  its threshold from out-of-fold scores; None when switched off
  (novelty_keep 0) or with fewer than two images (groups) a class.
  groups: int [n_train + n_val] near-duplicate group of each row read
  (rows of one group share a fold), or None: each row its own."""
  if not config.deploy.novelty_keep:
    return None
  if exports_fine_tuned(tuned):
    return fit_tuned_novelty(config, tuned, num_classes)
  x, y = read(('train', 'validation'))
  folds = folds_lib.usable_folds(y, groups, num_classes,
                                 config.head.solver_folds)
  if folds < 2:
    logging.info('No novelty score: a class has fewer than two training '
                 'and validation images to hold out.')
    return None
  return novelty_lib.fit_on_split(
      x, y, num_classes, config.deploy.novelty_components,
      config.deploy.novelty_keep, folds, config.head.random_seed, groups)


def fit_tuned_novelty(config: Config, tuned, num_classes: int):
  """The novelty score on the fine-tuned network's features of the
  training and validation images (what the exports compute), its
  threshold on the validation images' (which it did not train on)."""
  x = np.concatenate([tuned.train_features, tuned.validation_features])
  y = np.concatenate([tuned.train_labels, tuned.validation_labels])
  novelty = novelty_lib.fit_on_new_rows(
      x, y, num_classes, config.deploy.novelty_components, config.deploy.novelty_keep,
      np.arange(len(y)) >= len(tuned.train_labels), config.head.solver_folds,
      config.head.random_seed)
  novelty.held_out += ', features of the fine-tuned network'
  logging.info('Novelty score fitted on the fine-tuned network\'s features '
               'of %d training and validation images (what the exports '
               'compute); its threshold from %s.', len(y), novelty.held_out)
  return novelty


def exports_fine_tuned(tuned) -> bool:
  """Whether the exports carry the fine-tuned network (not the frozen
  head that fine-tuning did not beat)."""
  return tuned is not None and not tuned.metadata['fine_tuned'].get(
      'kept_frozen_head')


def unknown_vectors(config: Config, module, runner,
                    fine_tuned: bool = False) -> Optional[np.ndarray]:
  """float32 [n, D] vectors of the --unknown_dir photos (any layout;
  unreadable files skipped), through the bottleneck cache, or with
  `fine_tuned` through `module` (the fine-tuned network); None when it
  holds no image."""
  from retrain.common import walk as walk_lib
  from retrain.images import IMAGE_EXTENSIONS
  paths = sorted(os.path.join(folder, name)
                 for folder, _, files in os.walk(config.deploy.unknown_dir)
                 for name in files
                 if walk_lib.is_image_file(name, IMAGE_EXTENSIONS))
  logging.info('Scoring %s of --unknown_dir %s (never trained on).',
               names.plural(len(paths), 'photo'), config.deploy.unknown_dir)
  if not paths:
    return None
  if fine_tuned:
    return finetune_lib.image_features(module, paths,
                                       config.cache.bottleneck_batch_size)
  dataset = types.SimpleNamespace(images=[types.SimpleNamespace(path=p)
                                          for p in paths])
  return vectors.bottlenecks(config, dataset, module, runner).vectors


def trust_checks(config: Config, prepared, found, split: split_lib.Split,
                 tuned: head.Tuned, confidence: calibration_lib.Confidence,
                 read=None, groups: Optional[np.ndarray] = None
                 ) -> calibration_lib.Confidence:
  """Fits the novelty score (into confidence.head, so every export
  computes it), scores the test and --unknown_dir photos, writes
  <report_dir>/trust.json with the reliability diagram and the novelty
  histogram; returns the confidence with the novelty in its head.
  prepared, found: the run's retrain.steps.prepare.Prepared and
  retrain.steps.vectors.Vectors; read(subset names) -> (vectors float32
  [m, D], class ids int64 [m]) of the original images of those subsets, in
  order (default: in_memory; past the memory budget a sample read from the
  cache, retrain.steps.streamed.sampler). groups: with in_memory, the
  near-duplicate group of each training then validation image
  (vectors.near_duplicates), which the novelty score's folds keep
  together; None: each image its own."""
  module, runner, labels = tuned.module, prepared.runner, found.labels
  read = read or in_memory(found.images, split)
  test, trained = tuned.reported.test, tuned.trained
  tuned = tuned.fine_tuned
  novelty = fit_novelty(config, read, len(labels), tuned, groups)
  sets = {}
  if novelty is not None:
    logging.info('How the run measured novelty threshold: %s.',
                 novelty.held_out)
    confidence = dataclasses.replace(confidence, head=dataclasses.replace(
        confidence.head, novelty=novelty))
    fine_tuned = exports_fine_tuned(tuned)
    sets = {'held_out': novelty.held_out_scores,
            'test': novelty.scores(tuned.test_features if fine_tuned else
                                   read(('test',))[0])}
    unknown = (unknown_vectors(config, module, runner, fine_tuned)
               if config.deploy.unknown_dir else None)
    if unknown is not None:
      sets['unknown'] = novelty.scores(unknown)
    for name, scores in sets.items():
      counts = trust_report.flagged(scores, novelty.threshold)
      logging.info('Novelty threshold %.3f (keeps %.0f %% of held-out '
                   'images of the classes): %s: %d of %d flagged "not like '
                   'any class".', novelty.threshold, 100 * novelty.keep,
                   name.replace('_', '-'), counts['flagged'],
                   counts['count'])
  trust_report.write(
      config.outputs.report_dir, config.outputs.summaries_dir,
      trained.history[-1].step if trained.history else 0,
      head.describe_figures(trained, tuned, novelty), confidence, test,
      novelty, sets)
  return confidence
