"""The images a run can use: those whose bottleneck was computed.

Everything after the bottleneck step works on `UsableImages`, whose row k
is one image (its files, class id, content digest and vector), so no step
needs to map between the discovered images and the rows of the vectors.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

import numpy as np

from retrain.bottlenecks.compute import Bottlenecks
from retrain.data.discover import Dataset
from retrain.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class UsableImages:
  """The usable images, in discovery order.

  Attributes:
    paths: [n] absolute file paths.
    rel_paths: [n] paths relative to the image folder ('/' separators).
    labels: int64 [n] class ids (row i of the labels file is class id i).
    digests: [n] content hashes of the files.
    vectors: float32 [n, D] bottleneck vectors.
    index: int64 [n] the index of each row in Dataset.images.
  """
  paths: List[str]
  rel_paths: List[str]
  labels: np.ndarray
  digests: List[str]
  vectors: np.ndarray
  index: np.ndarray

  def __len__(self) -> int:
    return len(self.paths)

  def paths_of(self, rows: Sequence[int]) -> List[str]:
    """The paths of `rows` (e.g. split.test), in that order."""
    return [self.paths[i] for i in rows]

  def digests_of(self, rows: Sequence[int]) -> List[str]:
    return [self.digests[i] for i in rows]


def usable_images(dataset: Dataset, computed: Bottlenecks) -> UsableImages:
  """The rows of `computed` that are ok, with their images.

  Raises:
    DatasetError: fewer than two classes have a usable image.
  """
  index = np.flatnonzero(computed.ok)
  images = [dataset.images[i] for i in index]
  labels = np.array([image.label for image in images], dtype=np.int64)
  present = sorted(set(labels.tolist()))
  if len(present) < 2:
    raise DatasetError(
        f'Only {len(present)} class has usable images after skipping '
        f'{len(computed.failures)} unreadable files; at least two are needed.')
  return UsableImages(
      paths=[image.path for image in images],
      rel_paths=[image.rel_path for image in images],
      labels=labels,
      digests=[computed.digests[i] for i in index],
      vectors=computed.vectors,
      index=index)
