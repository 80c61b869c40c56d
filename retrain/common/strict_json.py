"""Strict JSON: NaN and infinities are written as null.

Python's json writes `NaN` and `Infinity`, which are not JSON: browsers,
jq and most other readers refuse the whole file. Every JSON file retrain
and label_image write (metadata, reports, results) goes through `dumps`.
Imports only the standard library (label_image uses it).
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
  """`value` (dicts, lists, tuples, numbers, strings) with every NaN and
  infinity replaced by None."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite(v) for v in value]
  return value


def dumps(value: Any, **dump_args) -> str:
  """json.dumps of finite(value), refusing anything else non-finite."""
  return json.dumps(finite(value), allow_nan=False, **dump_args)
