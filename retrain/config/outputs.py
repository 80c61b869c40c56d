"""The settings of what a run writes (`Outputs`), the confidence and
novelty stored in every export (`Deploy`) and runs too large for memory
(`Scale`). See retrain/config/__init__.py."""

from __future__ import annotations

import pathlib

from retrain.common import names, settings

# The declarations of this module's groups, and the constants they name.
_TABLE = pathlib.Path(__file__).with_name('settings.toml')
_CONSTANTS = {'names': names}


@settings.declared_in(_TABLE, 'Outputs', _CONSTANTS)
class Outputs:
  """What a run writes: its folder, the SavedModel, reports, the other export
  formats and the check of quantized TFLite models (retrain/export/)."""


@settings.declared_in(_TABLE, 'Deploy', _CONSTANTS)
class Deploy:
  """The confidence stored in every export: calibration, the rejection
  threshold and the novelty score (retrain/head/calibration.py,
  retrain/head/novelty.py)."""


@settings.declared_in(_TABLE, 'Scale', _CONSTANTS)
class Scale:
  """Runs too large for memory (docs/scale.md)."""

