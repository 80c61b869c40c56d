"""`retrain.load(path)`: an export as a small Python object.

  import retrain
  model = retrain.load('retrain_runs/photos/latest/saved_model')  # or .pb, .tflite, .onnx
  result = model.predict(['a.jpg', 'b.jpg'])
  result.predictions   # ['roses', 'unknown']: the top label, or unknown
  result.unknown       # [False, True]; result.reasons: why
  result.probabilities # float32 [2, N], columns in model.labels order

Built on the loaders label_image uses (retrain.predict.load and
.classify), so the predictions and the unknown flags are label_image's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from retrain.predict import classify
from retrain.predict import load as load_lib


@dataclasses.dataclass(frozen=True)
class Predictions:
  """What `Classifier.predict` gives for n images.

  Attributes:
    labels: the top label of each image [n].
    probabilities: float32 [n, N] (calibrated), columns in the model's
      labels order.
    predictions: the top label, or 'unknown' when the image is flagged [n]
      (a multi-label model: its labels above their thresholds, joined by
      ';').
    unknown: bool [n]: flagged, whatever the reason.
    reasons: why each is unknown: 'not like any class' (the novelty score
      is above the export's threshold), 'low confidence' (the top
      probability is below the stored threshold) or None [n].
    novelty: float32 [n] novelty scores, or None when the export has none.
  """
  labels: List[str]
  probabilities: np.ndarray
  predictions: List[str]
  unknown: np.ndarray
  reasons: List[Optional[str]]
  novelty: Optional[np.ndarray]


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
              ) -> Predictions:
    """The Predictions of `images` (see `probabilities`): top labels,
    probabilities, and whether each is unknown and why, by the export's
    stored thresholds (as label_image decides)."""
    probs = self.probabilities(images)
    novelty = (np.asarray(self.model.last_novelty(), np.float32)
               if len(probs) and self.model.last_novelty is not None
               else None)
    records = [classify.make_record(
        self.model, str(i), probs[i], None if novelty is None else novelty[i],
        1, self.model.threshold) for i in range(len(probs))]
    return Predictions(
        labels=[r.top[0][0] for r in records], probabilities=probs,
        predictions=[r.prediction for r in records],
        unknown=np.array([r.reason is not None for r in records], bool),
        reasons=[r.reason for r in records], novelty=novelty)


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
