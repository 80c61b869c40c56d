"""Loading a SavedModel export folder to classify with."""

from __future__ import annotations

import os
from typing import Callable, Tuple

from retrain.common.names import (
  META_INPUT_HEIGHT,
  META_INPUT_WIDTH,
  METADATA_FILE,
  NOVELTY_OUTPUT,
  PROBABILITIES_OUTPUT,
  SERVING_SIGNATURE,
)
from retrain.predict.common import (
  LabelImageError,
  check_model,
  choose_size,
  read_json,
)


def load_saved_model(path: str, height, width,
                     trust: bool = False) -> Tuple[Callable, tuple, dict]:
  """(predict, (height, width), the export's metadata dict) of the
  SavedModel folder `path`."""
  import tensorflow as tf
  meta = read_json(os.path.join(path, METADATA_FILE))
  if meta is None:
    raise LabelImageError(
        f'{path!r} is not a retrain export (no {METADATA_FILE}): pass '
        'the --saved_model_dir that retrain wrote, or use --graph for a .pb '
        'or .tflite file.')
  check_model(path, trust)
  loaded = tf.saved_model.load(path)
  serve = loaded.signatures[SERVING_SIGNATURE]
  size = choose_size((meta[META_INPUT_HEIGHT], meta[META_INPUT_WIDTH]), height,
                      width, path)

  def predict(images):
    return serve(images=tf.constant(images))[PROBABILITIES_OUTPUT].numpy()

  if NOVELTY_OUTPUT in serve.structured_outputs:
    def both(images):
      out = serve(images=tf.constant(images))
      return out[PROBABILITIES_OUTPUT].numpy(), out[NOVELTY_OUTPUT].numpy()
    predict.with_novelty = both
  predict.keep_alive = loaded  # The signature needs its object alive.
  return predict, size, meta
