"""Moving earlier outputs aside instead of overwriting them.

Only at paths a user gave (by default each run writes into a new run
folder of its own, retrain/common/runs.py, where nothing earlier exists):
before an output is replaced, the earlier one is renamed to
`<path>.previous-<date>-<time>-<microseconds>`. An earlier output is never
deleted (a path given by the user may hold another job's model); the run
holds a lock on the path, so the earlier output is no live run's. Only
earlier TensorBoard runs moved aside beside a given --summaries_dir are
bounded (`prune`, KEEP_PREVIOUS newest kept): they are logs, not models.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from typing import Optional

from absl import logging

# Earlier versions kept per output path (the newest ones).
KEEP_PREVIOUS = 3


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


def prune(prefix: str) -> None:
  """Removes all but the KEEP_PREVIOUS newest `<prefix><time>` versions
  (logged)."""
  # Names sort by time (see `stamped`).
  older = sorted(glob.glob(glob.escape(prefix) + '*'))[:-KEEP_PREVIOUS]
  for old in older:
    if os.path.isdir(old) and not os.path.islink(old):
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.remove(old)
    logging.info('Removed %s (only the %d newest earlier versions are kept).',
                 old, KEEP_PREVIOUS)
