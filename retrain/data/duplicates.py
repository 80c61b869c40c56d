"""Images whose bytes are identical but whose labels differ."""

from __future__ import annotations

import collections
from typing import List, Sequence, Tuple

from absl import logging

from retrain.common import names

# Conflicting duplicates listed one per line in the warning; the rest are
# counted.
_MAX_LISTED_PAIRS = 20


def conflicting_duplicates(digests: Sequence[str], labels: Sequence[int],
                           paths: Sequence[str]) -> List[Tuple[str, str]]:
  """Pairs of paths with identical bytes but different class ids.

  Args:
    digests: content hash of each image (None for unreadable files).
    labels: class id of each image.
    paths: path of each image.

  Returns:
    (path_a, path_b) pairs, one per pair of classes sharing a content, the
    first path of each class; sorted.
  """
  by_digest = collections.defaultdict(dict)
  for digest, label, path in zip(digests, labels, paths):
    if digest is not None:
      by_digest[digest].setdefault(int(label), path)
  pairs = []
  for per_label in by_digest.values():
    found = sorted(per_label.items())
    for i in range(len(found)):
      for j in range(i + 1, len(found)):
        pairs.append((found[i][1], found[j][1]))
  return sorted(pairs)


def warn_conflicting_duplicates(pairs: Sequence[Tuple[str, str]]) -> None:
  if not pairs:
    return
  lines = [f'  {a}  ==  {b}' for a, b in pairs[:_MAX_LISTED_PAIRS]]
  if len(pairs) > _MAX_LISTED_PAIRS:
    lines.append(f'  ... and {len(pairs) - _MAX_LISTED_PAIRS} more')
  logging.warning(
      '%s the same content under two different classes; both '
      'copies are used, which teaches the classifier a contradiction. Delete '
      'the copy in the wrong class (python -m retrain.inspect also '
      'finds near-duplicates):\n%s', names.plural(len(pairs), 'image') +
      (' has' if len(pairs) == 1 else ' have'), '\n'.join(lines))
