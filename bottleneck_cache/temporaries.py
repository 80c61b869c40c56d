"""Temporary names that say who made them, and when they are stale.

A temporary file or folder (a cache shard being written, an export being
assembled) is named with its owner, `<pid>@<host>`, so a later run can tell
the leftovers of a dead run from the work in progress of a live one, also
when the folder is shared between hosts (NFS):

- made on this host: stale when its process is gone, or when it is older
  than `STALE_AFTER_SECONDS` (a process id can be reused by another
  program long after the run that wrote the file died);
- made on another host (whose processes we cannot see), or of unknown
  owner: stale only when older than `STALE_AFTER_SECONDS`.

No temporary of this project lives that long: a shard is written in well
under a second, a whole export in under a few minutes.

No TensorFlow here: the cache uses it, and retrain's exports too.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from typing import List, Optional, Tuple

from absl import logging

# An hour: at least ten times the longest write of any temporary here.
STALE_AFTER_SECONDS = 3600.0
# The hostname may hold '-' and '.', never '@' or '~'.
_OWNER_END = '~'


def hostname() -> str:
  """This host's name, as written into temporary names ('~' removed)."""
  return socket.gethostname().replace(_OWNER_END, '_') or 'unknown'


def owner_tag() -> str:
  """`<pid>@<host>~<unique>`: the part after a temporary name's prefix."""
  return f'{os.getpid()}@{hostname()}{_OWNER_END}{uuid.uuid4().hex[:12]}'


def parse_owner(tag: str) -> Tuple[Optional[int], Optional[str]]:
  """(pid, host) from the text after a temporary's prefix, or (None, None)."""
  owner, sep, _ = tag.partition(_OWNER_END)
  pid, at, host = owner.partition('@')
  if not (sep and at and pid.isdigit() and host):
    return None, None
  return int(pid), host


def process_alive(pid: int) -> bool:
  """Whether a process with this id exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # It exists, owned by someone else.
  except OSError:
    return False
  return True


def is_stale(tag: str, mtime: float, now: Optional[float] = None,
             max_age: float = STALE_AFTER_SECONDS) -> bool:
  """Whether a temporary of owner `tag`, modified at `mtime`, is abandoned."""
  now = time.time() if now is None else now
  if now - mtime > max_age:
    return True
  pid, host = parse_owner(tag)
  if pid is None or host != hostname():
    return False  # Another host's (or unknown) work: trust age only.
  return not process_alive(pid)


def remove_path(path: str) -> bool:
  """Removes a file or a folder tree; False if it could not be removed."""
  try:
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  except FileNotFoundError:
    return True  # Someone else removed it first.
  except OSError:
    return False
  return True


def remove_stale(directory: str, prefix: str, what: str = 'temporary',
                 now: Optional[float] = None,
                 only_tagged: bool = False) -> List[str]:
  """Removes entries `<prefix><owner tag>...` of `directory` that are stale.

  Args:
    directory: the folder to look in (missing: nothing to do).
    prefix: the name start of the temporaries, e.g. '.tmp-'.
    what: words for the log line.
    now: the time to judge age by (tests).
    only_tagged: leave entries without an owner tag alone, whatever their
      age (for folders shared with other programs, such as /tmp).

  Returns:
    The paths removed; each is logged.
  """
  try:
    names = os.listdir(directory)
  except OSError:
    return []
  removed = []
  for name in names:
    if not name.startswith(prefix):
      continue
    if only_tagged and parse_owner(name[len(prefix):])[0] is None:
      continue
    path = os.path.join(directory, name)
    try:
      mtime = os.lstat(path).st_mtime
    except OSError:
      continue
    if not is_stale(name[len(prefix):], mtime, now):
      continue
    if remove_path(path):
      removed.append(path)
  if removed:
    logging.info('Removed %d %s file(s) left by runs that ended without '
                 'finishing (e.g. %s).', len(removed), what, removed[0])
  return removed
