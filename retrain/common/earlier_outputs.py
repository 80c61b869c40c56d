"""Moving earlier outputs aside instead of overwriting them.

Only at paths a user gave (by default each run writes into a new run
folder of its own, retrain/common/runs.py, where nothing earlier exists):
before an output is replaced, the earlier one is renamed to
`<path>.previous-<date>-<time>-<microseconds>`. Nothing is ever deleted; the
run holds a lock on the path, so the earlier output is no live run's.
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
  """A not-yet-existing path `<prefix><YYYYmmdd-HHMMSS-microseconds>`.

  Microseconds make names unique in practice and make their sort order the
  order in which they were made.
  """
  now = time.time()
  return unique_path(prefix + time.strftime('%Y%m%d-%H%M%S', time.localtime(
      now)) + f'-{int(now * 1e6) % 1000000:06d}')


def move_aside(path: str) -> Optional[str]:
  """Renames an existing file or folder to `<path>.previous-<time>`.

  Returns the new path, or None when there was nothing at `path`.
  """
  if not os.path.lexists(path):
    return None
  prefix = f'{path.rstrip(os.sep)}.previous-'
  aside = stamped(prefix)
  os.rename(path, aside)
  logging.info('Moved the earlier %s to %s.', path, aside)
  return aside
