"""The bytes that hashing read, kept for the bottleneck pass (read once).

A cold run hashes every file (its cache key) before the module is loaded,
then decodes the files whose vectors the cache lacks. Without this, each
such file is opened and read twice. Here the hashing's opener keeps the
bytes it read, by their SHA-256 (the key they were hashed to), up to
BUDGET bytes in all; `retrain.bottlenecks.compute.read_checked` takes a
file's bytes from here when they are kept (header check and decode from
those very bytes) and reads the file only when they are not.

Content-addressed, so a kept entry can never be the wrong bytes for a
key: bytes whose hash is X are the bytes of key X. And a file changed
since it was hashed is still found out as before: an entry is given only
to the same file (device and inode) with the same size and modification
time as when it was read, else the file is read again (and its new bytes
refused by their hash). `take` removes an entry (memory falls as the pass goes); `forget`
drops everything left (the bottleneck step calls it when it ends, so bytes
of files whose vectors were cached already live no longer).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from typing import BinaryIO, Callable, Optional

# Bytes kept at most: about 1,000 phone-size JPEGs (60 KB each); past it
# the remaining files are read again by the bottleneck pass, as they were
# before. Kept bytes add to the bottleneck step's peak memory (the step
# with the modules loaded), so the budget stays small beside it.
BUDGET = 64 << 20

_lock = threading.Lock()
_kept: dict = {}  # SHA-256 hex digest -> (bytes, the file's _stamp)
_used = [0]  # bytes in _kept, plus those being read into a _Tee


def _reserve(n: int) -> bool:
  with _lock:
    if _used[0] + n > BUDGET:
      return False
    _used[0] += n
    return True


def _release(n: int) -> None:
  with _lock:
    _used[0] -= n


class _Tee(io.RawIOBase):
  """A binary file that keeps a copy of what is read from it (while the
  budget allows); when it is read to its end, the copy goes into the kept
  bytes under its SHA-256."""

  def __init__(self, f: BinaryIO, path: str):
    super().__init__()
    self._f, self._path = f, path
    self._parts: Optional[list] = []
    self._size = 0

  def readable(self) -> bool:
    return True

  def read(self, n: int = -1) -> bytes:
    block = self._f.read(n)
    if self._parts is not None:
      if not block:
        self._keep()
      elif _reserve(len(block)):
        self._parts.append(block)
        self._size += len(block)
      else:
        self._drop()
    return block

  def readinto(self, buffer) -> int:
    block = self.read(len(buffer))
    buffer[:len(block)] = block
    return len(block)

  def _keep(self) -> None:
    contents = b''.join(self._parts)
    self._parts = None
    digest = hashlib.sha256(contents).hexdigest()
    try:
      stamp = _stamp(self._path)
    except OSError:
      _release(self._size)
      return
    with _lock:
      if digest in _kept:
        _used[0] -= self._size  # the same bytes, kept from another path
      else:
        _kept[digest] = (contents, stamp)

  def _drop(self) -> None:
    if self._parts is not None:
      _release(self._size)
      self._parts, self._size = None, 0

  def close(self) -> None:
    self._drop()  # read to its end: kept already; else nothing is kept
    self._f.close()
    super().close()


def _stamp(path: str) -> tuple:
  st = os.stat(path)
  return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def keeping(opener: Callable[[str], BinaryIO]) -> Callable[[str], BinaryIO]:
  """`opener` whose files keep the bytes read from them (see _Tee)."""
  return lambda path: _Tee(opener(path), path)


def take(digest: Optional[str], path: str) -> Optional[bytes]:
  """The kept bytes whose SHA-256 hex digest is `digest`, if `path` is
  the file they were read from, unchanged since; None if not kept (or
  the file changed: read it again). The entry is removed either way."""
  if digest is None:
    return None
  with _lock:
    entry = _kept.pop(digest, None)
    if entry is not None:
      _used[0] -= len(entry[0])
  if entry is None:
    return None
  try:
    return entry[0] if _stamp(path) == entry[1] else None
  except OSError:
    return None


def forget() -> None:
  """Drops every kept byte."""
  with _lock:
    _used[0] -= sum(len(entry[0]) for entry in _kept.values())
    _kept.clear()


def kept_count() -> int:
  """How many files' bytes are kept."""
  return len(_kept)
