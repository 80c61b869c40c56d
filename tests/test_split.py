"""The split is stable, honours the percentages and never starves a class."""

import numpy as np
import pytest

from retrain.data import split
from retrain.errors import DatasetError


def _paths(n, cls='c', prefix='img'):
  return [f'{cls}/{prefix}_{i}.jpg' for i in range(n)]


def _assignment(paths, labels, val=10, test=10):
  s = split.split_images(paths, labels, val, test)
  out = {}
  for name in split.SUBSETS:
    for i in s.subset(name):
      out[paths[i]] = name
  return out


def test_partition_and_percentages():
  paths = _paths(5000)
  s = split.split_images(paths, [0] * 5000, 10, 20)
  allidx = np.concatenate([s.train, s.validation, s.test])
  assert sorted(allidx.tolist()) == list(range(5000))
  assert 400 < len(s.validation) < 600
  assert 850 < len(s.test) < 1150


def test_adding_images_never_moves_old_ones():
  old = _paths(200, 'a') + _paths(200, 'b')
  labels = [0] * 200 + [1] * 200
  before = _assignment(old, labels)
  new = old + _paths(300, 'a', 'new') + _paths(50, 'b', 'new')
  after = _assignment(new, labels + [0] * 300 + [1] * 50)
  assert {p: after[p] for p in old} == before


def test_order_of_listing_does_not_matter():
  paths = _paths(100)
  a = _assignment(paths, [0] * 100)
  b = _assignment(paths[::-1], [0] * 100)
  assert a == b


def test_nohash_keeps_near_duplicates_together():
  paths = [f'c/photo{i}_nohash_{k}.jpg' for i in range(50) for k in range(4)]
  a = _assignment(paths, [0] * len(paths), 30, 30)
  for i in range(50):
    assert len({a[f'c/photo{i}_nohash_{k}.jpg'] for k in range(4)}) == 1


def test_hash_depends_on_relative_path_only():
  assert split.hash_percentage('cls/x.jpg') == split.hash_percentage(
      'cls/x.jpg')
  assert split.hash_percentage('cls/x.jpg') != split.hash_percentage(
      'other/x.jpg')
  assert 0 <= split.hash_percentage('cls/x.jpg') <= 100


def test_small_class_gets_validation_and_test():
  # With 3 images per class and 10% each, most classes would get none.
  paths, labels = [], []
  for c in range(30):
    paths += _paths(3, f'c{c}')
    labels += [c] * 3
  s = split.split_images(paths, labels, 10, 10)
  labels = np.array(labels)
  for c in range(30):
    assert np.sum(labels[s.validation] == c) >= 1
    assert np.sum(labels[s.test] == c) >= 1
    assert np.sum(labels[s.train] == c) >= 1


def test_two_image_class_is_not_forced():
  s = split.split_images(['a/1.jpg', 'a/2.jpg'], [0, 0], 10, 10)
  assert len(s.train) + len(s.validation) + len(s.test) == 2


def test_zero_percentages_give_empty_sets():
  s = split.split_images(_paths(50), [0] * 50, 0, 0)
  assert len(s.train) == 50 and not len(s.validation) and not len(s.test)


@pytest.mark.parametrize('val,test,match', [
    (-1, 10, 'validation_percentage=-1'),
    (10, 100, 'testing_percentage=100'),
    (60, 40, 'leave no images to train'),
])
def test_bad_percentages(val, test, match):
  with pytest.raises(DatasetError, match=match):
    split.split_images(_paths(10), [0] * 10, val, test)


def test_near_duplicate_groups_follow_the_nohash_names():
  paths = ['/p/a/cat_nohash_1.jpg', '/p/a/cat_nohash_2.jpg', '/p/b/cat_nohash_1.jpg',
           '/p/a/dog.jpg', '/p/a/cat.jpg']
  groups = split.near_duplicate_groups(paths)
  assert groups.dtype == np.int64 and groups.shape == (5,)
  assert groups[0] == groups[1]  # a/cat, whatever follows _nohash_
  assert len({groups[0], groups[2], groups[3], groups[4]}) == 4
  # The key is what the split hashes: near-duplicates land in one set.
  assert (split.hash_percentage('a/cat_nohash_1.jpg') ==
          split.hash_percentage('a/cat_nohash_2.jpg'))
  assert split.near_duplicate_groups([]).shape == (0,)
