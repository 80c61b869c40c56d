"""Which class names can be labels: those that survive every output intact.

A label is written one per line to the labels file, into JSON metadata,
TensorBoard (text and the projector's TSV), CSV and JSON reports and TFLite
side files, and read back by label_image. Commas, quotes, slashes and any
non-ASCII letter round-trip through all of them; a line break, a tab or
another control character does not (the labels file would get an extra
line and label_image a class too many), and an empty or blank label cannot
be told apart from no label. Labels that look like another label or like
a path are refused too: invisible formatting characters (zero-width
spaces and joiners, text-direction overrides such as U+202E), and '.' or
'..'. A label is used in Unicode's composed form (NFC): 'é' typed as 'e'
plus an accent is the same label as 'é', with a line in the log. Those
are refused before any work starts.
"""

from __future__ import annotations

import unicodedata
from typing import Optional

from absl import logging

from retrain.errors import DatasetError

# Unicode categories that break a line or a TSV cell: control characters
# (Cc: \n, \r, \t, \x00...), line and paragraph separators (Zl, Zp).
_BAD_CATEGORIES = ('Cc', 'Zl', 'Zp')
# Invisible formatting characters (Cf): zero-width space and joiners,
# text-direction marks and overrides, the byte-order mark. A label holding
# one looks like another label, or reads backwards in a report.
_INVISIBLE = 'Cf'
_RESERVED = ('.', '..')
ALLOWED = ('labels may hold commas, quotes, slashes and non-ASCII letters, '
           'but no line breaks, tabs, other control characters or invisible '
           'formatting characters, must not be blank, . or ..')


def label_problem(label: str) -> Optional[str]:
  """Why `label` cannot be a class name, or None if it can."""
  if not label.strip():
    return 'is empty or only spaces'
  if label.strip() in _RESERVED:
    return 'is a reserved path name'
  for char in label:
    if unicodedata.category(char) == _INVISIBLE:
      return (f'contains the invisible formatting character U+{ord(char):04X}'
              ' (zero-width or a text-direction override: it would look like '
              'another label)')
  for char in label:
    if unicodedata.category(char) in _BAD_CATEGORIES:
      name = {'\n': 'a line break', '\r': 'a carriage return',
              '\t': 'a tab'}.get(char) or (
                  f'the control character U+{ord(char):04X}')
      return f'contains {name}'
  return None


def check_folder_label(name: str, folder: str) -> None:
  """Raises DatasetError if class folder `folder` (named `name`) is unusable."""
  problem = label_problem(name)
  if problem:
    raise DatasetError(
        f'The class folder {folder!r} has the name {name!r}, which {problem}:'
        f' it cannot be a label ({ALLOWED}). Rename the folder, e.g. to '
        f'{suggest(name)!r}.')


def check_csv_label(label: str, where: str) -> None:
  """Raises DatasetError if the label of CSV row `where` is unusable."""
  problem = label_problem(label)
  if problem:
    raise DatasetError(
        f'{where}: the label {label!r} {problem}: it cannot be a label '
        f'({ALLOWED}). Fix that row of the CSV, e.g. to {suggest(label)!r}.')


def normalized(label: str, where: str) -> str:
  """`label` in Unicode's composed form (NFC), said in the log when that
  changes it (`where` names the folder or CSV row)."""
  composed = unicodedata.normalize('NFC', label)
  if composed != label:
    logging.warning('%s: the label %r is used in its composed Unicode '
                    'form (NFC), which looks the same but is written '
                    'differently.', where, composed)
  return composed


def suggest(label: str) -> str:
  """A usable label close to `label` (control and invisible characters
  become spaces or go)."""
  cleaned = ''.join(' ' if unicodedata.category(c) in _BAD_CATEGORIES else c
                    for c in label if unicodedata.category(c) != _INVISIBLE)
  cleaned = ' '.join(cleaned.split())
  return cleaned if cleaned and cleaned not in _RESERVED else 'class_name'
