"""Computing missing vectors under claims, so runs sharing a cache split the
work (the computing half of `bottleneck_cache.store.BottleneckStore`).

Missing keys are computed in buckets (a stable hash of the key, so two
runs over the same images agree on the buckets however much of the cache
each has seen). A run claims a bucket with an exclusively created
`.claim-*` file before computing it and skips buckets claimed by others,
coming back to them at the end: two runs started together split the work
instead of both doing all of it. A claim whose owner died is taken over
(same rules as temporaries, by host and age; a live owner touches its
claim after every batch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Callable, Iterable, Sequence, Tuple

import numpy as np
from absl import logging

from bottleneck_cache import temporaries
from bottleneck_cache.errors import CacheError

CLAIM_PREFIX = '.claim-'
# Keys per claim bucket. Each bucket is one call of the compute function
# (in retrain a tf.data pipeline that fills, runs and drains): with 256,
# the 500 flower photos (2 buckets) ran 10% slower than in one call on a
# loaded 2-core machine (17.3 vs 19.3 images/s). With 1024 a data set of
# up to 1024 images is one call, and two runs over it still never compute
# the same vector twice (the second waits for the first); larger sets are
# shared between runs bucket by bucket.
CLAIM_BUCKET = 1024
# A claim untouched this long is abandoned, whoever holds it: its owner
# touches it after every batch, and no batch takes 10 minutes.
CLAIM_STALE_SECONDS = 600.0
# How often a run waiting for another's claimed buckets looks again.
CLAIM_POLL_SECONDS = 0.25

# compute(missing) -> iterable of (indices, vectors): `missing` are indices
# into the keys passed to get_or_compute; each yielded batch says which of
# them it computed (a subset, in any order; an index left out is a failure)
# and their vectors, float32 [len(indices), dim].
ComputeFn = Callable[[Sequence[int]], Iterable[Tuple[Sequence[int], np.ndarray]]]


@dataclasses.dataclass
class Stats:
  """What one get_or_compute call did."""
  requested: int = 0  # distinct keys asked for
  reused: int = 0  # found in the cache (also: computed meanwhile by another run)
  computed: int = 0  # computed and stored now
  failed: int = 0  # the compute function gave no vector


class ClaimedComputing:
  """The computing of BottleneckStore.get_or_compute: the store's index,
  put and _refresh, bucket by claimed bucket."""

  def _compute_missing(self, keys: list, missing: list, distinct: int,
                       compute: ComputeFn, on_batch, stats: Stats,
                       attempted: set) -> None:
    deferred = []
    for bucket, indices in _buckets(keys, missing, distinct):
      if not self._compute_bucket(bucket, indices, keys, compute, on_batch,
                                  stats, attempted):
        deferred.append((bucket, indices))
    while deferred:
      # Buckets other runs claimed: wait for them to finish (or die), then
      # compute whatever they left missing ourselves.
      time.sleep(CLAIM_POLL_SECONDS)
      self._refresh()
      deferred = [(b, ix) for b, ix in deferred
                  if not self._compute_bucket(b, ix, keys, compute, on_batch,
                                              stats, attempted)]

  def _compute_bucket(self, bucket: str, indices: list, keys: list,
                      compute: ComputeFn, on_batch, stats: Stats,
                      attempted: set) -> bool:
    """Computes the still-missing keys of one bucket under a claim.

    Returns False when another live process holds the bucket's claim (try
    again later), True when done (computed, found, or failed).
    """
    todo = [i for i in indices if keys[i] not in self._index]
    if not todo:
      return True
    claim = self._claim(bucket)
    if claim is False:
      return False
    try:
      if claim is not None:
        # The claim's owner may have stored some before we got it.
        self._refresh()
        todo = [i for i in todo if keys[i] not in self._index]
      allowed = set(todo)
      attempted.update(todo)
      if not todo:
        return True
      for batch_indices, vectors in compute(todo):
        batch_indices = [int(i) for i in batch_indices]
        unknown = [i for i in batch_indices if i not in allowed]
        if unknown:
          raise CacheError(f'compute returned indices it was not asked for: '
                           f'{unknown[:5]}')
        self.put([keys[i] for i in batch_indices], vectors)
        stats.computed += len(batch_indices)
        if claim is not None:
          _touch(claim)
        if on_batch is not None:
          on_batch(len(batch_indices))
    finally:
      if claim is not None:
        try:
          os.remove(claim)
        except OSError:
          pass
    return True

  def _claim(self, bucket: str):
    """The claim file's path if we got it, False if a live run holds it,
    None if claims cannot be made here (we compute anyway)."""
    path = os.path.join(self.directory, f'{CLAIM_PREFIX}{bucket}')
    for _ in range(2):
      try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        try:
          with open(path, encoding='utf-8') as f:
            owner = f.read(200)
          mtime = os.stat(path).st_mtime
        except FileNotFoundError:
          continue  # Released just now: try again.
        except OSError:
          return None
        if not temporaries.is_stale(owner, mtime,
                                    max_age=CLAIM_STALE_SECONDS):
          return False
        logging.warning('Taking over the abandoned cache claim %s of %s.', path,
                     owner or 'an unknown run')
        try:
          os.remove(path)
        except OSError:
          pass
        continue
      except OSError:
        return None  # Read-only or full: work without claims.
      try:
        os.write(fd, temporaries.owner_tag().encode('utf-8'))
      except OSError:
        pass
      finally:
        os.close(fd)
      return path
    return False


def _buckets(keys: Sequence[str], missing: Sequence[int],
             distinct: int) -> list:
  """[(bucket name, indices)] of the missing indices, in a stable order.

  The bucket of a key depends on the key and on how many distinct keys
  were requested, not on what is missing: two runs over the same images
  agree on every bucket whatever each found in the cache.
  """
  count = max(1, -(-distinct // CLAIM_BUCKET))
  groups: dict = {}
  for i in missing:
    digest = hashlib.sha1(keys[i].encode('utf-8')).digest()
    groups.setdefault(int.from_bytes(digest[:8], 'big') % count, []).append(i)
  return [(f'{count}-{b}', groups[b]) for b in sorted(groups)]


def _touch(path: str) -> None:
  try:
    os.utime(path)
  except OSError:
    pass
