"""Typed errors for problems a user can fix.

Every message names the bad value and says what to do. The command line
prints the message without a traceback and exits with status 1; anything
else that escapes is a bug and keeps its traceback.
"""


class RetrainError(Exception):
  """A problem with the user's input or environment, with the fix in the text."""


class DatasetError(RetrainError, ValueError):
  """The image folder cannot be used as given."""


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
