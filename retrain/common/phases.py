"""Wall time and peak memory of each phase of a run.

    phases = Phases()
    with phases('bottlenecks'):
      ...
    phases.timings    # {'bottlenecks': 12.3}, seconds
    phases.peak_rss   # {'bottlenecks': 812.0}, MiB after the phase

A command-line run also counts what came before its first phase: `launch`
is the seconds from the process's start (the interpreter starting,
importing TensorFlow and retrain, reading the flags) until the run's
phases begin, and `total` then counts from the process's start too
(`note_launch`, `Phases(launched=take_launch())`).

Each phase ends by handing the memory it freed back to the system
(release_memory), so the next phase starts from what is really in use.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import resource
import sys
import time
from typing import Callable, Dict, Iterator, Optional


def peak_rss_mib() -> float:
  """The process's peak resident memory so far, in MiB (Linux, macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (1 << 20) if sys.platform == 'darwin' else peak / 1024.0


def _libc_trim():
  """glibc's malloc_trim, or None elsewhere (macOS, musl)."""
  try:
    return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim
  except (OSError, AttributeError):
    return None


_MALLOC_TRIM = _libc_trim()


def release_memory() -> None:
  """Collects reference cycles and returns freed heap pages to the system.

  What a phase leaves behind is mostly freed but not returned: the
  bottleneck step's TFLite interpreters sit in reference cycles until a
  collection, and glibc keeps freed arenas. On the three-module ensemble
  this took the resident size after the bottlenecks from 1,219 to 960 MiB
  (measured on 100 flower photos), which is what the export then adds to.
  """
  gc.collect()
  trim_heap()


def freeze_imports() -> None:
  """Once per process: collects, then moves every object alive into the
  collector's permanent generation (gc.freeze), so that each phase's
  release_memory walks only what the run made since. Process-wide, so
  the entry points call it (retrain.pipeline.run_steps, retrain.inspect,
  the Beam job's launch), not Phases. Those objects are
  TensorFlow's and retrain's modules, classes and functions (about 360,000
  once TensorFlow is imported), alive as long as the process; walking them
  made each collection about 0.7 s, 12 of them a tenth of a warm run on 2
  busy cores, and 0.09 s once frozen."""
  if gc.get_freeze_count() == 0:
    gc.collect()
    gc.freeze()


def trim_heap() -> None:
  """Returns freed heap pages to the system (glibc's malloc_trim; nothing
  elsewhere), without a collection: milliseconds, where gc.collect over a
  million listed images takes about a second. The digest memo calls it
  after each save: its columns, rebuilt larger at each save, otherwise
  leave freed holes that the resident size keeps."""
  if _MALLOC_TRIM is not None:
    _MALLOC_TRIM(0)


def process_age() -> Optional[float]:
  """Seconds since this process started (from /proc/self/stat, the kernel's
  record of the start; 1/100 s resolution), or None where there is no
  /proc (macOS, Windows)."""
  try:
    with open('/proc/self/stat', encoding='ascii') as f:
      stat = f.read()
    # Field 22, starttime, in clock ticks since boot; the fields after the
    # command name (which may hold spaces) start with field 3.
    ticks = int(stat[stat.rindex(')') + 2:].split()[19])
    return (time.clock_gettime(time.CLOCK_BOOTTIME) -
            ticks / os.sysconf('SC_CLK_TCK'))
  except (OSError, ValueError, IndexError, AttributeError):
    return None


# When this module was imported: the process's start where process_age
# cannot tell (an early import of every command-line run).
_IMPORTED = time.monotonic()
_launched: Optional[float] = None


def note_launch() -> None:
  """Marks this process's run as a command-line run: its phases count from
  the process's start (the monotonic clock's reading then), which the next
  take_launch returns."""
  global _launched
  age = process_age()
  _launched = (time.monotonic() - age if age is not None
               else min(_IMPORTED, time.monotonic()))


def take_launch() -> Optional[float]:
  """The process start noted by note_launch (monotonic seconds), once; None
  when none was noted (a run from Python counts from its first phase)."""
  global _launched
  launched, _launched = _launched, None
  return launched


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
    timings: {phase: seconds}; with `launched`, first 'launch' (from
      launched to construction); `total` adds 'total' (since launched, else
      since construction).
    peak_rss: {phase: MiB}.
    started: the clock at construction; launched: `launched`, else started.
  """

  def __init__(self, clock: Callable[[], float] = time.monotonic,
               memory: Callable[[], float] = peak_rss_mib,
               launched: Optional[float] = None):
    """launched: the clock's reading when the process started (take_launch),
    or None."""
    self._clock, self._memory = clock, memory
    self.started = clock()
    self.launched = self.started if launched is None else launched
    self.timings: Dict[str, float] = {}
    self.peak_rss: Dict[str, float] = {}
    if launched is not None:
      self.timings['launch'] = self.started - launched
      self.peak_rss['launch'] = memory()

  @contextlib.contextmanager
  def __call__(self, name: str, since_start: bool = False) -> Iterator[Phase]:
    """Times the block as phase `name`; since_start: from construction on
    (for the first phase, so set-up before it counts too). A block that
    raises records nothing."""
    started = self.started if since_start else self._clock()
    phase = Phase()
    yield phase
    release_memory()
    if not phase.skipped:
      self.timings[name] = self._clock() - started
      self.peak_rss[name] = self._memory()

  def total(self) -> Dict[str, float]:
    """Records 'total', the seconds since launched; returns timings."""
    self.timings['total'] = self._clock() - self.launched
    return self.timings
