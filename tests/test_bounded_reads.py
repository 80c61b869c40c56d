"""Image files are read once, bounded, and the bytes decoded are the bytes
hashed: sparse giants, kernel files and files swapped mid-run."""

import os

import pytest

import bottleneck_cache
from retrain import images
from retrain.bottlenecks import compute
from retrain.common import walk
from retrain.errors import ImageError
from retrain.features import modules
from tests.conftest import write_image


def test_sparse_giant_is_refused_from_its_size_unread(tmp_path, monkeypatch):
  giant = tmp_path / 'x.jpg'
  with open(giant, 'wb') as f:
    f.truncate(1 << 30)
  reads = []
  monkeypatch.setattr(os, 'read', lambda *a: reads.append(a) or b'')
  with pytest.raises(walk.FileRefused, match='over the limit of 201 MiB'):
    walk.read_file(str(giant), 201 << 20)
  with pytest.raises(ImageError, match='1,024.0 MiB, over the limit'):
    images.load_image(str(giant), (8, 8))
  assert not reads


def test_kernel_files_are_refused_unopened(tmp_path, monkeypatch):
  os.symlink('/proc/self/pagemap', tmp_path / 'pagemap.jpg')
  opened = []
  real_open = os.open
  monkeypatch.setattr(os, 'open',
                      lambda *a, **k: opened.append(a) or real_open(*a, **k))
  with pytest.raises(walk.FileRefused, match='kernel file system'):
    walk.read_file(str(tmp_path / 'pagemap.jpg'), 1 << 20)
  memo = bottleneck_cache.DigestMemo(
      None, lambda p: walk.open_file(p, 1 << 20))
  with pytest.raises(walk.FileRefused):
    memo.digest(str(tmp_path / 'pagemap.jpg'))
  assert not opened


def test_a_file_growing_past_the_limit_is_cut_off(tmp_path):
  path = tmp_path / 'a.jpg'
  path.write_bytes(b'x' * 100)
  with walk.open_file(str(path), 150) as f:
    path.write_bytes(b'x' * 1000)  # same inode, now over the limit
    with pytest.raises(walk.FileRefused, match='over the limit'):
      f.read()


@pytest.mark.slow
def test_a_photo_swapped_after_hashing_is_not_cached_under_its_old_key(
    tmp_path, fake_module):
  """The key is the hash of the bytes first read; a file replaced before
  decoding is skipped (run again), never stored under the old key."""
  paths = []
  for k in range(3):
    paths.append(str(tmp_path / f'{k}.jpg'))
    write_image(paths[-1], (60 * k, 40, 90), seed=k)
  module = modules.load_module(fake_module)
  store = bottleneck_cache.BottleneckStore(str(tmp_path / 'cache'),
                                           compute.cache_namespace(module))
  keyed = compute.cache_keys(paths, store, None)
  write_image(paths[1], (255, 255, 255), seed=9)  # swapped after hashing
  result = compute.compute_bottlenecks(paths, module, store, 4, keyed=keyed)
  assert result.ok.tolist() == [True, False, True]
  assert result.failures == [(paths[1], compute.CHANGED_REASON)]
  assert keyed[0][1] not in store and len(store) == 2
