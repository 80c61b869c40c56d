"""What the loaders of every format share: their error, reading a JSON
file, choosing the input size and the safety check of a graph."""

from __future__ import annotations

import json
import os
from typing import Optional, Tuple

from retrain.errors import RetrainError


class LabelImageError(RetrainError, ValueError):
  """The model or the images cannot be used as given."""


def read_json(path: str) -> Optional[dict]:
  """The JSON object in `path`, None when there is no such file."""
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def choose_size(model_size, height: Optional[int], width: Optional[int],
                path: str) -> Tuple[int, int]:
  """The input size: the model's own when fixed, else the flags'."""
  fixed = tuple(model_size) if model_size and None not in model_size else None
  asked = (height or (fixed or (None, None))[0],
           width or (fixed or (None, None))[1])
  if fixed and asked != fixed:
    raise LabelImageError(
        f'{path} takes {fixed[0]}x{fixed[1]} images, not '
        f'{asked[0]}x{asked[1]}: drop --input_height/--input_width.')
  if None in asked:
    raise LabelImageError(f'{path} accepts any image size: pass '
                          '--input_height and --input_width.')
  return int(asked[0]), int(asked[1])


def check_model(path: str, trust: bool) -> None:
  """Refuses a graph that can act (retrain/features/module_safety.py)
  unless trust is set (--trust_module)."""
  from retrain.features import module_safety
  module_safety.check_model(path, trust)
