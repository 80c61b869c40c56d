"""Typed errors for problems a user can fix.

Every message names the bad value and says what to do. A setting is named
in the text as its retrain.config.Config field (`optimizer='rmsprop' is not
one of ...`) and listed in `fields`, so the command line can word it as its
flag (`--optimizer='rmsprop' ...`) while a Python caller reads the keyword
it passed. The command line prints the message without a traceback and
exits with status 1; anything else that escapes is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import re
from typing import Callable, Sequence


class RetrainError(Exception):
  """A problem with the user's input or environment, with the fix in the text.

  Attributes:
    fields: the settings (Config field names) the text names.
  """

  def __init__(self, *args, fields: Sequence[str] = ()):
    super().__init__(*args)
    self.fields = tuple(fields)

  def worded(self, name: Callable[[str], str]) -> str:
    """The message with each of `fields` written as name(field), e.g. a
    flag: error.worded(lambda f: '--' + f)."""
    text = str(self)
    for field in self.fields:
      text = re.sub(rf'(?<![\w./-]){re.escape(field)}(?![\w/])',
                    lambda _, f=field: name(f), text)
    return text


class DatasetError(RetrainError, ValueError):
  """The image folder cannot be used as given."""


class SettingError(DatasetError):
  """A setting's value is outside what it accepts (its choices, its bounds,
  or what other settings allow with it); the text names the setting, the
  value and what is accepted."""


class ModuleError(RetrainError, ValueError):
  """The feature-vector module cannot be loaded or used."""


class OutputError(RetrainError, ValueError):
  """An output location cannot be written without losing something."""


class ImageError(RetrainError, ValueError):
  """One image file cannot be used; `reason` says why (no path in it)."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path = path
    self.reason = reason


# The errors of a full disk or an exhausted quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: OSError) -> str:
  """What a run says when `error` is a full disk (or quota); '' otherwise."""
  if error.errno not in DISK_FULL_ERRNOS:
    return ''
  return (f'The disk is full: could not write {error.filename or "an output"} '
          f'({error.strerror}). Free some space there or choose an output '
          'folder on another disk; nothing half-written was left.')
