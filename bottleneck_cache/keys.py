"""Cache keys from file contents, with a stat-keyed memo of digests.

A vector is keyed by the SHA-256 of its image file's bytes, so renaming a
file keeps its vector and editing it does not. Hashing means reading every
image on every run, which for a large folder costs more than the whole
warm run should; `DigestMemo` remembers each file's digest together with
its size, modification time (ns) and inode, and re-reads only files where
any of those changed.

The memo is numpy arrays, 72 bytes per file (a 16-byte hash of the real
path, size, mtime, inode, the 32-byte digest), saved as `file_digests.npz`
at the cache root: at a million files 69 MB, where a dict of path strings
and lists (the JSON memo of earlier versions, `file_digests.json`, still
read and converted on first use) held about 400 bytes per file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import threading
from typing import BinaryIO, Callable, Optional

import numpy as np
from absl import logging

from bottleneck_cache import atomic, temporaries

_BLOCK = 1 << 20
MEMO_FILE = 'file_digests.npz'
# The memo of versions before the numpy one: read when MEMO_FILE is absent,
# removed once MEMO_FILE is written.
OLD_MEMO_FILE = 'file_digests.json'
# Temporaries of the memo, beside it at the cache root.
TMP_PREFIX = '.tmp-digests-'
_OLD_MEMO_VERSION = 1
_MEMO_VERSION = 2
# New entries gathered as Python tuples before they join a numpy block.
_PENDING = 4096
# The arrays of the memo: name -> (dtype, shape of one entry).
_FIELDS = {'path': ('S16', ()), 'size': (np.int64, ()),
           'mtime_ns': (np.int64, ()), 'ino': (np.uint64, ()),
           'digest': (np.uint8, (32,))}


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


def file_digest(path: str, opener: Optional[Callable[[str], BinaryIO]] = None
                ) -> str:
  """SHA-256 hex digest of a file's bytes (raises OSError if unreadable).
  `opener(path)` opens it for binary reading (default: plain open; retrain
  passes one that refuses special and oversized files)."""
  with (opener(path) if opener else open(path, 'rb')) as f:
    return stream_digest(f)


def path_key(real: str) -> bytes:
  """The memo's 16-byte key of a real path (BLAKE2b of its bytes)."""
  return hashlib.blake2b(os.fsencode(real), digest_size=16).digest()


def _empty_table() -> dict:
  return {name: np.zeros((0, *shape), dtype)
          for name, (dtype, shape) in _FIELDS.items()}


def _table_of(rows) -> dict:
  """The arrays of a list of (path key, size, mtime_ns, ino, digest hex)."""
  if not rows:
    return _empty_table()
  keys, sizes, mtimes, inodes, digests = zip(*rows)
  return {'path': np.array(keys, 'S16'), 'size': np.array(sizes, np.int64),
          'mtime_ns': np.array(mtimes, np.int64),
          'ino': np.array(inodes, np.uint64),
          'digest': np.frombuffer(bytes.fromhex(''.join(digests)),
                                  np.uint8).reshape(len(rows), 32)}


def _sorted_unique(table: dict) -> dict:
  """The table sorted by path key; of entries with one key, the last."""
  order = np.argsort(table['path'], kind='stable')
  paths = table['path'][order]
  keep = np.ones(len(order), bool)
  if len(order) > 1:
    keep[:-1] = paths[1:] != paths[:-1]
  order = order[keep]
  return {name: column[order] for name, column in table.items()}


def _merge(table: dict, new: dict) -> dict:
  """Both sorted by path key, unique: the entries of both, new ones winning.
  One column is copied at a time, in place in `table` (returned), so that
  only one column is held twice: a million-file memo is 69 MB; merging
  into a copy of the table held 69 MB more at its end, and concatenating
  and sorting three times that."""
  pos = np.searchsorted(table['path'], new['path'])
  clash = pos < len(table['path'])
  clash[clash] = table['path'][pos[clash]] == new['path'][clash]
  for name in _FIELDS:
    column = table[name]
    if clash.any():
      column = column.copy() if not column.flags.writeable else column
      column[pos[clash]] = new[name][clash]
    table[name] = np.insert(column, pos[~clash], new[name][~clash], axis=0)
  return table


