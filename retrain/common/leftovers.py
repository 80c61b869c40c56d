"""Leftovers of killed runs: temporaries beside the outputs, removed later.

Every output is written under a temporary name beside it and renamed into
place when complete (`retrain.common.atomic` for files, `temporary_for`
below for folders such as the SavedModel); a failure removes the
temporary. A run killed before the rename leaves it behind. Temporary
names hold their owner, `.tmp-<pid>@<host>~<id>-<name>`
(`bottleneck_cache.temporaries`), so `heal(paths)`, called by the pipeline
before it writes anything, removes those of dead runs (this host's dead
processes, or older than an hour), never a live run's, never a file
without such a tag (output folders may be shared, /tmp), and logs what it
removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterable, Iterator, List

from bottleneck_cache import temporaries
from retrain.common import atomic


@contextlib.contextmanager
def temporary_for(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; removes it if the block fails.

  For outputs that are folders (or that a library writes itself): the
  block writes the temporary and renames it into place; whatever is left
  at the temporary name when the block raises is removed.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = atomic.temporary_name(path)
  try:
    yield tmp
  except BaseException:
    if os.path.isdir(tmp) and not os.path.islink(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.lexists(tmp):
      os.remove(tmp)
    raise


def heal(paths: Iterable[str]) -> List[str]:
  """Removes stale temporaries beside the outputs `paths` (files or
  folders) and inside those that are folders; returns the paths removed."""
  removed, folders = [], set()
  for path in paths:
    if not path:
      continue
    path = os.path.abspath(path.rstrip('/\\') or path)
    folders.add(os.path.dirname(path))
    if os.path.isdir(path):
      folders.add(path)
  for folder in sorted(folders):
    removed += temporaries.remove_stale(folder, atomic.TMP_PREFIX,
                                        'unfinished output', only_tagged=True)
  return removed
