"""Quiet by default: a command shows its own lines, not its libraries'.

`quiet_process()`, called by a command before it imports TensorFlow
(unless --logging_verbosity DEBUG asks for everything):

* sends the process's file descriptor 2 to a log file, so what native code
  writes there never reaches the terminal: TensorFlow's start-up lines
  (oneDNN, "failed call to cuInit", CUDA probing), the TFLite converter's
  and XNNPACK's notes. Python's sys.stderr (log lines, progress bars)
  keeps writing to the terminal through a copy of the descriptor, so
  nothing native can split a progress bar either;
* routes Python warnings (a Pillow UserWarning, deprecations) into logging,
  where `OwnLines` drops them.

A run keeps that log: `keep_log_in(run folder)` moves it there as
`native.log` (what was written so far, and fd 2 from then on), so a user
can read what TensorFlow and the converters said.

`OwnLines` keeps, below ERROR, only the lines of this project's own code
(third-party chatter such as tf2onnx's goes); `ShortFormat` is the line
format on a terminal: `17:28:17 Found 500 images ...`, absl's 50-character
prefix gone.

Imports only the standard library (label_image uses it too).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from typing import Optional

# Where this project's code lives: its lines are the ones a user reads.
_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE = os.path.dirname(_HERE)  # retrain/
_TOP = os.path.dirname(_PACKAGE)
OWN_DIRS = tuple(os.path.join(_TOP, name) + os.sep
                 for name in ('retrain', 'tools', 'bottleneck_cache'))

# The file native output goes to while quiet (None: not quiet).
_native_log: Optional[str] = None
# Whether _native_log is a run's own log (kept) or a temporary file.
_kept = False
# The native log's name in a run folder.
LOG_NAME = 'native.log'


def native_log() -> Optional[str]:
  """The file the process's native stderr goes to, or None when it goes to
  the terminal."""
  return _native_log


def quiet_process(log_path: Optional[str] = None) -> str:
  """Sends file descriptor 2 to `log_path` (default: a new file in the
  temporary folder); sys.stderr keeps writing where fd 2 went before.
  Sets TF_CPP_MIN_LOG_LEVEL to 2 if unset. Returns the log file's path.
  Called once, before TensorFlow is imported."""
  global _native_log
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if _native_log is not None:
    return _native_log
  if log_path is None:
    fd, log_path = tempfile.mkstemp(prefix=f'retrain-{os.getpid()}-',
                                    suffix='.native.log')
  else:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  sys.stderr.flush()
  terminal = os.dup(2)
  os.dup2(fd, 2)
  os.close(fd)
  old = sys.stderr
  sys.stderr = os.fdopen(terminal, 'w', buffering=1,
                         encoding=getattr(old, 'encoding', None) or 'utf-8',
                         errors='backslashreplace')
  for handler in logging.getLogger().handlers + [_absl_python_handler()]:
    if isinstance(handler, logging.StreamHandler) and handler.stream is old:
      handler.setStream(sys.stderr)
  logging.captureWarnings(True)
  _native_log = log_path
  return log_path


def keep_log_in(folder: str) -> Optional[str]:
  """Moves the native log into `folder` as LOG_NAME: what it holds so far
  is copied there and file descriptor 2 writes there from then on; the
  temporary file goes. Returns the new path, or None when the process is
  not quiet (native lines then went to the terminal)."""
  global _native_log, _kept
  if _native_log is None:
    return None
  path = os.path.join(folder, LOG_NAME)
  if os.path.abspath(path) == os.path.abspath(_native_log):
    return path
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  try:
    with open(_native_log, 'rb') as f:
      while chunk := f.read(1 << 16):
        os.write(fd, chunk)
    os.dup2(fd, 2)
  finally:
    os.close(fd)
  if not _kept:
    release_log()
  _native_log, _kept = path, True
  return path


def release_log() -> None:
  """Removes the temporary native log file (at an ordinary exit; one of a
  process that crashed in native code stays, with what it wrote); a log
  kept in a run folder stays."""
  if _kept:
    return
  if _native_log and os.path.exists(_native_log):
    try:
      os.remove(_native_log)
    except OSError:
      pass


def _absl_python_handler():
  try:
    from absl import logging as absl_logging
  except ImportError:
    return None
  return absl_logging.get_absl_handler().python_handler


def is_own(record: logging.LogRecord) -> bool:
  """Whether `record` comes from this project's code."""
  return os.path.abspath(record.pathname).startswith(OWN_DIRS)


class OwnLines(logging.Filter):
  """Keeps this project's lines and any line at ERROR or above."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or is_own(record)


class ShortFormat(logging.Formatter):
  """`HH:MM:SS message`, the level named when it is WARNING or above."""

  def format(self, record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
      text += '\n' + self.formatException(record.exc_info)
    stamp = time.strftime('%H:%M:%S', time.localtime(record.created))
    if record.levelno >= logging.WARNING:
      return f'{stamp} {record.levelname}: {text}'
    return f'{stamp} {text}'
