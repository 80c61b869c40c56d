"""`retrain.load(path)`: an export as a small Python object.

  import retrain
  model = retrain.load('/tmp/retrain_saved_model')   # or .pb, .tflite, .onnx
  labels, probabilities = model.predict(['a.jpg', 'b.jpg'])

Built on the loaders label_image uses (retrain.predict.load), so the
predictions are the same as label_image's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from retrain.predict import load as load_lib


@dataclasses.dataclass
class Classifier:
  """A loaded export.

  Attributes:
    model: the retrain.predict.load.Model (kind, path, labels, input_size,
      predict, threshold).
  """
  model: load_lib.Model

  @property
  def labels(self) -> List[str]:
    """Class names; column j of the probabilities is labels[j]."""
    return list(self.model.labels)

  @property
  def input_size(self) -> Tuple[int, int]:
    return tuple(self.model.input_size)

  def probabilities(self, images: Union[np.ndarray, Sequence[str]]
                    ) -> np.ndarray:
    """float32 [n, N] for images float32 [n, H, W, 3] in [0, 1] at
    input_size, or for n image files (decoded as training decodes them).

    Raises:
      retrain.errors.ImageError: a file cannot be read or decoded.
    """
    if isinstance(images, np.ndarray):
      pixels = images.astype(np.float32)
    else:
      from retrain import images as images_lib
      pixels = np.stack([images_lib.load_image(str(p), self.input_size)
                         .numpy() for p in images]) if len(images) else (
                             np.zeros([0, *self.input_size, 3], np.float32))
    if not len(pixels):
      return np.zeros([0, len(self.labels)], np.float32)
    return np.asarray(self.model.predict(pixels), np.float32)

  def predict(self, images: Union[np.ndarray, Sequence[str]]
              ) -> Tuple[List[str], np.ndarray]:
    """(the top label of each image [n], probabilities float32 [n, N]);
    see `probabilities` for `images`."""
    probs = self.probabilities(images)
    return [self.labels[j] for j in probs.argmax(axis=1)], probs


def load(path: str, labels: Optional[str] = None) -> Classifier:
  """The export at `path`: a SavedModel folder, or a .pb, .tflite or .onnx
  file; labels: a labels file to use instead of the export's.

  Raises:
    retrain.predict.load.LabelImageError: the model or its labels cannot
      be found or used.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    return Classifier(load_lib.load_model(saved_model_dir=path,
                                          labels=labels))
  return Classifier(load_lib.load_model(graph=path, labels=labels))
