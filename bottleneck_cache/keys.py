"""Cache keys from file contents."""

from __future__ import annotations

import hashlib

_BLOCK = 1 << 20


def file_digest(path: str) -> str:
  """SHA-256 hex digest of a file's bytes (raises OSError if unreadable)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while True:
      block = f.read(_BLOCK)
      if not block:
        break
      digest.update(block)
  return digest.hexdigest()
