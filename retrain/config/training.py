"""The settings of training: the head (`Head`), the distorted copies it
trains on (`Distort`) and fine-tuning the module with it (`FineTune`). See
retrain/config/__init__.py."""

from __future__ import annotations

import pathlib

from retrain.common import names, settings
from retrain.head import auto as head_auto

# The six distortion settings of Distort (distorted_copies is not one).
DISTORTIONS = ('flip_left_right', 'random_crop', 'random_scale',
               'random_brightness', 'random_rotation', 'random_shift')


# The declarations of this module's groups, and the constants they name.
_TABLE = pathlib.Path(__file__).with_name('settings.toml')
_CONSTANTS = {'names': names, 'head_auto': head_auto}


@settings.declared_in(_TABLE, 'Head', _CONSTANTS)
class Head:
  """Training the head (retrain/head/): retrain.py's training flags, the
  options beyond them (all off, so head_solver 'sgd' trains exactly as
  retrain.py did; on flowers_sample none beat the defaults clearly enough
  to become one, docs/training.md) and the converging solver
  (retrain/head/solver.py, docs/accuracy.md)."""


@settings.declared_in(_TABLE, 'Distort', _CONSTANTS)
class Distort:
  """Distorted copies of the training images
  (retrain/bottlenecks/distort.py)."""

  def any(self) -> bool:
    """True if any distortion is switched on."""
    return any(bool(getattr(self, name)) for name in DISTORTIONS)

  def describe(self) -> dict:
    """The six distortions as a JSON-serialisable dict (part of the
    cache namespace of the distorted copies)."""
    return {name: (bool(v) if isinstance(v, bool) else float(v))
            for name in DISTORTIONS for v in [getattr(self, name)]}


@settings.declared_in(_TABLE, 'FineTune', _CONSTANTS)
class FineTune:
  """Fine-tuning the top of the module (retrain/finetune/,
  docs/fine_tuning.md)."""