class DigestMemo:
  """Digests of files, remembered in `<root>/file_digests.npz`.

  Thread-safe for concurrent `digest` calls; call `save` between them (a
  run saves every so many files, so a killed run resumes from there).
  `opener` opens a file to hash (see file_digest).
  """

  def __init__(self, root: Optional[str],
               opener: Optional[Callable[[str], BinaryIO]] = None):
    self._opener = opener
    self.path = os.path.join(root, MEMO_FILE) if root else None
    self._lock = threading.Lock()
    # The saved (or loaded) entries, sorted by path key; entries of this
    # run wait in _pending, then _blocks, until save() merges them in.
    self._table = _empty_table()
    self._pending: list = []
    self._blocks: list = []
    if self.path:
      self._table = self._load(root)

  def _load(self, root: str) -> dict:
    old = os.path.join(root, OLD_MEMO_FILE)
    source = self.path if os.path.exists(self.path) else old
    if not os.path.exists(source):
      return _empty_table()
    try:
      if source == old:
        return _sorted_unique(_read_old_memo(old))
      with np.load(source, allow_pickle=False) as data:
        if int(data['version']) != _MEMO_VERSION:
          return _empty_table()
        table = {name: data[name] for name in _FIELDS}
      if (len({len(column) for column in table.values()}) != 1 or
          table['digest'].shape[1:] != (32,)):
        raise ValueError('arrays of different lengths')
      return table
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
      logging.warning('Ignoring unreadable digest memo %s (%s); files will '
                      'be hashed again.', source, e)
      return _empty_table()

  def __len__(self) -> int:
    return len(self._table['path'])

  def _lookup(self, key: bytes, stamp: tuple) -> Optional[str]:
    table = self._table
    paths = table['path']
    pos = int(np.searchsorted(paths, key))
    # Compared as a 16-byte array item: paths[pos] alone would be a bytes
    # object with its trailing zero bytes cut (1 key in 256 ends in one).
    if pos >= len(paths) or paths[pos:pos + 1] != np.array(key, 'S16'):
      return None
    if (int(table['size'][pos]), int(table['mtime_ns'][pos]),
        int(table['ino'][pos])) != stamp:
      return None
    return table['digest'][pos].tobytes().hex()

  def digest(self, path: str) -> str:
    """SHA-256 of the file at `path`; raises OSError if it cannot be read."""
    real = os.path.realpath(path)
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
      # A FIFO would block the read forever, /dev/zero never end it.
      raise OSError(errno.EINVAL, 'not a regular file', path)
    stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
    key = path_key(real)
    value = self._lookup(key, stamp)
    if value is not None:
      return value
    value = (file_digest(real, self._opener) if self._opener
             else file_digest(real))
    with self._lock:
      self._pending.append((key, *stamp, value))
      if len(self._pending) >= _PENDING:
        self._blocks.append(_table_of(self._pending))
        self._pending = []
    return value

  def _merged(self) -> Optional[dict]:
    """The saved entries with this run's (which win), or None if none."""
    with self._lock:
      if self._pending:
        self._blocks.append(_table_of(self._pending))
        self._pending = []
      blocks, self._blocks = self._blocks, []
    if not blocks:
      return None
    new = _sorted_unique({name: np.concatenate([b[name] for b in blocks])
                          for name in _FIELDS})
    del blocks
    # In place: only lookups (digest) read the table, and not during save.
    return _merge(self._table, new)

  def save(self) -> None:
    """Writes the memo atomically if anything changed (best effort)."""
    merged = self._merged()
    if merged is None:
      return
    self._table = merged
    if not self.path:
      return
    directory = os.path.dirname(self.path)
    tmp = os.path.join(directory, f'{TMP_PREFIX}{temporaries.owner_tag()}')
    try:
      os.makedirs(directory, exist_ok=True)
      temporaries.remove_stale(directory, TMP_PREFIX, 'temporary digest memo')
      # Removes the temporary on failure: a full disk costs only re-hashing
      # next time, never a partial file.
      atomic.write_npz(
          self.path, dict(merged, version=np.int64(_MEMO_VERSION)), tmp)
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(directory, OLD_MEMO_FILE))
    except OSError as e:
      logging.warning('Could not save the digest memo %s (%s).', self.path, e)


def _read_old_memo(path: str) -> dict:
  """The table of a JSON memo (version 1: {path: [size, mtime_ns, ino,
  hex digest]})."""
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  if data.get('version') != _OLD_MEMO_VERSION:
    return _empty_table()
  return _table_of([(path_key(real), int(e[0]), int(e[1]), int(e[2]), e[3])
                    for real, e in data['files'].items()])
