"""The record of a feature module's sizes in the module cache.

The first full load of a module (retrain/features/modules.py) writes
`described/<fingerprint>.json` into the module cache: its fixed input size
(or null when it takes any) and its vector size D at each input size it
was loaded at, {"format": 1, "fingerprint": ..., "fixed_input_size":
[H, W] | null, "output_dims": {"HxW": D}}. Later loads read it instead of
loading the SavedModel; the fingerprint covers the module's graph and
variables index, so a changed module never matches an old record.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from absl import logging

from retrain.common import atomic
from retrain.features import presets

# A record is a few hundred bytes; a longer file is not one.
_RECORD_DIR = 'described'
_RECORD_FORMAT = 1
_MAX_RECORD_BYTES = 4096


def record_path(fingerprint: str, cache_dir: Optional[str] = None) -> str:
  """Where the record of the module with `fingerprint` is kept."""
  return os.path.join(presets.module_cache_dir(cache_dir), _RECORD_DIR,
                      f'{fingerprint}.json')


def size_key(size) -> str:
  """'HxW' of an input size (H, W): the key of its output_dims entry."""
  return f'{int(size[0])}x{int(size[1])}'


def _positive_ints(value, count: int) -> bool:
  return (isinstance(value, list) and len(value) == count and
          all(type(v) is int and v > 0 for v in value))


def read_record(path: str, fingerprint: str) -> Optional[dict]:
  """The record at `path` as {'fixed_input_size': [H, W] or None,
  'output_dims': {'HxW': D}}, or None when it is missing, too long, not
  one, or of another module (then the module is loaded to describe it)."""
  try:
    with open(path, 'rb') as f:
      data = f.read(_MAX_RECORD_BYTES + 1)
    record = json.loads(data) if len(data) <= _MAX_RECORD_BYTES else None
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    logging.info('Ignoring the module record %s (%s).', path, e)
    return None
  dims = isinstance(record, dict) and record.get('output_dims')
  fixed = isinstance(record, dict) and record.get('fixed_input_size')
  if not (isinstance(record, dict) and
          record.get('format') == _RECORD_FORMAT and
          record.get('fingerprint') == fingerprint and
          (fixed is None or _positive_ints(fixed, 2)) and
          isinstance(dims, dict) and
          all(isinstance(k, str) and _positive_ints([v], 1)
              for k, v in dims.items())):
    logging.info('Ignoring the module record %s: not a record of module %s.',
                 path, fingerprint)
    return None
  return {'fixed_input_size': fixed, 'output_dims': dims}


def write_record(path: str, fingerprint: str, fixed, size, dim: int,
                 old: Optional[dict]) -> None:
  """Adds (size -> dim) to `old` (what read_record returned for `path`,
  or None) and writes it to `path`; a cache that cannot be written only
  means the next run loads the module to describe it."""
  old = old or {'output_dims': {}}
  record = {'format': _RECORD_FORMAT, 'fingerprint': fingerprint,
            'fixed_input_size': [int(fixed[0]), int(fixed[1])] if fixed
            else None,
            'output_dims': dict(old['output_dims'], **{size_key(size): dim})}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write_json(path, record)
  except OSError as e:
    logging.info('Could not write the module record %s (%s).', path, e)
