"""retrain: turn a folder of photos into an image classifier on a laptop CPU.

Data flows one way: discover images -> split -> bottlenecks (cached) ->
train head -> evaluate -> export.

From Python (or a notebook):

  import retrain
  result = retrain.run(image_dir='flower_photos', how_many_training_steps=500)
  print(result.test_accuracy, result.saved_model_dir)

`retrain.evaluate(model=..., image_dir=..., output_dir=...)` judges an
export on a labelled folder (report.html and report.json) and
`retrain.load(path).predict(files)` classifies with one (labels,
probabilities, and which photos are unknown and why).

`retrain.run(config)` takes a `retrain.Config` instead (start from
`retrain.DEFAULTS` and replace a few settings by their flag names:
`retrain.DEFAULTS.replace(learning_rate=0.1)`). `Config`,
`DEFAULTS` and `run` are imported on first use, so `import retrain` alone
stays cheap (no TensorFlow, no numpy).
"""

from retrain.version import __version__

__all__ = ['Config', 'DEFAULTS', 'evaluate', 'load', 'run', '__version__']


def run(config=None, /, **options):
  """Runs retraining end to end and returns a `retrain.pipeline.RunResult`.

  See `retrain.api.run` for the arguments.
  """
  from retrain import api
  return api.run(config, **options)


def load(path, labels=None):
  """An export (SavedModel folder, .pb, .tflite or .onnx file) whose
  `predict(images or files)` returns a `retrain.predict.model.Predictions`
  (labels, probabilities, and which images are unknown and why)."""
  from retrain.predict import model
  return model.load(path, labels)


def __getattr__(name):
  # PEP 562: Config and DEFAULTS load retrain.config (and numpy) only when
  # asked for.
  if name in ('Config', 'DEFAULTS'):
    from retrain import config as config_lib
    return getattr(config_lib, name)
  # retrain.evaluate(...): the package retrain/evaluate/, callable.
  if name == 'evaluate':
    import importlib
    return importlib.import_module('retrain.evaluate')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
