"""The phase timer of a run."""

import pytest

from retrain.common import phases as phases_lib


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_records_seconds_and_memory_per_phase_in_order():
  clock = _Clock()
  phases = phases_lib.Phases(clock=clock, memory=lambda: 42.0)
  clock.now = 101.0
  with phases('startup', since_start=True):
    clock.now = 103.0
  with phases('nothing_to_do') as phase:
    clock.now = 104.0
    phase.skip()
  with phases('training'):
    clock.now = 110.0
  assert phases.total() == {'startup': 3.0, 'training': 6.0, 'total': 10.0}
  assert list(phases.timings) == ['startup', 'training', 'total']
  assert phases.peak_rss == {'startup': 42.0, 'training': 42.0}


def test_a_failed_phase_records_nothing():
  phases = phases_lib.Phases()
  with pytest.raises(ValueError), phases('broken'):
    raise ValueError('boom')
  assert phases.timings == {} and phases.peak_rss == {}


def test_peak_rss_is_a_plausible_number_of_mib():
  assert 1.0 < phases_lib.peak_rss_mib() < 1e6


def test_a_phase_collects_the_cycles_the_run_made_and_skips_the_imports():
  """What was alive when the run started is frozen once (gc.freeze), so a
  phase's collection walks only what the run made, and still frees its
  reference cycles."""
  import gc
  import weakref

  phases_lib.freeze_imports()
  phases = phases_lib.Phases()
  assert gc.get_freeze_count() > 0

  class Node:
    pass

  node = Node()
  node.self = node
  alive = weakref.ref(node)
  del node
  with phases('bottlenecks'):
    pass
  assert alive() is None


# Taken after `phases` was imported (above) and after this process started.
_TEST_IMPORTED = __import__('time').monotonic()


def test_launch_is_the_first_phase_and_total_counts_from_it():
  """A command-line run reports the time before its first phase
  (interpreter, imports, flags) as `launch`, and its total from the
  process's start."""
  clock = _Clock()
  phases = phases_lib.Phases(clock=clock, memory=lambda: 7.0, launched=96.0)
  clock.now = 101.0
  with phases('startup', since_start=True):
    clock.now = 102.0
  clock.now = 105.0
  assert phases.total() == {'launch': 4.0, 'startup': 2.0, 'total': 9.0}
  assert list(phases.timings) == ['launch', 'startup', 'total']
  assert phases.peak_rss['launch'] == 7.0


def test_without_a_launch_the_total_counts_from_the_first_phase():
  clock = _Clock()
  phases = phases_lib.Phases(clock=clock, memory=lambda: 7.0)
  clock.now = 103.0
  assert phases.total() == {'total': 3.0}


def test_the_noted_launch_is_the_process_start_and_is_taken_once():
  import time
  phases_lib.take_launch()  # whatever an earlier test in this process noted
  phases_lib.note_launch()
  launched = phases_lib.take_launch()
  # The process started before this test module was imported.
  assert launched is not None and launched <= _TEST_IMPORTED < time.monotonic()
  assert phases_lib.take_launch() is None


def test_process_age_covers_the_whole_process():
  import sys
  import time
  age = phases_lib.process_age()
  if not sys.platform.startswith('linux'):
    pytest.skip('/proc is Linux only')
  assert age is not None
  assert time.monotonic() - _TEST_IMPORTED <= age
  assert age < time.clock_gettime(time.CLOCK_BOOTTIME)
