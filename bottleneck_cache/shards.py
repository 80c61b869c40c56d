"""Shard files: the one place the HDF5 layout of a cache shard is written.

A shard holds three datasets: `keys`, byte strings [n] (UTF-8 keys, e.g.
the 64-character SHA-256 hex of an image), `vectors`, float32 [n, D], row i
the vector of keys[i], and `checks`, uint32 [n], the CRC-32 of row i's key
bytes followed by its vector's bytes (`row_checks`): a flipped bit in a
key or a vector shows as a mismatch (`bad_rows`), so a damaged vector is
never returned. Shards of older versions have no `checks`; only NaN and
inf are found in them. Readers (`store.BottleneckStore`, `chunks`) take every
`shard-*.h5` file of a namespace folder whatever the rest of its name.

Writers outside this package (the Beam pipeline, `bench/scale.py`) use
`encode_shard` to get a shard's bytes, write them to a temporary name with
`TMP_PREFIX` in the namespace folder through their own file system, and
rename; `shard_name` gives the final name. No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from typing import BinaryIO, Optional, Sequence, Union

import h5py
import numpy as np

SHARD_PREFIX = 'shard-'
SHARD_SUFFIX = '.h5'
TMP_PREFIX = '.tmp-'
CHECKS = 'checks'


def row_checks(keys: Sequence[bytes], vectors: np.ndarray) -> np.ndarray:
  """uint32 [n]: CRC-32 of each key's UTF-8 bytes followed by the bytes of
  its float32 vector (row of `vectors` [n, D])."""
  vectors = np.ascontiguousarray(vectors, np.float32)
  return np.fromiter(
      (zlib.crc32(row, zlib.crc32(key if isinstance(key, bytes)
                                  else key.encode('utf-8')))
       for key, row in zip(keys, vectors, strict=True)), np.uint32, len(keys))


def bad_rows(keys: Sequence[bytes], vectors: np.ndarray,
             checks: Optional[np.ndarray]) -> np.ndarray:
  """bool [n]: rows that hold NaN or inf, or (when `checks` is given)
  whose key and vector do not match their stored check."""
  bad = ~np.isfinite(vectors).all(axis=1)
  if checks is not None:
    bad |= row_checks(keys, vectors) != np.asarray(checks, np.uint32)
  return bad


def write_shard(target: Union[str, BinaryIO], keys: Sequence[str],
                vectors: np.ndarray) -> None:
  """Writes keys, float32 [len(keys), D] vectors and their checks as one
  shard to `target` (a path or a writable binary file object)."""
  encoded = np.array([k.encode('utf-8') for k in keys])
  vectors = np.asarray(vectors, np.float32)
  with h5py.File(target, 'w') as f:
    f.create_dataset('keys', data=encoded)
    f.create_dataset('vectors', data=vectors, dtype=np.float32)
    f.create_dataset(CHECKS, data=row_checks(encoded, vectors))


def encode_shard(keys: Sequence[str], vectors: np.ndarray) -> bytes:
  """The bytes of a shard file holding keys and vectors (see write_shard)."""
  buffer = io.BytesIO()
  write_shard(buffer, keys, vectors)
  return buffer.getvalue()


def content_shard_name(keys: Sequence[str]) -> str:
  """A shard file name that depends only on the set of keys it holds.

  A writer that may be retried (a Beam bundle) names its shard by content,
  so a retry that writes the same keys replaces the file with an identical
  one instead of adding a duplicate.
  """
  digest = hashlib.sha256('\n'.join(sorted(keys)).encode('utf-8'))
  return f'{SHARD_PREFIX}c-{digest.hexdigest()[:32]}{SHARD_SUFFIX}'


def is_shard_name(name: str) -> bool:
  return name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX)


def read_shard_keys(source: Union[str, BinaryIO]) -> np.ndarray:
  """The keys of a shard as a byte-string array [n] (path or file object)."""
  with h5py.File(source, 'r') as f:
    return f['keys'][...]
