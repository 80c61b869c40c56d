"""Seconds the converging head solver takes at the issue's size: 3,670
vectors (the full flowers set) of 1,280 floats (one module), and of 3,840
(the three-module ensemble), 5 classes, the default grid included.

  python bench/head_solver_speed.py [--repeats 3]

The vectors are synthetic (Gaussian classes passed through a ReLU, about as
separable as flowers' EfficientNet-Lite features); the time of a fit
depends on their size and on how many iterations convergence takes, not on
where they came from. The 10% validation set has 73 images per class, so
the grid is chosen on validation and the winner refitted, as in a run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from retrain.config import DEFAULTS  # noqa: E402
from retrain.head import folds as folds_lib  # noqa: E402
from retrain.head import solver as solver_lib  # noqa: E402


def vectors(n, dim, classes, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 0.25, (classes, dim))
  y = rng.integers(0, classes, n)
  x = np.maximum(0.0, centres[y] + rng.normal(0, 1, (n, dim)))
  return (x * rng.uniform(0.1, 3, dim)).astype(np.float32), y


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  options = solver_lib.SolverOptions.from_config(DEFAULTS)
  print(f'{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} '
        f'(other work on the machine slows every figure); grid '
        f'{options.l2_grid}')
  for dim in (1280, 3840):
    x, y = vectors(3670, dim, 5)
    fold = folds_lib.stratified_folds(y, 10, 0)
    times = []
    for _ in range(args.repeats):
      started = time.monotonic()
      result = solver_lib.fit_head(x[fold != 0], y[fold != 0], 5,
                                   x[fold == 0], y[fold == 0], options)
      times.append(time.monotonic() - started)
    iterations = sum(c.iterations for c in result.candidates)
    print(f'3670 x {dim}: median {np.median(times):.2f} s (min '
          f'{min(times):.2f}) for {len(result.candidates)} candidates '
          f'({iterations} iterations) + the final fit '
          f'({len(result.history)} iterations); chose {result.reason}')


if __name__ == '__main__':
  main()
