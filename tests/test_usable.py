"""The record of usable images: rows line up with the vectors."""

import numpy as np
import pytest

import bottleneck_cache
from retrain.bottlenecks import compute, usable
from retrain.data.discover import Dataset, ImageFile
from retrain.errors import DatasetError


def _dataset():
  images = tuple(ImageFile(f'{c}/{i}.jpg', label, '/d')
                 for label, c in enumerate('ab') for i in range(3))
  return Dataset('/d', ('a', 'b'), images)


def _computed(ok):
  ok = np.array(ok, bool)
  return compute.Bottlenecks(
      vectors=np.arange(ok.sum() * 2, dtype=np.float32).reshape(-1, 2),
      ok=ok, failures=[('x', 'bad')] * int((~ok).sum()),
      stats=bottleneck_cache.Stats(), digests=[f'h{i}' for i in range(6)])


def test_rows_are_the_usable_images_in_order():
  images = usable.usable_images(_dataset(), _computed([1, 0, 1, 1, 0, 1]))
  assert len(images) == 4
  assert images.rel_paths == ['a/0.jpg', 'a/2.jpg', 'b/0.jpg', 'b/2.jpg']
  assert images.labels.tolist() == [0, 0, 1, 1]
  assert images.index.tolist() == [0, 2, 3, 5]
  assert images.digests_of([1, 3]) == ['h2', 'h5']
  assert images.paths_of([2]) == ['/d/b/0.jpg']
  assert images.vectors.shape == (4, 2)


def test_one_usable_class_is_an_error():
  with pytest.raises(DatasetError, match='Only 1 class has usable images '
                     'after skipping 3 unreadable files'):
    usable.usable_images(_dataset(), _computed([1, 1, 1, 0, 0, 0]))
