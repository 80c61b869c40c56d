"""label_image: classify photos with a trained export, from the export alone.

`python tools/label_image.py ...` from a clone (as the retrain tutorial
runs it) is the `label_image` command, whose code is
retrain/predict/__main__.py (`python -m retrain.predict`); see its
docstring for the flags. Importable as before: load_model, find_images,
classify_files, format_records, summarize.
"""

import os
import sys

if __package__ in (None, ''):  # `python tools/label_image.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

from retrain.predict.__main__ import *  # noqa: E402,F403 (label_image's API)
from retrain.predict.__main__ import run  # noqa: E402
from retrain.predict.load import _sidecars  # noqa: E402,F401 (tests read it here)

if __name__ == '__main__':
  run()
