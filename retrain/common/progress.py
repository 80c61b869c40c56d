"""A progress line at a steady rate: count, rate and time left."""

from __future__ import annotations

import time

from absl import logging


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f'{minutes} min {seconds:02d} s'
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min'


class Progress:
  """Logs `what: done/total (pct), rate unit/s, about T left` every `interval` s.

  Args:
    what: what is being counted, e.g. 'Bottlenecks'.
    total: how many items the work has.
    unit: the name of one item, plural, for the rate.
    interval: seconds between lines; the first line comes after one interval
      and the last when the work is done.
  """

  def __init__(self, what: str, total: int, unit: str = 'images',
               interval: float = 5.0, clock=time.monotonic):
    self.what, self.total, self.unit = what, total, unit
    self.interval = interval
    self._clock = clock
    self.started = clock()
    self._last = self.started
    self.done = 0

  def line(self) -> str:
    elapsed = max(self._clock() - self.started, 1e-9)
    rate = self.done / elapsed
    pct = 100.0 * self.done / self.total if self.total else 100.0
    text = (f'{self.what}: {self.done}/{self.total} ({pct:.0f}%), '
            f'{rate:.1f} {self.unit}/s')
    if self.done < self.total and rate > 0:
      text += f', about {_duration((self.total - self.done) / rate)} left'
    elif self.done >= self.total:
      text += f', done in {_duration(elapsed)}'
    return text

  def update(self, count: int) -> None:
    self.done += count
    now = self._clock()
    if now - self._last >= self.interval:
      self._last = now
      logging.info(self.line())

  def finish(self) -> None:
    logging.info(self.line())
