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
