"""The bottleneck cache's errors, and the disk space its writes need."""

from __future__ import annotations

import os
import shutil
from typing import Optional

# Bytes per row besides the vector: the key (a 64-character digest in
# retrain), its check and HDF5's overhead, rounded up.
KEY_BYTES = 96


class CacheError(ValueError):
  """The cache directory cannot be used (not writable, wrong dimension...)."""


class CacheFullError(CacheError):
  """The cache folder's disk has no room for the vectors to be written.

  Attributes:
    directory: the folder that needs space.
    needed: bytes needed there (an estimate, rounded up).
    available: free bytes there when checked (None if unknown).
  """

  def __init__(self, directory: str, needed: int,
               available: Optional[int] = None, detail: str = ''):
    free = (f', {_mib(available)} free' if available is not None else '')
    super().__init__(
        f'Not enough disk space for the bottleneck cache in {directory!r}: '
        f'about {_mib(needed)} needed{free}{detail}. Free some space on that '
        'disk, or give a cache folder on a disk with room. Every vector '
        'already written is kept and reused by the next run.')
    self.directory = directory
    self.needed = needed
    self.available = available


def _mib(n: int) -> str:
  return f'{n / (1 << 20):.1f} MiB'


def bytes_needed(new_vectors: int, dim: int, existing_vectors: int = 0) -> int:
  """Disk bytes to add `new_vectors` of length `dim` to a namespace.

  The new shards, plus room for the merge that follows, which writes every
  vector (old and new) once more before deleting the parts, plus 1 MiB.
  """
  row = 4 * dim + KEY_BYTES
  return row * (2 * new_vectors + existing_vectors) + (1 << 20)


def check_free_space(directory: str, needed: int) -> None:
  """Raises CacheFullError if the disk of `directory` has less than `needed`."""
  probe = directory
  while probe and not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  try:
    available = shutil.disk_usage(probe or '.').free
  except OSError:
    return  # Unknown: the writes themselves will tell.
  if available < needed:
    raise CacheFullError(directory, needed, available)
