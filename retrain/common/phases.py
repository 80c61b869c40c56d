"""Wall time and peak memory of each phase of a run.

    phases = Phases()
    with phases('bottlenecks'):
      ...
    phases.timings    # {'bottlenecks': 12.3}, seconds
    phases.peak_rss   # {'bottlenecks': 812.0}, MiB after the phase
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from typing import Callable, Dict, Iterator


def peak_rss_mib() -> float:
  """The process's peak resident memory so far, in MiB (Linux, macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (1 << 20) if sys.platform == 'darwin' else peak / 1024.0


class Phase:
  """One phase while it runs; `skip()` leaves it out of the records (for a
  phase that turned out to have nothing to do)."""

  def __init__(self):
    self.skipped = False

  def skip(self) -> None:
    self.skipped = True


class Phases:
  """Records the seconds each named phase took and the peak resident memory
  after it, in the order the phases ran.

  Attributes:
    timings: {phase: seconds}; `total` adds 'total' (since construction).
    peak_rss: {phase: MiB}.
  """

  def __init__(self, clock: Callable[[], float] = time.monotonic,
               memory: Callable[[], float] = peak_rss_mib):
    self._clock, self._memory = clock, memory
    self.started = clock()
    self.timings: Dict[str, float] = {}
    self.peak_rss: Dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, name: str, since_start: bool = False) -> Iterator[Phase]:
    """Times the block as phase `name`; since_start: from construction on
    (for the first phase, so set-up before it counts too). A block that
    raises records nothing."""
    started = self.started if since_start else self._clock()
    phase = Phase()
    yield phase
    if not phase.skipped:
      self.timings[name] = self._clock() - started
      self.peak_rss[name] = self._memory()

  def total(self) -> Dict[str, float]:
    """Records 'total', the seconds since construction; returns timings."""
    self.timings['total'] = self._clock() - self.started
    return self.timings
