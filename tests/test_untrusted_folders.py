"""Discovery and CSV loading over folders that try to hang or fool a run."""

import os
import socket

import numpy as np
import pytest

from bottleneck_cache import keys
from retrain.data import discover, leakage, sources
from retrain.data import split as split_lib
from tests.conftest import write_image


def _photos(root, classes=('a', 'b'), per_class=3):
  for c in classes:
    for k in range(per_class):
      write_image(root / c / f'{k}.jpg', (10 * k, 40, 90), seed=k)


def _skipped(dataset):
  return {os.path.relpath(p, dataset.image_dir): r
          for p, r in dataset.skipped_files}


def test_fifo_socket_and_device_are_skipped_never_opened(tmp_path):
  root = tmp_path / 'img'
  _photos(root)
  os.mkfifo(root / 'a' / 'fifo.jpg')
  os.symlink('/dev/zero', root / 'a' / 'zero.jpg')
  sock = socket.socket(socket.AF_UNIX)
  sock.bind(str(root / 'b' / 'sock.png'))
  try:
    dataset = discover.discover_images(str(root))
  finally:
    sock.close()
  assert sorted(i.rel_path for i in dataset.images) == [
      f'{c}/{k}.jpg' for c in 'ab' for k in range(3)]
  skipped = _skipped(dataset)
  assert set(skipped) == {'a/fifo.jpg', 'a/zero.jpg', 'b/sock.png'}
  assert 'FIFO' in skipped['a/fifo.jpg']
  assert 'character device' in skipped['a/zero.jpg']
  assert 'socket' in skipped['b/sock.png']
  assert all('never opened' in r for r in skipped.values())


def test_symlink_loop_is_walked_once(tmp_path, caplog):
  root = tmp_path / 'img'
  _photos(root)
  os.symlink('.', root / 'a' / 'loop')
  os.symlink('..', root / 'b' / 'up')  # b/up -> img: an ancestor
  dataset = discover.discover_images(str(root))
  assert len(dataset.images) == 6
  skipped = _skipped(dataset)
  assert 'symbolic link loop' in skipped['a/loop']
  assert 'contains the image folder' in skipped['b/up']


def test_class_linked_to_root_is_refused(tmp_path):
  root = tmp_path / 'img'
  _photos(root)
  os.symlink('/', root / 'c')
  dataset = discover.discover_images(str(root))
  assert dataset.labels == ('a', 'b')
  assert "links to '/'" in _skipped(dataset)['c']


def test_folder_linked_from_outside_is_followed(tmp_path):
  elsewhere = tmp_path / 'other_disk'
  _photos(elsewhere, classes=('b',))
  root = tmp_path / 'img'
  _photos(root, classes=('a',))
  os.symlink(elsewhere / 'b', root / 'b')
  dataset = discover.discover_images(str(root), follow_outside_links=True)
  assert dataset.labels == ('a', 'b') and len(dataset.images) == 6


def test_links_out_of_the_image_folder_are_refused_by_default(tmp_path):
  """A class folder or a photo linked from outside is skipped, with the
  setting that allows it named; /proc is refused even when allowed."""
  elsewhere = tmp_path / 'other_disk'
  _photos(elsewhere, classes=('b', 'c'))
  root = tmp_path / 'img'
  _photos(root, classes=('a', 'd'))
  os.symlink(elsewhere / 'b', root / 'b')
  os.symlink(elsewhere / 'c' / '0.jpg', root / 'a' / 'outside.jpg')
  os.symlink('/proc/self', root / 'proc')
  dataset = discover.discover_images(str(root))
  assert dataset.labels == ('a', 'd') and len(dataset.images) == 6
  skipped = _skipped(dataset)
  assert 'outside the image folder' in skipped['b']
  assert 'follow_outside_links=True' in skipped['a/outside.jpg']
  assert 'kernel file system' in skipped['proc']
  allowed = discover.discover_images(str(root), follow_outside_links=True)
  assert allowed.labels == ('a', 'b', 'd') and len(allowed.images) == 10
  assert 'kernel file system' in _skipped(allowed)['proc']


def test_same_file_by_two_paths_used_once(tmp_path, caplog):
  root = tmp_path / 'img'
  _photos(root)
  os.symlink(root / 'a' / '0.jpg', root / 'a' / 'z_again.jpg')
  dataset = discover.discover_images(str(root))
  assert len(dataset.images) == 6
  assert 'the same file as' in _skipped(dataset)['a/z_again.jpg']
  assert 'z_again.jpg' in caplog.text


def test_csv_rows_of_special_files_are_skipped(tmp_path):
  _photos(tmp_path)
  os.mkfifo(tmp_path / 'fifo.jpg')
  (tmp_path / 'l.csv').write_text(
      'a/0.jpg,a\nb/0.jpg,b\nfifo.jpg,a\n/dev/zero,b\n')
  rows, missing = sources.read_labels_csv(str(tmp_path / 'l.csv'))
  assert [r.rel_path for r in rows] == ['a/0.jpg', 'b/0.jpg']
  reasons = dict(missing)
  assert 'FIFO' in reasons[str(tmp_path / 'fifo.jpg')]
  assert 'l.csv:4' in reasons['/dev/zero']


def test_digest_refuses_special_files(tmp_path):
  os.mkfifo(tmp_path / 'f.jpg')
  memo = keys.DigestMemo(None)
  with pytest.raises(OSError, match='not a regular file'):
    memo.digest(str(tmp_path / 'f.jpg'))
  with pytest.raises(OSError, match='not a regular file'):
    memo.digest('/dev/zero')


def test_identical_bytes_in_two_sets_are_leakage(tmp_path):
  split = split_lib.Split(np.array([0, 1]), np.array([2]), np.array([3]))
  digests = ['d1', 'd2', 'd1', 'd3']
  paths = ['t/x.jpg', 't/y.jpg', 'v/x_copy.jpg', 'e/z.jpg']
  found = leakage.find_leakage(digests, split, paths)
  assert found == [{'sha256': 'd1', 'train': ['t/x.jpg'],
                    'validation': ['v/x_copy.jpg']}]
  path = leakage.report_leakage(found, str(tmp_path))
  import json
  with open(path) as f:
    assert json.load(f)['count'] == 1
