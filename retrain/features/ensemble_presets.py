"""Ensemble presets and the parsing of `--tfhub_module` lists (no
TensorFlow, so `--list_modules` and flag checks stay fast).

`--tfhub_module` is one module (preset name, handle or folder), an ensemble
preset name, or several of those separated by commas; see
retrain/features/ensemble.py for what an ensemble computes.
"""

from __future__ import annotations

import textwrap
from typing import List

from retrain.errors import ModuleError

SEPARATOR = ','

# Ensembles worth having, measured with bench/accuracy.py on flowers_sample
# and sign_language_digits (docs/accuracy.md): each is more accurate than
# any of its members alone, at the sum of the members' bottleneck cost.
ENSEMBLE_PRESETS = {
    'efficientnet_lite0+lite1': ('efficientnet_lite0', 'efficientnet_lite1'),
    'efficientnet_lite0+lite2': ('efficientnet_lite0', 'efficientnet_lite2'),
    'efficientnet_lite0+lite1+lite2': ('efficientnet_lite0',
                                       'efficientnet_lite1',
                                       'efficientnet_lite2'),
}

# The default --tfhub_module (retrain/config/): the most accurate of the
# bundled configurations; `efficientnet_lite0` alone is the fast one
# (docs/accuracy.md has both, measured).
DEFAULT_ENSEMBLE = 'efficientnet_lite0+lite1+lite2'


def member_handles(spec: str) -> List[str]:
  """The module handles named by `--tfhub_module`, in order.

  Args:
    spec: one handle, an ensemble preset name, or handles separated by
      commas (each may itself be an ensemble preset).

  Raises:
    ModuleError: an empty entry, or the same module twice.
  """
  handles = []
  for part in spec.split(SEPARATOR):
    part = part.strip()
    if not part:
      raise ModuleError(f'tfhub_module={spec!r} has an empty entry: give '
                        'module names separated by single commas, e.g. '
                        'efficientnet_lite0,efficientnet_lite2.', fields=('tfhub_module',))
    handles.extend(ENSEMBLE_PRESETS.get(part, (part,)))
  repeated = sorted({h for h in handles if handles.count(h) > 1})
  if repeated:
    raise ModuleError(f'tfhub_module={spec!r} names {", ".join(repeated)} '
                      'more than once; list each module once.', fields=('tfhub_module',))
  return handles


def format_ensemble_list(default: str = DEFAULT_ENSEMBLE) -> str:
  """The ensemble presets, for `--list_modules`."""
  lines = ['Ensembles (the head trains on the members\' vectors side by side):']
  for name, members in ENSEMBLE_PRESETS.items():
    mark = ' (default)' if name == default else ''
    lines.append(f'  {name}{mark}: {" + ".join(members)}')
  lines.extend(textwrap.wrap(
      'Any comma-separated list of modules works too, e.g. '
      '--tfhub_module efficientnet_lite0,/path/to/saved_model. The fast '
      'configuration is --tfhub_module efficientnet_lite0 (about 4x fewer '
      'bottleneck computations than the default ensemble).', width=79))
  return '\n'.join(lines)
