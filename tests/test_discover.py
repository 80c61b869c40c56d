"""Discovery: which files count, label order, and the errors a user sees."""

import os

import pytest

from retrain.data import discover
from retrain.errors import DatasetError
from tests.conftest import write_image


def test_labels_sorted_and_files_matched(tmp_path):
  write_image(tmp_path / 'b_class' / 'one.JPG', (1, 2, 3))
  write_image(tmp_path / 'b_class' / 'nested' / 'deeper' / 'two.png', (1, 2, 3),
              fmt='PNG')
  write_image(tmp_path / 'A class' / 'x.jpeg', (1, 2, 3), fmt='JPEG')
  write_image(tmp_path / 'A class' / 'y.bmp', (1, 2, 3), fmt='BMP')
  write_image(tmp_path / 'A class' / 'z.gif', (1, 2, 3), fmt='GIF')
  (tmp_path / 'A class' / 'notes.txt').write_text('not an image')
  (tmp_path / 'A class' / '.hidden.jpg').write_bytes(b'')
  (tmp_path / '.git').mkdir()
  write_image(tmp_path / '.git' / 'x.jpg', (1, 2, 3))

  data = discover.discover_images(str(tmp_path))

  assert data.labels == ('A class', 'b_class')
  rels = [(i.rel_path, i.label) for i in data.images]
  assert rels == [('A class/x.jpeg', 0), ('A class/y.bmp', 0),
                  ('A class/z.gif', 0), ('b_class/nested/deeper/two.png', 1),
                  ('b_class/one.JPG', 1)]
  assert all(os.path.isabs(i.path) and os.path.exists(i.path)
             for i in data.images)
  assert data.count_per_class() == [3, 2]


def test_missing_dir_names_it(tmp_path):
  with pytest.raises(DatasetError, match='does not exist.*image_dir'):
    discover.discover_images(str(tmp_path / 'nope'))


def test_empty_image_dir_flag():
  with pytest.raises(DatasetError, match='image_dir'):
    discover.discover_images('')


def test_no_class_folders(tmp_path):
  write_image(tmp_path / 'loose.jpg', (1, 2, 3))
  with pytest.raises(DatasetError, match='No class folders.*sub-folder'):
    discover.discover_images(str(tmp_path))


def test_one_class_is_an_error(tmp_path):
  write_image(tmp_path / 'cats' / 'a.jpg', (1, 2, 3))
  (tmp_path / 'dogs').mkdir()
  with pytest.raises(DatasetError, match="only class 'cats'.*at least two"):
    discover.discover_images(str(tmp_path))


def test_empty_class_skipped_with_warning(tmp_path, caplog):
  write_image(tmp_path / 'cats' / 'a.jpg', (1, 2, 3))
  write_image(tmp_path / 'dogs' / 'a.jpg', (1, 2, 3))
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'readme.txt').write_text('x')
  data = discover.discover_images(str(tmp_path))
  assert data.labels == ('cats', 'dogs')
  assert data.skipped_classes == ('empty',)
  text = caplog.text
  assert "'empty' has no images" in text
  assert "'cats' has only 1 image;" in text


def test_images_share_one_root_and_make_their_path(tmp_path):
  # An image keeps its relative path and a reference to the one
  # root string of its data set; the absolute path is made when read.
  for name in ('a', 'b'):
    for i in range(3):
      write_image(tmp_path / name / 'sub' / f'{i}.jpg', (1, 2, 3), size=(4, 4))
  data = discover.discover_images(str(tmp_path))
  assert len({id(image.root) for image in data.images}) == 1
  assert data.images[0].root == data.image_dir == str(tmp_path)
  assert data.images[4].path == os.path.join(str(tmp_path), 'b', 'sub',
                                             '1.jpg')
  assert not hasattr(data.images[0], '__dict__')
  paths = discover.image_paths(data.images)
  assert len(paths) == 6
  assert paths[4] == data.images[4].path
  assert paths[1:3] == [data.images[1].path, data.images[2].path]
  assert list(paths) == [image.path for image in data.images]


def test_image_file_keeps_a_path_it_cannot_make(tmp_path):
  # A path that root/rel_path does not lead to is kept (ImageFileAt); one
  # it leads to, '..' included, is not.
  beside = discover.image_file('/data/other/x.jpg', '../other/x.jpg', 1,
                               '/data/csvs')
  assert type(beside) is discover.ImageFile
  assert beside.path == '/data/other/x.jpg'
  box = discover.image_file('/data/photos/p.jpg', 'photos/p.jpg#1,2,3,4', 0,
                            '/data')
  assert type(box) is discover.ImageFileAt
  assert box.path == '/data/photos/p.jpg'
  assert box.rel_path == 'photos/p.jpg#1,2,3,4'


def test_seen_files_finds_a_file_again_across_merges(monkeypatch):
  # Past _SEEN_BATCH files the keys live in a sorted array; a
  # file met again (a hard link, a link to it) is found there too, inodes
  # ending in a zero byte and one inode number on two devices included.
  from retrain.common import walk

  def st(dev, ino):
    return os.stat_result((0o100644, ino, dev, 1, 0, 0, 0, 0, 0, 0))

  monkeypatch.setattr(walk, '_SEEN_BATCH', 3)
  seen = walk.SeenFiles()
  files = [(1, 256), (1, 7), (2, 256), (1, 2**63 + 5), (3, 0), (1, 512),
           (2, 7)]
  for k, (dev, ino) in enumerate(files):
    assert seen.first(st(dev, ino), f'p{k}') == f'p{k}'
  for k, (dev, ino) in enumerate(files):
    assert seen.first(st(dev, ino), 'again') == f'p{k}'
  assert seen.first(st(3, 256), 'new') == 'new'
