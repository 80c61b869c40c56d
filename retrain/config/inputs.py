"""The settings of a run's input: the images and their labels (`Data`),
crops to annotated boxes (`Crop`), the feature module (`Module`) and the
bottleneck cache (`Cache`). See retrain/config/__init__.py."""

from __future__ import annotations

import os
import pathlib

from retrain import image_header
from retrain.common import names, settings
from retrain.features import ensemble_presets, presets

# The environment variables the command line reads for two defaults (the
# module cache, and the per-user cache folder of the bottlenecks).
MODULE_CACHE_ENV = 'RETRAIN_MODULE_CACHE'
CACHE_HOME_ENV = 'XDG_CACHE_HOME'
_BOTTLENECK_DIR = os.path.join('~', '.cache', 'retrain', 'bottlenecks')


# The declarations of this module's groups, and the constants they name.
_TABLE = pathlib.Path(__file__).with_name('settings.toml')
_CONSTANTS = {'names': names, 'presets': presets,
              'ensemble_presets': ensemble_presets,
              'image_header': image_header,
              'MODULE_CACHE_ENV': MODULE_CACHE_ENV,
              'CACHE_HOME_ENV': CACHE_HOME_ENV,
              'BOTTLENECK_DIR': _BOTTLENECK_DIR}


@settings.declared_in(_TABLE, 'Data', _CONSTANTS)
class Data:
  """The images, their labels and the split (retrain/data/)."""


@settings.declared_in(_TABLE, 'Crop', _CONSTANTS)
class Crop:
  """Crops to annotated boxes (retrain/data/boxes.py, docs/boxes.md)."""


@settings.declared_in(_TABLE, 'Module', _CONSTANTS)
class Module:
  """The feature module (retrain/features/)."""


@settings.declared_in(_TABLE, 'Cache', _CONSTANTS)
class Cache:
  """The bottleneck vectors and their cache (retrain/bottlenecks/)."""

