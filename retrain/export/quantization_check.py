"""Quantisation that cannot silently lose accuracy.

Right after a quantised TFLite model (dynamic, float16, int8) is converted,
it and the float model (the SavedModel's function, in TensorFlow) classify
the held-out images (the test set; the validation set when the test set is
empty). The figures - top-1 accuracy of both, how often they agree, the
largest probability difference - go to the log, to the model's metadata
and to the reports. A quantised model that loses more than
`max_loss_points` points of top-1 accuracy is refused with the figures and
the alternatives, unless the user keeps it on purpose
(`--keep_lossy_quantization`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
from absl import logging

from retrain import images as images_lib
from retrain.errors import OutputError
from retrain.features import tflite_runner
from retrain.head import math as head_math

# Images decoded and classified together: 32 x 224 x 224 x 3 float32 is
# 19 MB, so a large test set never sits in memory at once.
CHUNK = 32


@dataclasses.dataclass
class Gate:
  """The held-out images and the rule a quantised export must pass.

  Attributes:
    paths: image files; labels[i] (int class id) is the truth of paths[i].
    subset: 'test' or 'validation', for the messages.
    max_loss_points: top-1 accuracy points a quantised model may lose.
    keep_lossy: keep a model that loses more (with a warning).
    calibration_count: int8 calibration images, named in the advice.
    results: filled in: one QuantizationCheck per quantised export.
  """
  paths: Sequence[str]
  labels: Sequence[int]
  subset: str = 'test'
  max_loss_points: float = 1.0
  keep_lossy: bool = False
  calibration_count: int = 100
  results: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class QuantizationCheck:
  """A quantised model against the float model on the same images.

  Accuracies and agreement are fractions in [0, 1]; loss_points is
  100 * (float_accuracy - quantized_accuracy), positive when quantising
  lost accuracy.
  """
  quantization: str
  subset: str
  count: int
  float_accuracy: float
  quantized_accuracy: float
  agreement: float
  max_probability_difference: float
  loss_points: float
  max_loss_points: float
  kept_despite_loss: bool = False

  def metadata(self) -> dict:
    return dataclasses.asdict(self)

  def summary(self) -> str:
    change = (f'{self.loss_points:.1f} points lost' if self.loss_points >= 0
              else f'{-self.loss_points:.1f} points gained')
    return (f'{self.quantization} TFLite on {self.count} {self.subset} '
            f'images: top-1 {100 * self.quantized_accuracy:.1f} % (float '
            f'model {100 * self.float_accuracy:.1f} %, {change}), agreement '
            f'{100 * self.agreement:.1f} %, largest probability difference '
            f'{self.max_probability_difference:.4f}')


def tflite_predictor(content: bytes) -> Callable[[np.ndarray], np.ndarray]:
  """float32 [n, H, W, 3] -> float32 [n, N] with a TFLite model in memory.

  One image per invoke (the model's converted batch is 1), on the runner
  and runtime the bottlenecks and label_image use
  (retrain.features.tflite_runner).
  """
  runner = tflite_runner.TFLiteRunner(
      tflite_runner.open_interpreter(model_content=content), invoke_batch=1)

  def predict(batch):
    return runner.run(batch)[0]

  return predict


def compare(quantization: str, float_predict: Callable, quantized_predict:
            Callable, gate: Gate, size) -> Optional[QuantizationCheck]:
  """Runs both models on gate.paths; None when no image could be used."""
  float_probs, quant_probs, truth = [], [], []
  for start in range(0, len(gate.paths), CHUNK):
    batch, labels = [], []
    for path, label in zip(gate.paths[start:start + CHUNK],
                           gate.labels[start:start + CHUNK], strict=True):
      try:
        batch.append(images_lib.load_image(path, size).numpy())
      except Exception:  # noqa: BLE001 unreadable photos were reported by the bottleneck step
        continue  # Already reported by the bottleneck step.
      labels.append(int(label))
    if batch:
      batch = np.stack(batch)
      float_probs.append(np.asarray(float_predict(batch)))
      quant_probs.append(np.asarray(quantized_predict(batch)))
      truth += labels
  if not truth:
    return None
  float_probs = np.concatenate(float_probs)
  quant_probs = np.concatenate(quant_probs)
  truth = np.asarray(truth)
  float_accuracy = head_math.accuracy(float_probs, truth)
  quantized_accuracy = head_math.accuracy(quant_probs, truth)
  return QuantizationCheck(
      quantization=quantization, subset=gate.subset, count=int(len(truth)),
      float_accuracy=float_accuracy, quantized_accuracy=quantized_accuracy,
      agreement=float(np.mean(float_probs.argmax(1) == quant_probs.argmax(1))),
      max_probability_difference=float(np.abs(float_probs -
                                              quant_probs).max()),
      loss_points=100.0 * (float_accuracy - quantized_accuracy),
      max_loss_points=gate.max_loss_points)


def enforce(check: QuantizationCheck, gate: Gate) -> None:
  """Logs the figures; raises OutputError if too much accuracy was lost."""
  logging.info('Quantization check: %s.', check.summary())
  if check.loss_points <= gate.max_loss_points:
    return
  others = [q for q in ('float16', 'dynamic', 'none')
            if q != check.quantization]
  advice = []
  if check.quantization == 'int8':
    advice.append(f'more calibration images (tflite_calibration_images, '
                  f'now {gate.calibration_count})')
  advice += [f'tflite_quantization={q!r}' for q in others]
  text = (f'The {check.summary()}: more than max_quantization_loss='
          f'{gate.max_loss_points:g} points. Try {", ".join(advice)}; or '
          'set keep_lossy_quantization to keep this model anyway.')
  fields = ('max_quantization_loss', 'tflite_calibration_images',
            'tflite_quantization', 'keep_lossy_quantization')
  if gate.keep_lossy:
    check.kept_despite_loss = True
    logging.warning('%s Kept, as keep_lossy_quantization asks.', text)
    return
  raise OutputError(text, fields=fields)
