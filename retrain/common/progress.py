"""Progress of a long phase: a live bar on a terminal, steady log lines else.

On a terminal (stderr is a TTY) a tqdm bar shows count, rate and time left
and is redrawn a few times a second; when output goes to a file or a pipe
(CI, `2> log`) a plain line `what: done/total (pct), rate unit/s, about T
left` is logged every `interval` seconds instead, so logs stay readable. In
both cases one closing line with the total time is logged when the phase
ends. tqdm is used rather than hand-written carriage returns: it handles
terminal width, notebooks and slow redraws. While a bar is shown, a line
logged through absl first erases it, so log lines stay whole.
"""

from __future__ import annotations

import logging as std_logging
import sys
import threading
import time
from typing import Optional, TextIO

from absl import logging

# Set by the command line's Ctrl-C handler (retrain.common.cli). Python
# raises KeyboardInterrupt in whatever code runs when the signal arrives;
# when that is a destructor or a callback whose exceptions are ignored, the
# interrupt would be lost. Every progress update looks at this flag, so a
# long phase still stops at its next item.
_INTERRUPT = threading.Event()


def note_interrupt() -> None:
  """Remembers that the user pressed Ctrl-C."""
  _INTERRUPT.set()


def interrupted() -> bool:
  """True once the user pressed Ctrl-C in this process."""
  return _INTERRUPT.is_set()


def stop_if_interrupted() -> None:
  """Raises KeyboardInterrupt in the main thread after Ctrl-C, also when
  the first KeyboardInterrupt was swallowed (see _INTERRUPT)."""
  if _INTERRUPT.is_set() and threading.current_thread() is threading.main_thread():
    raise KeyboardInterrupt


def format_duration(seconds: float) -> str:
  """'42 s', '3 min 05 s' or '1 h 02 min'."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f'{minutes} min {seconds:02d} s'
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min'


class _ClearBarFirst(std_logging.Filter):
  """Erases the bar before a log line is written, so the line does not
  land after the bar's text; the bar is drawn again on its next update."""

  def __init__(self, bar):
    super().__init__()
    self.bar = bar

  def filter(self, record) -> bool:
    self.bar.clear()
    return True


def _is_terminal(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # No isatty, or a closed stream.
    return False


class Progress:
  """Reports progress through `total` items; see the module docstring.

  Args:
    what: what is being counted, e.g. 'Bottlenecks'.
    total: how many items the work has.
    unit: the name of one item, plural, for the rate.
    interval: seconds between log lines when there is no bar; the first
      line comes after one interval and the last when the work is done.
    clock: returns seconds (for tests).
    bar: True for a live bar, False for log lines, None (default) for a bar
      exactly when `stream` is a terminal.
    stream: where the bar is drawn (default: sys.stderr at construction).
  """

  def __init__(self, what: str, total: int, unit: str = 'images',
               interval: float = 5.0, clock=time.monotonic,
               bar: Optional[bool] = None, stream: Optional[TextIO] = None):
    self.what, self.total, self.unit = what, total, unit
    self.interval = interval
    self._clock = clock
    self.started = clock()
    self._last = self.started
    self.done = 0
    stream = stream if stream is not None else sys.stderr
    self._bar = None
    if bar if bar is not None else _is_terminal(stream):
      from tqdm import tqdm
      # leave=False: the bar disappears at the end and finish() logs one
      # line, so the scrollback keeps the figures and no dead bar.
      self._bar = tqdm(total=total, desc=what, unit=f' {unit}', file=stream,
                       leave=False, dynamic_ncols=True, mininterval=0.25)
      self._clear_first = _ClearBarFirst(self._bar)
      logging.get_absl_logger().addFilter(self._clear_first)

  def line(self) -> str:
    elapsed = max(self._clock() - self.started, 1e-9)
    rate = self.done / elapsed
    pct = 100.0 * self.done / self.total if self.total else 100.0
    text = (f'{self.what}: {self.done}/{self.total} ({pct:.0f}%), '
            f'{rate:.1f} {self.unit}/s')
    if self.done < self.total and rate > 0:
      text += f', about {format_duration((self.total - self.done) / rate)} left'
    elif self.done >= self.total:
      text += f', done in {format_duration(elapsed)}'
    return text

  def update(self, count: int) -> None:
    """Counts `count` more items done; raises KeyboardInterrupt after Ctrl-C
    (stop_if_interrupted)."""
    stop_if_interrupted()
    self.done += count
    if self._bar is not None:
      self._bar.update(count)
      return
    now = self._clock()
    if now - self._last >= self.interval:
      self._last = now
      logging.info(self.line())

  def update_to(self, done: int) -> None:
    """Sets the count of items done to `done` (for callers that know it)."""
    self.update(max(0, done - self.done))

  def finish(self) -> None:
    """Closes the bar (if any) and logs the closing line."""
    if self._bar is not None:
      logging.get_absl_logger().removeFilter(self._clear_first)
      self._bar.close()
      self._bar = None
    logging.info(self.line())
