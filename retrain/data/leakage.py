"""The same image bytes in two of train, validation and test: leakage.

An exact copy of a training image in the test set is "recognised", not
classified, so it inflates the test (or validation) accuracy. The split
hashes file paths, so copies under different names land in different sets;
this finds them by content hash and reports them, in the log and in
`<report_dir>/leakage.json`:

  {"count": n, "groups": [{"sha256": ..., "train": [paths],
                           "validation": [paths], "test": [paths]}]}

`count` is the number of contents found in more than one set. Nothing is
removed: which copy is wrong is the user's call.
"""

from __future__ import annotations

import collections
import json
import os
from typing import List, Optional, Sequence

from absl import logging

from retrain.common import atomic, names

LEAKAGE_JSON = 'leakage.json'
_MAX_LISTED = 10
SUBSET_NAMES = ('train', 'validation', 'test')


def find_leakage(digests: Sequence[Optional[str]], split,
                 paths: Sequence[str]) -> List[dict]:
  """Contents present in more than one subset.

  Args:
    digests: content hash of each usable image (index k as in `split`).
    split: a retrain.data.split.Split of indices into digests.
    paths: path of each usable image.

  Returns:
    One dict per shared content: {'sha256': digest, subset: [paths]}, for
    the subsets holding it; sorted by digest.
  """
  groups = collections.defaultdict(lambda: collections.defaultdict(list))
  for name in SUBSET_NAMES:
    for k in split.subset(name):
      digest = digests[int(k)]
      if digest is not None:
        groups[digest][name].append(paths[int(k)])
  found = []
  for digest in sorted(groups):
    members = groups[digest]
    if len(members) > 1:
      found.append({'sha256': digest,
                    **{name: sorted(members[name]) for name in SUBSET_NAMES
                       if name in members}})
  return found


def report_leakage(found: Sequence[dict], report_dir: str) -> Optional[str]:
  """Logs the leakage and writes leakage.json (always, so it never describes
  an earlier run); returns its path, or None without a report_dir."""
  if found:
    lines = []
    for group in found[:_MAX_LISTED]:
      lines.append('  ' + '  ==  '.join(
          f'{name}: {group[name][0]}' for name in SUBSET_NAMES
          if name in group))
    if len(found) > _MAX_LISTED:
      lines.append(f'  ... and {len(found) - _MAX_LISTED} more')
    logging.warning(
        'Leakage: %s an exact copy (same bytes) in another of '
        'train, validation and test, so the validation and test accuracies '
        'are too optimistic. Delete the extra copies:\n%s',
        names.plural(len(found), 'image') + (' has' if len(found) == 1
                                             else ' have'),
        '\n'.join(lines))
  if not report_dir:
    return None
  path = os.path.join(report_dir, LEAKAGE_JSON)
  atomic.write_text(path, json.dumps(
      {'count': len(found), 'groups': list(found)}, indent=2,
      ensure_ascii=False) + '\n')
  return path
