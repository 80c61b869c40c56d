"""A RunInference model handler for a TF2 feature-vector SavedModel.

Beam's own TensorFlow handler loads models with Keras, which cannot load a
plain (non-Keras) SavedModel under Keras 3 (apache/beam issue 30616). This
one loads with `tf.saved_model.load`, as `retrain.features.modules` does
through tensorflow_hub, and calls the module on whole batches.

Contract: examples are float32 [h, w, 3] images in [0, 1] (as
retrain.images.decode_and_resize makes them); each inference is the
module's float32 [D] feature vector.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Tuple

import numpy as np
from apache_beam.ml.inference import base


class _Loaded:
  """The module and its batched call, compiled once per worker process."""

  def __init__(self, path: str, input_size: Tuple[int, int]):
    import tensorflow as tf
    self.obj = tf.saved_model.load(path)
    obj = self.obj

    @tf.function(input_signature=[tf.TensorSpec(
        [None, input_size[0], input_size[1], 3], tf.float32)])
    def call(images):
      return obj(images)

    self.call = call

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return self.call(images).numpy()


class FeatureModuleHandler(base.ModelHandler[np.ndarray, np.ndarray, Any]):
  """Runs a feature-vector SavedModel on batches of images.

  Args:
    path: the SavedModel folder (local, or any path tf.saved_model.load
      reads, e.g. gs://); for bundled presets, the converted folder in the
      module cache.
    input_size: (h, w) of the images.
    min_batch_size, max_batch_size, large_model, model_copies: as
      retrain.beam.options.BeamOptions (model_copies 0: Beam's default).
  """

  def __init__(self, path: str, input_size: Tuple[int, int], *,
               min_batch_size: int, max_batch_size: int,
               large_model: bool = False, model_copies: int = 0):
    super().__init__(min_batch_size=min_batch_size,
                     max_batch_size=max_batch_size, large_model=large_model,
                     model_copies=model_copies or None)
    self._path = path
    self._input_size = tuple(input_size)

  def load_model(self) -> _Loaded:
    return _Loaded(self._path, self._input_size)

  def run_inference(self, batch: Sequence[np.ndarray], model: _Loaded,
                    inference_args: Optional[dict] = None
                    ) -> Iterable[base.PredictionResult]:
    vectors = model(np.stack(batch).astype(np.float32, copy=False))
    return [base.PredictionResult(example, vector)
            for example, vector in zip(batch, vectors, strict=True)]

  def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
    return sum(example.nbytes for example in batch)

  def get_metrics_namespace(self) -> str:
    return 'retrain_feature_module'
