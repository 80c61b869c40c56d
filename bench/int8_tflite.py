"""The float and int8 TFLite exports of an int8-bottleneck run, compared.

  python bench/int8_tflite.py --image_dir ../shared/datasets/flowers_sample \
      --saved_model_dir RUN/saved_model --float_tflite F.tflite \
      --int8_tflite I.tflite [--batch 8] [--repeats 3]

Both files are written by `python -m retrain --bottleneck_precision int8`
(--tflite_quantization none, and int8) on the same photos. Prints, per
file, its size and its speed (images/s through the TFLite runner, the
photos decoded beforehand, best of --repeats), and for each the largest
difference of a class probability from the head (the SavedModel's
final_weights and final_biases) on the int8 vectors of the held-out test
photos (the run's split: --testing_percentage and
--validation_percentage at their defaults), computed by the members'
int8 interpreters as the bottleneck step computes the cached vectors
(each member's photos area-resized from the ensemble's size to its own).
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

from retrain import images as images_lib  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.data import split as split_lib  # noqa: E402
from retrain.features import ensemble as ensemble_lib  # noqa: E402
from retrain.features import int8, tflite_runner  # noqa: E402
from retrain.head.model import Head  # noqa: E402


def test_photos(image_dir: str):
  """The held-out test photos of a default run on image_dir, sorted."""
  root = pathlib.Path(image_dir)
  paths = sorted(p for p in root.rglob('*')
                 if p.suffix.lower() in ('.jpg', '.jpeg', '.png'))
  rel = [str(p.relative_to(root)) for p in paths]
  classes = sorted({r.split(os.sep)[0] for r in rel})
  labels = [classes.index(r.split(os.sep)[0]) for r in rel]
  split = split_lib.split_images(rel, labels,
                                 DEFAULTS.data.validation_percentage,
                                 DEFAULTS.data.testing_percentage)
  return [str(paths[i]) for i in sorted(split.subset('test'))]


def int8_vectors(decoded: np.ndarray, size) -> np.ndarray:
  """float32 [n, D] of the default ensemble's int8 members."""
  module = ensemble_lib.load(DEFAULTS.module.tfhub_module)
  parts = []
  for member in ensemble_lib.members(module):
    quantized = int8.load(member)
    own = tuple(member.input_size)
    x = decoded if own == tuple(size) else ensemble_lib.area_resize(
        decoded, tuple(size), own).numpy()
    parts.append(np.asarray(quantized.call(x)))
  return np.concatenate(parts, axis=1)


def measure(path: str, decoded: np.ndarray, batch: int, repeats: int):
  """(probabilities float32 [n, N], best images/s)."""
  runner = tflite_runner.TFLiteRunner(
      tflite_runner.open_interpreter(model_path=path), batch,
      decoded.shape[1:3])
  best = 0.0
  for _ in range(repeats):
    started = time.perf_counter()
    outputs = runner.run(decoded)
    best = max(best, len(decoded) / (time.perf_counter() - started))
  return next(o for o in outputs if o.ndim == 2), best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_dir', required=True)
  parser.add_argument('--saved_model_dir', required=True)
  parser.add_argument('--float_tflite', required=True)
  parser.add_argument('--int8_tflite', required=True)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  import tensorflow as tf
  loaded = tf.saved_model.load(args.saved_model_dir)
  head = Head(loaded.final_weights.numpy(), loaded.final_biases.numpy())
  del loaded
  paths = test_photos(args.image_dir)
  module_size = ensemble_lib.largest_size(ensemble_lib.members(
      ensemble_lib.load(DEFAULTS.module.tfhub_module)))
  decoded = np.stack([images_lib.load_image(p, module_size).numpy()
                      for p in paths])
  want = head.probabilities(int8_vectors(decoded, module_size))
  print(f'{len(paths)} test photos of {args.image_dir}, '
        f'{os.cpu_count()} cores, batch {args.batch}')
  for name, path in (('float', args.float_tflite),
                     ('int8', args.int8_tflite)):
    got, speed = measure(path, decoded, args.batch, args.repeats)
    same = float(np.mean(got.argmax(1) == want.argmax(1)))
    print(f'{name:6s} {os.path.getsize(path) / 1e6:6.1f} MB  '
          f'{speed:6.1f} images/s  max |p - head(int8 vectors)| '
          f'{np.abs(got - want).max():.2e}  same top class {100 * same:.0f} %')


if __name__ == '__main__':
  main()
