"""Identical images in two of train / validation / test: a one-line warning.

The training run only counts them; `python -m retrain.inspect` lists them,
and the near-duplicates too (docs/inspect.md).
"""

from __future__ import annotations

import collections
from typing import List, Optional, Sequence, Tuple

from absl import logging

from retrain.data import split as split_lib


def cross_set_duplicates(digests: Sequence[Optional[str]],
                         split: split_lib.Split) -> List[Tuple[int, ...]]:
  """Groups of examples with the same content key in more than one set.

  Args:
    digests: content key of each example (None: unknown), indexed like the
      Split's indices.
    split: the train / validation / test indices.

  Returns:
    Sorted tuples of example indices, one per content found in two or more
    sets.
  """
  subset = {}
  for code, name in enumerate(split_lib.SUBSETS):
    for i in split.subset(name):
      subset[int(i)] = code
  groups = collections.defaultdict(list)
  for i, digest in enumerate(digests):
    if digest is not None and i in subset:
      groups[digest].append(i)
  return sorted(tuple(members) for members in groups.values()
                if len({subset[i] for i in members}) > 1)


def warn_cross_set_duplicates(digests: Sequence[Optional[str]],
                              split: split_lib.Split,
                              paths: Sequence[str]) -> int:
  """Logs one warning line if any content is in two sets; returns the count.

  paths: the file of each example, for the message.
  """
  groups = cross_set_duplicates(digests, split)
  if groups:
    logging.warning(
        '%d images have an identical copy in another of train / validation / '
        'test, so evaluation scores images training has seen (e.g. %s and '
        '%s); python -m retrain.inspect lists them all.', len(groups),
        paths[groups[0][0]], paths[groups[0][1]])
  return len(groups)
