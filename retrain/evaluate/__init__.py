"""A model judged on a labelled folder, without training anything.

  python -m retrain.evaluate \\
      --model retrain_runs/photos/latest/saved_model \\
      --image_dir other_photos/ --output_dir judged

  import retrain
  result = retrain.evaluate(model='output_graph.pb',
                            image_dir='other_photos/', output_dir='judged')

The model is any export retrain writes (a SavedModel folder, a frozen
graph, a TFLite or an ONNX file), run through label_image's loaders
(retrain.predict); the photos and their labels come from the same layouts
as training (class folders, split folders, CSVs: retrain/data/sources.py).
It writes OUTPUT_DIR/report.html and report.json (retrain/report/results.py:
accuracy and its interval, per-class metrics, the confusion matrix, the
unknown counts when the export has a rejection threshold). Photos of a
class the model does not know are counted apart (what they were taken
for), not an error. Heat maps are occlusion maps through the export: an
export does not expose the feature module's convolutions.
"""

from __future__ import annotations

import importlib
import sys
import types

# The library is retrain/evaluate/judge.py, loaded on first use: `python -m
# retrain.evaluate --help` imports this package first and stays quick (no
# TensorFlow, no numpy).


def __getattr__(name):
  # (The import system asks for 'judge' itself while importing it.)
  if name != 'judge' and not name.startswith('__'):
    judge = importlib.import_module('retrain.evaluate.judge')
    if hasattr(judge, name):
      return getattr(judge, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


class _CallableModule(types.ModuleType):
  """`retrain.evaluate(...)` calls `judge.evaluate` and `python -m
  retrain.evaluate` runs this package: one name for both."""

  def __call__(self, *args, **kwargs):
    return importlib.import_module('retrain.evaluate.judge').evaluate(
        *args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
