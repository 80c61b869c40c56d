"""Moving earlier outputs aside instead of overwriting them.

Nothing a user made is lost: before an output is replaced, the earlier one
is renamed to `<path>.previous-<time>` (with `-1`, `-2`, ... added when two
runs finish within the same second).
"""

from __future__ import annotations

import os
import time
from typing import Optional

from absl import logging


def unique_path(base: str) -> str:
  """`base`, or `base-1`, `base-2`, ... whichever does not exist yet."""
  candidate, n = base, 0
  while os.path.lexists(candidate):
    n += 1
    candidate = f'{base}-{n}'
  return candidate


def stamped(prefix: str) -> str:
  """A not-yet-existing path `<prefix><YYYYmmdd-HHMMSS>[-n]`."""
  return unique_path(prefix + time.strftime('%Y%m%d-%H%M%S'))


def move_aside(path: str) -> Optional[str]:
  """Renames an existing file or folder to `<path>.previous-<time>`.

  Returns the new path, or None when there was nothing at `path`.
  """
  if not os.path.lexists(path):
    return None
  aside = stamped(f'{path.rstrip(os.sep)}.previous-')
  os.rename(path, aside)
  logging.info('Moved the earlier %s to %s.', path, aside)
  return aside
