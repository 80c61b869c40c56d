"""The one home of every setting: its default, help, choices and bounds.

A run's settings come in groups named after the steps that use them
(`Data`, `Crop`, `Module`, `Cache`, `Head`, `Distort`, `FineTune`,
`Outputs`, `Deploy`, `Scale`); `Config` holds one of each and each step
receives its own group. The groups are classes of inputs.py (Data, Crop,
Module, Cache), training.py (Head, Distort, FineTune) and outputs.py
(Outputs, Deploy, Scale); every setting of them is declared once, in
settings.toml beside this file: its type, default, help, choices and
bounds, and the reason for its default. The command-line flags
(retrain.py's names: a setting's name is its flag's), their checks and
docs/flags.md are made from these declarations (retrain/command_line.py,
retrain/common/settings.py). Adding a setting is a table in settings.toml
plus the code that uses it.

`Config.replace(name=value, ...)` takes the flat names (`config.replace(
learning_rate=0.1, fine_tune=True)`), so tests and Python callers start
from `DEFAULTS` and override a few settings without knowing the groups.
Nothing here reads flags or the environment.

The defaults of the flags retrain.py had are retrain.py's own, so a command
line written for retrain.py means the same thing here. Where we differ the
comment says why.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Dict

from retrain.common import settings
from retrain.config.inputs import CACHE_HOME_ENV, MODULE_CACHE_ENV, Cache, Crop, Data, Module
from retrain.config.outputs import Deploy, Outputs, Scale
from retrain.config.training import DISTORTIONS, Distort, FineTune, Head
from retrain.data import split as split_lib

__all__ = ['CACHE_HOME_ENV', 'DEFAULTS', 'DISTORTIONS', 'EVALUATE_DEFAULTS',
           'GROUPS', 'GROUP_OF', 'INSPECT_DEFAULTS', 'MODULE_CACHE_ENV',
           'Cache', 'Config', 'Crop', 'Data', 'Deploy', 'Distort',
           'EvaluateConfig', 'FineTune', 'Head', 'InspectConfig', 'Module',
           'Outputs', 'Scale']


# The groups of a Config, by attribute name, in the order of docs/flags.md.
GROUPS = {'data': Data, 'crop': Crop, 'module': Module, 'cache': Cache,
          'head': Head, 'distort': Distort, 'outputs': Outputs,
          'finetune': FineTune, 'deploy': Deploy, 'scale': Scale}
# Each setting's group: {'learning_rate': 'head', ...}.
GROUP_OF = settings.flat_names(GROUPS)


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a retraining run needs, one group per step; see
  docs/flags.md for each setting."""
  data: Data = dataclasses.field(default_factory=Data)
  crop: Crop = dataclasses.field(default_factory=Crop)
  module: Module = dataclasses.field(default_factory=Module)
  cache: Cache = dataclasses.field(default_factory=Cache)
  head: Head = dataclasses.field(default_factory=Head)
  distort: Distort = dataclasses.field(default_factory=Distort)
  outputs: Outputs = dataclasses.field(default_factory=Outputs)
  finetune: FineTune = dataclasses.field(default_factory=FineTune)
  deploy: Deploy = dataclasses.field(default_factory=Deploy)
  scale: Scale = dataclasses.field(default_factory=Scale)

  def replace(self, **changes) -> 'Config':
    """A copy with `changes` applied: settings by their flat names
    (`learning_rate=0.1`), or whole groups by theirs (`head=Head(...)`;
    applied first).

    Raises:
      TypeError: a name is neither a setting nor a group.
    """
    unknown = sorted(set(changes) - set(GROUP_OF) - set(GROUPS))
    if unknown:
      raise TypeError(f'Config has no setting {", ".join(unknown)}.')
    groups = {name: changes[name] for name in GROUPS if name in changes}
    flat: Dict[str, dict] = {}
    for name, value in changes.items():
      if name in GROUP_OF:
        flat.setdefault(GROUP_OF[name], {})[name] = value
    for group, values in flat.items():
      groups[group] = dataclasses.replace(
          groups.get(group, getattr(self, group)), **values)
    return dataclasses.replace(self, **groups)

  def get(self, name: str, *default):
    """A setting by its flat name (`config.get('learning_rate')`); with a
    default, that for a name that is no setting."""
    if name not in GROUP_OF:
      if default:
        return default[0]
      raise AttributeError(f'Config has no setting {name!r}')
    return getattr(getattr(self, GROUP_OF[name]), name)

  def flat(self) -> Dict[str, object]:
    """{setting name: value} of every setting."""
    return {name: self.get(name) for name in GROUP_OF}

  def check(self) -> None:
    """Raises SettingError for a setting outside its choices or bounds."""
    for group in GROUPS:
      settings.check(getattr(self, group))

  @classmethod
  def from_flat(cls, **values) -> 'Config':
    """The defaults with `values` (flat setting names) replacing some."""
    return cls().replace(**values)


DEFAULTS = Config()

# The declarations of the settings inspect and evaluate add.
_TABLE = pathlib.Path(__file__).with_name('settings.toml')
# Evaluate judges all photos, or one set of the stable hash split.
_CONSTANTS: Dict[str, object] = {'EVALUATE_SUBSETS':
                                 ('all',) + split_lib.SUBSETS}


@settings.declared_in(_TABLE, 'InspectConfig', _CONSTANTS)
class InspectConfig:
  """What `python -m retrain.inspect` (docs/inspect.md) adds to a Config's
  data settings."""
  # Where report.html and report.json go: retrain's --output_dir, with this
  # default when it is not given.
  output_dir: str = 'retrain_inspect'


INSPECT_DEFAULTS = InspectConfig()


@settings.declared_in(_TABLE, 'EvaluateConfig', _CONSTANTS)
class EvaluateConfig:
  """What `python -m retrain.evaluate` (docs/results-page.md) adds to a
  Config's data settings."""
  # Where report.html and report.json go: retrain's --output_dir, with this
  # default when it is not given.
  output_dir: str = 'retrain_evaluation'


EVALUATE_DEFAULTS = EvaluateConfig()
