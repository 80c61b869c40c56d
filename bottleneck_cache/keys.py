"""Cache keys from file contents, with a stat-keyed memo of digests.

A vector is keyed by the SHA-256 of its image file's bytes, so renaming a
file keeps its vector and editing it does not. Hashing means reading every
image on every run, which for a large folder costs more than the whole
warm run should; `DigestMemo` remembers each file's digest together with
its size, modification time (ns) and inode, and re-reads only files where
any of those changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from typing import BinaryIO, Optional

from absl import logging

from bottleneck_cache import atomic, temporaries

_BLOCK = 1 << 20
MEMO_FILE = 'file_digests.json'
# Temporaries of the memo, beside it at the cache root.
TMP_PREFIX = '.tmp-digests-'
_MEMO_VERSION = 1


def stream_digest(f: BinaryIO) -> str:
  """SHA-256 hex digest of everything left in a binary file object: the
  cache key of an image (any file system's reader will do, e.g. Beam's
  FileSystems.open)."""
  digest = hashlib.sha256()
  while True:
    block = f.read(_BLOCK)
    if not block:
      break
    digest.update(block)
  return digest.hexdigest()


def file_digest(path: str) -> str:
  """SHA-256 hex digest of a file's bytes (raises OSError if unreadable)."""
  with open(path, 'rb') as f:
    return stream_digest(f)


class DigestMemo:
  """Digests of files, remembered in `<root>/file_digests.json`.

  Thread-safe for concurrent `digest` calls (dict updates are atomic in
  CPython); call `save` once afterwards.
  """

  def __init__(self, root: Optional[str]):
    self.path = os.path.join(root, MEMO_FILE) if root else None
    self._memo: dict = {}
    self._dirty = False
    if self.path and os.path.exists(self.path):
      try:
        with open(self.path, encoding='utf-8') as f:
          data = json.load(f)
        if data.get('version') == _MEMO_VERSION:
          self._memo = data['files']
      except (OSError, ValueError, KeyError, AttributeError) as e:
        logging.warning('Ignoring unreadable digest memo %s (%s); files will '
                        'be hashed again.', self.path, e)

  def digest(self, path: str) -> str:
    """SHA-256 of the file at `path`; raises OSError if it cannot be read."""
    real = os.path.realpath(path)
    if real == path:
      # Keep the caller's string as the memo's key rather than an equal
      # copy: at a million files that is 100 MB less.
      real = path
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
      # A FIFO would block the read forever, /dev/zero never end it.
      raise OSError(errno.EINVAL, 'not a regular file', path)
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    entry = self._memo.get(real)
    if entry is not None and entry[:3] == stamp:
      return entry[3]
    value = file_digest(real)
    self._memo[real] = stamp + [value]
    self._dirty = True
    return value

  def save(self) -> None:
    """Writes the memo atomically if anything changed (best effort)."""
    if not (self.path and self._dirty):
      return
    directory = os.path.dirname(self.path)
    tmp = os.path.join(directory, f'{TMP_PREFIX}{temporaries.owner_tag()}')
    try:
      os.makedirs(directory, exist_ok=True)
      temporaries.remove_stale(directory, TMP_PREFIX, 'temporary digest memo')
      # Removes the temporary on failure: a full disk costs only re-hashing
      # next time, never a partial file.
      atomic.write_json(self.path,
                        {'version': _MEMO_VERSION, 'files': self._memo}, tmp)
      self._dirty = False
    except OSError as e:
      logging.warning('Could not save the digest memo %s (%s).', self.path, e)
