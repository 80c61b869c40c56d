"""Figures written on a worker thread while the run goes on."""

import json
import threading
import types

import numpy as np
import pytest

from retrain.common import background
from retrain.head import calibration
from retrain.report import trust


def test_outside_deferred_run_calls_the_function_at_once():
  called = []
  background.run(lambda: called.append(threading.current_thread().name))
  assert called == [threading.current_thread().name]


def test_inside_deferred_run_returns_at_once_and_the_end_waits():
  release, done = threading.Event(), []

  def slow():
    release.wait(10)
    done.append(threading.current_thread().name)

  with background.deferred():
    background.run(slow)
    assert done == []  # still waiting for `release`
    release.set()
  assert len(done) == 1
  assert done[0] != threading.current_thread().name
  # Outside again: at once.
  background.run(lambda: done.append('now'))
  assert done[-1] == 'now'


def test_wait_raises_the_error_a_deferred_function_raised():
  def broken():
    raise OSError('disk full writing sprite.png')

  with pytest.raises(OSError, match='sprite.png'):
    with background.deferred():
      background.run(broken)
      background.wait()
  with pytest.raises(OSError, match='sprite.png'):
    with background.deferred():
      background.run(broken)


def test_an_error_inside_the_block_is_the_one_raised():
  with pytest.raises(ValueError, match='the run failed'):
    with background.deferred():
      background.run(lambda: 1 / 0)
      raise ValueError('the run failed')


def _confidence():
  head = types.SimpleNamespace(novelty=None)
  return calibration.Confidence(
      head=head, temperature=1.5, validation_count=50, ece_before=0.1,
      ece_after=0.05, test_count=40, test_ece_before=0.12,
      test_ece_after=0.06)


def test_trust_figures_drawn_in_the_background_are_named_once_written(
    tmp_path):
  rng = np.random.default_rng(0)
  probabilities = rng.dirichlet(np.ones(3), size=40).astype(np.float32)
  test = types.SimpleNamespace(count=40, labels=rng.integers(0, 3, 40),
                               probabilities=probabilities)
  confidence = _confidence()
  with background.deferred():
    path = trust.write(str(tmp_path / 'report'), str(tmp_path / 'summaries'),
                       3, {'validation': 'held out'}, confidence, test)
  written = json.loads((tmp_path / 'report' / 'trust.json').read_text())
  assert path == str(tmp_path / 'report' / 'trust.json')
  assert written['figures']['reliability'] == trust.RELIABILITY_FILE
  png = (tmp_path / 'report' / trust.RELIABILITY_FILE).read_bytes()
  assert png.startswith(b'\x89PNG')
  assert sum(row['count'] for row in
             written['calibration']['reliability']['test']) == 40
