"""How far a measured accuracy can be trusted: the Wilson 95% interval.

A test set of N images measures accuracy to within a few points at best:
with N=51 and 45 correct the true accuracy is, with 95% confidence, anywhere
in 76.6-94.5%. The final log line says so, in retrain.py's form plus the
interval: `Final test accuracy = 88.2% (N=51, 95% CI 76.6-94.5%)`.

Wilson's score interval rather than the textbook p +- 1.96 sqrt(p(1-p)/N):
it stays inside [0, 1] and keeps its coverage near 0% and 100% and for
small N, exactly where the textbook one fails.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

# The two-sided 95% normal quantile.
Z95 = 1.959963984540054
# The half-width the log suggests reaching with more test images.
TARGET_HALF_WIDTH = 0.02


def wilson_interval(correct: float, total: int, z: float = Z95
                    ) -> Tuple[float, float]:
  """(low, high) in [0, 1]: the Wilson score interval of correct/total.

  (0, 1) when total is 0 (nothing is known).
  """
  if total <= 0:
    return 0.0, 1.0
  p = correct / total
  denominator = 1 + z * z / total
  centre = (p + z * z / (2 * total)) / denominator
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)
                       ) / denominator
  return max(0.0, centre - half), min(1.0, centre + half)


def format_accuracy(accuracy: float, total: int,
                    prefix: str = 'Final test accuracy =') -> str:
  """'<prefix> 88.2% (N=51, 95% CI 76.6-94.5%)'; accuracy in [0, 1] (nan
  when total is 0: '<prefix> n/a (N=0)')."""
  if total <= 0 or accuracy != accuracy:
    return f'{prefix} n/a (N=0)'
  low, high = wilson_interval(accuracy * total, total)
  return (f'{prefix} {100 * accuracy:.1f}% (N={total}, 95% CI '
          f'{100 * low:.1f}-{100 * high:.1f}%)')


def images_for_half_width(accuracy: float, total: int,
                          half_width: float = TARGET_HALF_WIDTH
                          ) -> Optional[int]:
  """The smallest test set size whose Wilson interval, at this accuracy,
  is at most +-half_width; None when `total` images already reach it."""
  def half(n):
    low, high = wilson_interval(accuracy * n, n)
    return (high - low) / 2
  if total > 0 and half(total) <= half_width:
    return None
  n = max(total, 1)
  while half(n) > half_width:  # doubling, then bisection
    n *= 2
  low = n // 2
  while low + 1 < n:
    mid = (low + n) // 2
    if half(mid) <= half_width:
      n = mid
    else:
      low = mid
  return n


def narrowing_hint(accuracy: float, total: int) -> Optional[str]:
  """A sentence on how many more test images would narrow the interval to
  about +-2 points, or None when it is that narrow already."""
  if total <= 0 or accuracy != accuracy:
    return None
  needed = images_for_half_width(accuracy, total)
  if needed is None:
    return None
  return (f'The test set is small: about {needed - total} more test images '
          f'({needed} in all) would narrow the 95% interval to '
          f'+-{100 * TARGET_HALF_WIDTH:.0f} points at this accuracy.')
