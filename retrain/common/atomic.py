"""Writing files so that no reader ever sees half of one.

Every file is written under a temporary name in its folder and renamed over
the target with os.replace (atomic on POSIX and Windows), so a crash or a
concurrent reader finds the old file or the new one, never a part. New files
get mode 0644 less the umask (what `open` gives), whatever wrote them.

    atomic.write_text(path, text)
    atomic.write_json(path, {'a': 1})
    with atomic.replacing(path) as tmp:   # for writers that want a path
      h5py.File(tmp, 'w') ...
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from bottleneck_cache import temporaries
from retrain.common import strict_json

# Temporary names start with this (and hold the writer's pid), so that a
# folder's leftovers of a killed process can be told apart and removed.
TMP_PREFIX = '.tmp-'

_MODE = 0o644


def temporary_name(path: str) -> str:
  """A fresh temporary path beside `path`:
  .tmp-<pid>@<host>~<random>-<name>. The owner (process and host) lets a
  later run tell a dead run's leftover from a live one's work, also on a
  folder shared between hosts (retrain.common.leftovers)."""
  directory, name = os.path.split(os.path.abspath(path))
  return os.path.join(directory,
                      f'{TMP_PREFIX}{temporaries.owner_tag()}-{name}')


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` (its folder created); when the
  block ends normally the temporary file replaces `path`, when it raises
  the temporary file is removed and `path` is untouched."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = temporary_name(path)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_bytes(path: str, data: bytes) -> str:
  """Writes `data` to `path` atomically; returns `path`."""
  with replacing(path) as tmp:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _MODE)
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
  return path


def write_text(path: str, text: str) -> str:
  """Writes `text` as UTF-8 to `path` atomically, newlines as given."""
  return write_bytes(path, text.encode('utf-8'))


def write_json(path: str, value: Any, **dump_args) -> str:
  """Writes `value` as strict JSON (strict_json.dumps: NaN as null; indent
  2 unless given) to `path` atomically."""
  dump_args.setdefault('indent', 2)
  return write_text(path, strict_json.dumps(value, **dump_args))
