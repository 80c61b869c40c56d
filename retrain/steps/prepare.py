"""The first steps of every run: check the settings, discover and hash the
images, load the feature module and its runner (`prepare`).

Used by retrain.pipeline, retrain.inspect and retrain.beam.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

import numpy as np
from absl import logging

from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.bottlenecks import precision as precision_lib
from retrain.common import leftovers, names
from retrain.common import phases as phases_lib
from retrain.config import DEFAULTS, Config
from retrain.data import boxes as boxes_lib
from retrain.data import discover as discover_lib
from retrain.data import multilabel as multilabel_data
from retrain.data import sources
from retrain.data import split as split_lib
from retrain.errors import DatasetError, OutputError
from retrain.export import formats as export_formats
from retrain.export import saved_model as export_lib
from retrain.features import ensemble as ensemble_lib
from retrain.features import modules as features
from retrain.features import tflite_runtime
from retrain.finetune import run as finetune_lib
from retrain.head import calibration as calibration_lib
from retrain.head import novelty as novelty_lib
from retrain.head import options as options_lib
from retrain.head import solver as solver_lib
from retrain.steps import multilabel


def check_config(config: Config) -> Tuple[str, ...]:
  """Checks values before any slow work starts; returns the modules
  --tfhub_module names, checked (ensemble_lib.check_handles)."""
  sources.check_layout_options(config.data)
  split_lib.check_percentages(config.data.validation_percentage,
                              config.data.testing_percentage)
  export_lib.check_export_dir(config.outputs.saved_model_dir)
  check_output_places(config)
  export_formats.check_options(config.outputs)
  options_lib.check(config.head)
  calibration_lib.check_options(
      config.deploy)
  if config.deploy.novelty_keep:
    novelty_lib.check_keep(config.deploy.novelty_keep)
  if config.deploy.unknown_dir and not os.path.isdir(config.deploy.unknown_dir):
    raise DatasetError(f'unknown_dir {config.deploy.unknown_dir!r} is not a '
                       'folder: give a folder of photos of none of the '
                       'classes, or leave it empty.', fields=('unknown_dir',))
  # The head solver's values (head_solver itself: resolve_head_solver).
  solver_lib.check(solver_lib.SolverOptions.from_config(config))
  distort_lib.check_settings(config.distort,
                             config.distort.distorted_copies)
  # Fine-tuning.
  finetune_lib.check_options(config,
                             default_from=DEFAULTS.finetune.fine_tune_from)
  # A mistyped module is reported now, not after hashing.
  handles = ensemble_lib.check_handles(config.module.tfhub_module, config.module.image_size,
                                       config.module.trust_module)
  if config.data.multi_label:
    multilabel.check_options(config)
  # Every setting's declared choices and bounds (retrain/config/), after
  # the checks above that say more about the settings they know.
  config.check()
  return handles


# Outputs written as one file, and as folders.
_FILE_OUTPUTS = ('output_labels', 'output_graph', 'tflite_output_file')
_FOLDER_OUTPUTS = ('saved_model_dir', 'summaries_dir', 'report_dir',
                   'bottleneck_dir')


def check_output_places(config: Config) -> None:
  """Raises OutputError, before any work, for an output file that is a
  folder, an output folder that is a file, or an output inside image_dir
  (the next run would list it as a class)."""
  for name in _FILE_OUTPUTS + _FOLDER_OUTPUTS:
    path = config.get(name, '')
    if not path:
      continue
    if name in _FILE_OUTPUTS and os.path.isdir(path):
      raise OutputError(f'{name} {path!r} is a folder: give a file path, '
                        f'e.g. {os.path.join(path, "labels.txt")!r}.',
                        fields=(name,))
    if name in _FOLDER_OUTPUTS and os.path.isfile(path):
      raise OutputError(f'{name} {path!r} is a file: give a folder.',
                        fields=(name,))
    if config.data.image_dir and os.path.isdir(config.data.image_dir):
      rel = os.path.relpath(os.path.realpath(path),
                            os.path.realpath(config.data.image_dir))
      if not rel.startswith('.'):
        raise OutputError(
            f'{name} {path!r} is inside image_dir {config.data.image_dir!r}: the '
            'next run would take it for a class of images. Give a place '
            'outside the image folder.', fields=(name, 'image_dir'))


@dataclasses.dataclass
class Prepared:
  """What every run needs before its bottlenecks (see `prepare`).

  Attributes:
    layout: the images, their classes and any given split
      (retrain.data.sources.Layout).
    crops: with --crop_to_boxes one example per box and its crop, else None.
    keyed: the cache key of every image (what hash_images returns), or None
      when not hashed here.
    float_module: the feature module as loaded (an ensemble of one or more
      members: retrain.features.ensemble.members).
    module: the same at the precision its bottlenecks run at.
    precision: per member, 'int8' or 'float32'.
    runner: the module on its runtime, as the bottlenecks run it.
    targets: with --multi_label, bool [n, labels] of every discovered
      image (retrain.data.multilabel), else None.
  """
  layout: sources.Layout
  crops: Optional[boxes_lib.Crops]
  keyed: Optional[tuple]
  float_module: object
  module: object
  precision: object
  runner: object
  targets: Optional[np.ndarray] = None


def prepare(config: Config, phases: Optional[phases_lib.Phases] = None, *,
            whole_run: bool = True, hash_files: bool = True) -> Prepared:
  """Discovers and hashes the images and loads the module, each a phase of
  `phases`: the first steps of retrain's run, of retrain.inspect and of
  retrain.beam.

  Args:
    whole_run: a training run: the settings are checked, temporaries of
      killed runs beside the outputs removed and the bottlenecks' precision
      chosen (False: the module stays float, nothing is checked or healed).
    hash_files: hash every image here (False: keyed is None; the Beam job
      hashes on its workers).
  """
  phases = phases or phases_lib.Phases()
  targets, handles = None, None
  with phases('startup', since_start=True):
    if whole_run:
      handles = check_config(config)
      # Temporaries of killed runs beside our outputs go.
      leftovers.heal([config.outputs.saved_model_dir, config.outputs.output_labels,
                      config.outputs.output_graph, config.outputs.tflite_output_file,
                      config.outputs.report_dir])
    if config.data.multi_label:
      found = multilabel_data.load(config.data, config.crop,
                                   config.cache.bottleneck_dir)
      layout, crops, targets = found.layout, None, found.targets
    else:
      layout, crops = discover(config)  # crops: --crop_to_boxes, else None
  # Hashed before the module is loaded, so that a million files' digests
  # and the module's weights are not both held while hashing
  # (docs/scale.md); check_config has checked the module handle.
  keyed = None
  if hash_files:
    with phases('hashing'):
      keyed = hash_images(config, layout.dataset, crops)
  with phases('module'):
    float_module = load_module(config, handles)
  module = float_module
  # A multi-label run's bottlenecks stay float.
  if whole_run and not config.data.multi_label:
    with phases('precision'):
      module = choose_precision(config, layout.dataset, float_module, keyed,
                                crops)
      load_float_members(module)
  return Prepared(layout, crops, keyed, float_module, module,
                  precision_lib.describe(module), module_runner(config, module),
                  targets)


def discover(config: Config):
  """(layout, crops): the images and their classes (and a given split, if
  any); with --crop_to_boxes one example per box and their crops, else
  crops is None (retrain/data/boxes.py)."""
  layout, crops = boxes_lib.load_examples(config.data, config.crop)
  logging.info('Found %s in %s: %s.',
               names.plural(len(layout.dataset.images), 'image'),
               names.plural(len(layout.dataset.labels), 'class'),
               layout.description)
  return layout, crops


def load_module(config: Config, checked: Optional[Tuple[str, ...]] = None):
  """One module, or an ensemble of several (features/ensemble.py);
  checked: what check_config returned (the modules are then not parsed and
  safety-checked again)."""
  return ensemble_lib.load(config.module.tfhub_module, config.module.image_size,
                           config.module.module_cache_dir, trust=config.module.trust_module,
                           checked=checked)


def load_float_members(module) -> None:
  """Loads the SavedModel of each member of `module` that runs float now
  (its exports need it anyway), so one that cannot be loaded fails before
  training, not after; an int8 member's float module stays unloaded (its
  vectors and exports are its int8 model's).

  Raises:
    ModuleError: a float member's SavedModel cannot be loaded.
  """
  for member in ensemble_lib.members(module):
    if not member.quantization:
      features.ensure_loaded(member)


def module_runner(config: Config, module):
  """`module` as the bottlenecks (plain and distorted) run it: on TFLite
  when --bottleneck_runtime allows, converted on first use."""
  return tflite_runtime.deferred(module, config.cache.bottleneck_runtime,
                                 config.module.module_cache_dir)


def hash_images(config: Config, dataset, crops=None) -> tuple:
  """The cache key of every discovered image (its content hash, through
  the digest memo in bottleneck_dir): what bottlenecks_lib.cache_keys
  returns, for `bottlenecks(..., keyed=)`. Needs no module."""
  return bottlenecks_lib.content_keys(
      discover_lib.image_paths(dataset.images), config.cache.bottleneck_dir,
      boxes_lib.Crops.bottleneck_args(crops).get('key_suffixes'))


def choose_precision(config: Config, dataset, module, keyed: tuple,
                     crops=None):
  """`module` with each member at the precision --bottleneck_precision
  and the guard choose (retrain/bottlenecks/precision.py); float with
  --crop_to_boxes (the guard and the export check read whole images)."""
  if crops is not None:
    if config.cache.bottleneck_precision == 'int8':
      logging.warning('Using float bottlenecks: int8 bottlenecks do not '
                      'support crop_to_boxes yet.')
    return module
  probe = precision_lib.Probe(
      paths=discover_lib.image_paths(dataset.images), keyed=keyed,
      bottleneck_dir=config.cache.bottleneck_dir,
      batch_size=config.cache.bottleneck_batch_size,
      max_pixels=config.data.max_image_pixels)
  chosen = precision_lib.choose(module, config.cache.bottleneck_precision,
                                config.cache.bottleneck_runtime,
                                config.module.module_cache_dir, probe,
                                fine_tune=config.finetune.fine_tune)
  logging.info('Bottleneck precision: %s.', precision_lib.describe(chosen))
  return chosen
