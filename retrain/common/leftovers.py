"""Outputs written whole or not at all, and the leftovers of killed runs.

Every output file or folder is first written under a temporary name beside
it, `<name>.tmp-<pid>@<host>~<id>` (see `bottleneck_cache.temporaries`),
and renamed into place only when complete; a failure removes the
temporary. A run killed before the rename leaves the temporary behind;
`heal(paths)` (called by the pipeline before it writes anything) removes
those of dead runs, judged by host and age, never those of a run still
writing, and logs what it removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterable, Iterator, List

from absl import logging

from bottleneck_cache import temporaries

TMP_MARK = '.tmp-'


def temporary_name(path: str) -> str:
  """A temporary name beside `path` that says which process owns it."""
  return f'{path}{TMP_MARK}{temporaries.owner_tag()}'


@contextlib.contextmanager
def temporary_for(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; removes it if the block fails.

  The block writes the temporary (a file or a folder) and renames it into
  place itself; whatever is left at the temporary name when the block
  raises is removed, so no half-written output stays behind.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = temporary_name(path)
  try:
    yield tmp
  except BaseException:
    if os.path.isdir(tmp) and not os.path.islink(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.lexists(tmp):
      os.remove(tmp)
    raise


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` whole or not at all (temporary and rename)."""
  with temporary_for(path) as tmp:
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  """Writes UTF-8 `text` (no newline translation) whole or not at all."""
  write_bytes(path, text.encode('utf-8'))


def heal(paths: Iterable[str]) -> List[str]:
  """Removes stale temporaries of the outputs `paths` (files or folders).

  Looks beside each path for `<name>.tmp-*` and, for folders, inside it for
  `.tmp-*` (the reports' temporaries); returns the paths removed.
  """
  removed = []
  for path in paths:
    if not path:
      continue
    path = os.path.abspath(path.rstrip('/\\') or path)
    removed += temporaries.remove_stale(
        os.path.dirname(path), os.path.basename(path) + TMP_MARK,
        f'unfinished output ({os.path.basename(path)})')
    if os.path.isdir(path):
      removed += _remove_stale_inside(path)
  return removed


def _remove_stale_inside(directory: str) -> List[str]:
  """Stale `<anything>.tmp-<owner>` entries of a folder of outputs."""
  removed = []
  for name in os.listdir(directory):
    head, mark, tag = name.partition(TMP_MARK)
    if not mark:
      continue
    full = os.path.join(directory, name)
    try:
      mtime = os.lstat(full).st_mtime
    except OSError:
      continue
    if temporaries.is_stale(tag, mtime) and temporaries.remove_path(full):
      removed.append(full)
  if removed:
    logging.info('Removed %d unfinished output file(s) of runs that ended '
                 'without finishing from %s (e.g. %s).', len(removed),
                 directory, os.path.basename(removed[0]))
  return removed
