"""The one home of every setting: its default, help, choices and bounds.

A run's settings come in groups named after the steps that use them
(`Data`, `Crop`, `Module`, `Cache`, `Head`, `Distort`, `FineTune`,
`Outputs`, `Deploy`, `Scale`); `Config` holds one of each and each step
receives its own group. Every field is declared once with
`retrain.common.settings.setting`, in inputs.py (Data, Crop, Module,
Cache), training.py (Head, Distort, FineTune) and outputs.py (Outputs,
Deploy, Scale); the command-line flags (retrain.py's names: a field's name
is its flag's), their checks and docs/flags.md are made from these
declarations (retrain/command_line.py).

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
from typing import Dict

from retrain.common import settings
from retrain.common.settings import setting
from retrain.config.inputs import CACHE_HOME_ENV, MODULE_CACHE_ENV, Cache, Crop, Data, Module
from retrain.config.outputs import Deploy, Outputs, Scale
from retrain.config.training import DISTORTIONS, Distort, FineTune, Head

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


@dataclasses.dataclass(frozen=True)
class InspectConfig:
  """What `python -m retrain.inspect` (docs/inspect.md) adds to a Config's
  data settings."""
  # Where report.html and report.json go: retrain's --output_dir, with this
  # default when it is not given.
  output_dir: str = '/tmp/retrain_inspect'
  # EfficientNet-Lite0 on flowers_sample (bench/near_duplicates.py): above
  # 0.90 are 52% of 100 re-encoded copies (70% of those cropped by 2%, 12%
  # of those shrunk to 60%) and 2 of the 500 distinct photos; 0.85 finds
  # 78% of copies but 11 distinct photos, 0.92 41% and none. A person looks
  # at every pair, so 0.90.
  near_duplicate_cosine: float = setting(0.90,
      'Cosine similarity of feature vectors above which two images are '
      'near-duplicates.')
  # Memory is block x n x 4 bytes (100k images: 100 MB), never n x n.
  near_duplicate_block: int = setting(256,
      'Rows of the similarity matrix computed at once (memory: this x '
      'images x 4 bytes).')
  label_error_folds: int = setting(5,
      'Folds of the out-of-fold head that finds suspected label errors.')
  label_error_given: float = setting(0.2,
      'Suspect an image whose label gets less than this probability...')
  label_error_other: float = setting(0.6,
      '...while another class gets more than this.')
  # Robust standard deviations: the median absolute deviation (MAD).
  outlier_mad: float = setting(5.0,
      'Outlier: distance to the nearest class centre this many robust '
      'standard deviations above the median.')
  imbalance_warning: float = setting(3.0,
      'Warn when the largest class has this many times the examples of '
      'the smallest.')
  contact_sheet_images: int = setting(40,
      'Thumbnails per class on the contact sheets.')


INSPECT_DEFAULTS = InspectConfig()


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """What `python -m retrain.evaluate` (docs/results-page.md) adds to a
  Config's data settings."""
  model: str = setting('',
      'The export to judge: a SavedModel folder, or a frozen graph (.pb), '
      'TFLite (.tflite) or ONNX (.onnx) file.')
  # Where report.html and report.json go: retrain's --output_dir, with this
  # default when it is not given.
  output_dir: str = 'retrain_evaluation'
  subset: str = setting('all',
      'Judge on all photos, or on one set of the stable hash split at '
      '--validation_percentage / --testing_percentage (the set a run with '
      'those values held out).',
      choices=('all', 'train', 'validation', 'test'))
  heat_maps: bool = setting(True,
      'Draw occlusion heat maps through the export for the photo grid of '
      'the page.')


EVALUATE_DEFAULTS = EvaluateConfig()
