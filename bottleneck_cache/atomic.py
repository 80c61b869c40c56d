"""Writing a numpy file so that no reader sees half of it (this package's
own helper: it imports neither TensorFlow nor retrain)."""

from __future__ import annotations

import contextlib
import os

import numpy as np


def write_npz(path: str, arrays: dict, tmp: str) -> None:
  """Writes the arrays with np.savez (uncompressed) to `tmp` (in path's
  folder), then renames it to `path`; on failure removes `tmp` and
  re-raises."""
  try:
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
