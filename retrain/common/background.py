"""Report files drawn on a worker thread while the run goes on.

    with background.deferred():      # the run (retrain.pipeline)
      ...
      background.run(draw_and_write)  # returns at once inside `deferred`
      ...
      background.wait()              # every one written (errors raised)

Inside `deferred`, `run` hands its function to one worker thread, so
figures that need nothing more of the run (the projector's sprite, the
calibration and novelty charts) are encoded while the exports run, whose
tracing keeps one core busy and leaves the other mostly idle; `wait`, and
leaving `deferred`, return when each is written and raise the first error
one raised. Outside `deferred` (a library call, a test), `run` calls the
function at once, so a caller sees its files written when it returns.
Each function writes its files atomically (retrain/common/atomic.py).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from typing import Callable, Iterator, List, Optional

_lock = threading.Lock()
_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
_pending: List[concurrent.futures.Future] = []


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """`run` hands functions to a worker thread until the block ends; the
  end waits for them (and raises the first error, unless the block is
  raising one already)."""
  global _pool
  with _lock:
    outer = _pool
    if outer is None:
      _pool = concurrent.futures.ThreadPoolExecutor(
          1, thread_name_prefix='retrain-figures')
  try:
    yield
  except BaseException:
    _wait(raise_errors=False)
    raise
  finally:
    if outer is None:
      with _lock:
        pool, _pool = _pool, None
      pool.shutdown(wait=True)
  wait()


def run(function: Callable[[], object]) -> None:
  """Calls function() on the worker thread inside `deferred`, else now."""
  with _lock:
    if _pool is not None:
      _pending.append(_pool.submit(function))
      return
  function()


def wait() -> None:
  """Returns when every function handed to `run` has returned; raises the
  first error one raised."""
  _wait(raise_errors=True)


def _wait(raise_errors: bool) -> None:
  with _lock:
    pending = list(_pending)
    _pending.clear()
  errors = [f.exception() for f in pending]
  first = next((e for e in errors if e is not None), None)
  if first is not None and raise_errors:
    raise first
