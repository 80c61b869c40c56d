"""Classifying image files with a loaded export (retrain.predict.load):
finding the files (files, folders, globs), decoding them as training does
(retrain.images.load_image) on a thread pool while the model runs, one
`Record` per file with its top classes or the reason it failed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import os
import re
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from retrain.common import names
from retrain.errors import ImageError
from retrain.predict.load import (
  DEFAULT_BATCH_SIZE,
  DEFAULT_INPUT_MEAN,
  DEFAULT_INPUT_STD,
  DEFAULT_TOP_K,
  Model,
)


@dataclasses.dataclass
class Record:
  """The result for one image: top (label, probability) pairs or an error."""
  image: str
  top: List[Tuple[str, float]] = dataclasses.field(default_factory=list)
  error: Optional[str] = None
  # The top probability is below the confidence threshold (then `top`
  # still lists the classes).
  unknown: bool = False
  # The export's novelty score of the image (None: the export has none),
  # and whether it is above the stored novelty threshold.
  novelty: Optional[float] = None
  novel: bool = False
  # Multi-label models: (label, probability) of every label at or above its
  # threshold, most probable first (empty: none); None for other models.
  labels: Optional[List[Tuple[str, float]]] = None

  @property
  def reason(self) -> Optional[str]:
    """Why the prediction is `unknown` (names.REASON_NOVEL first, then
    names.REASON_LOW_CONFIDENCE), else None."""
    if self.novel:
      return names.REASON_NOVEL
    return names.REASON_LOW_CONFIDENCE if self.unknown else None

  @property
  def prediction(self) -> str:
    """The top label, or names.UNKNOWN when flagged for any reason; a
    multi-label model's labels above their thresholds, joined by ';'."""
    if self.labels is not None:
      return ';'.join(label for label, _ in self.labels)
    return names.UNKNOWN if self.reason else self.top[0][0]


# --- Finding the images -----------------------------------------------------------


def find_images(specs: Sequence[str],
                extensions: Optional[Sequence[str]] = None
                ) -> Tuple[List[str], List[Record]]:
  """Files from files, folders (recursive) and glob patterns.

  Args:
    extensions: the endings taken in folders (None: the ones training takes,
      retrain.images.IMAGE_EXTENSIONS).

  Returns:
    (paths in the order given, folders sorted; Records with an error for
    specs that match nothing).
  """
  from retrain import images as images_lib
  from retrain.common import walk as walk_lib
  extensions = tuple(extensions or images_lib.IMAGE_EXTENSIONS)
  paths, problems, seen = [], [], set()

  def add(path):
    if path not in seen:
      seen.add(path)
      paths.append(path)

  def add_folder(folder):
    # retrain's discovery walk: regular files only, each real folder once
    # (a link loop or a link to / cannot make it endless).
    parent = os.path.dirname(os.path.abspath(folder))
    walk = walk_lib.Walk(parent)
    for rel in walk_lib.list_images(
        os.path.abspath(folder), parent, extensions, walk):
      add(os.path.join(parent, *rel.split('/')))
    problems.extend(Record(p, error=r) for p, r in walk.skipped)

  for spec in specs:
    if os.path.isdir(spec):
      before = len(paths)
      add_folder(spec)
      if len(paths) == before:
        problems.append(Record(spec, error='folder holds no images (accepted '
                               f'endings: {" ".join(extensions)})'))
    elif os.path.exists(spec):
      add(spec)  # A file named on purpose is tried whatever its ending.
    elif glob.has_magic(spec):
      matches = sorted(glob.glob(spec, recursive=True))
      for match in matches:
        if os.path.isdir(match):
          add_folder(match)
        else:
          add(match)
      if not matches:
        problems.append(Record(spec, error='pattern matches no file'))
    else:
      problems.append(Record(spec, error='no such file or folder'))
  return paths, problems


# --- Classifying ------------------------------------------------------------------


def _reason(error: Exception) -> str:
  """A one-line reason from a TF error, without its op and device noise.

  No path in it: the record of the image already names it.
  """
  if isinstance(error, ImageError):
    return error.reason
  message = (getattr(error, 'message', None) or str(error)).strip()
  message = re.sub(r'\{\{[^}]*\}\}\s*', '', message)
  message = re.sub(r'\s*\[Op:[^\]]*\].*$', '', message, flags=re.S)
  message = message.splitlines()[0].strip() if message else ''
  return message or type(error).__name__


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How an image file becomes the model's input.

  Attributes:
    input_mean, input_std: the model takes (pixel - input_mean) / input_std
      of pixels in [0, 255]; the defaults give the [0, 1] retrain's models
      take.
    max_pixels: images whose decoded size would exceed this many pixels are
      refused (None: retrain's limit).
  """
  input_mean: float = DEFAULT_INPUT_MEAN
  input_std: float = DEFAULT_INPUT_STD
  max_pixels: Optional[int] = None


def _load(path: str, size, decoding: Decoding, box=None):
  """float32 [H, W, 3] ready for the model, or the reason it failed.

  Images over `decoding.max_pixels` (default: retrain's) or truncated are
  refused from their header; the decoding threads share one pixel budget
  (retrain.images), so they never hold one worst-case image each.
  box: None, or the crop (top, left, bottom, right) in [0, 1] (--boxes).
  """
  from retrain import image_header
  from retrain import images as images_lib
  try:
    image = images_lib.load_image(path, size, decoding.max_pixels or
                              image_header.MAX_IMAGE_PIXELS, box=box).numpy()
  except Exception as e:  # noqa: BLE001 any decoding failure becomes this file's reason
    return _reason(e)
  if (decoding.input_mean, decoding.input_std) != (DEFAULT_INPUT_MEAN,
                                                   DEFAULT_INPUT_STD):
    image = (image * 255.0 - decoding.input_mean) / decoding.input_std
  return image


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


@dataclasses.dataclass
class Timing:
  """Where classify_files spent its time (seconds)."""
  images: int = 0
  total: float = 0.0
  model: float = 0.0


def classify_files(model: Model, paths: Sequence[str],
                   top_k: int = DEFAULT_TOP_K,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   decoding: Optional[Decoding] = None,
                   timing: Optional[Timing] = None,
                   min_confidence: Optional[float] = None,
                   crops: Optional[Sequence] = None) -> List[Record]:
  """Classifies image files in batches; one Record per path, in order.

  Files are decoded (as `decoding` says; default Decoding()) on a thread
  pool while the model runs on the previous batch. A file that cannot be
  read or decoded gets a Record with its error. A Record whose top
  probability is below `min_confidence` (None: the model's stored
  threshold; 0: never) has unknown=True.
  With `crops` (one per path: objects with `box`, float32 [4] (top, left,
  bottom, right) in [0, 1], and `name`, as
  retrain.data.annotations.crop.InferenceCrop) the box of each path is
  classified and the record takes the crop's name.
  """
  decoding = decoding or Decoding()
  boxes = None if crops is None else [c.box for c in crops]
  crop_names = None if crops is None else [c.name for c in crops]
  if min_confidence is None:
    min_confidence = model.threshold
  # A live bar with rate and time left on a terminal, else a log line every
  # 10 s (the same progress as retrain's long phases).
  from retrain.common.progress import Progress
  timing = timing if timing is not None else Timing()
  started = time.monotonic()
  top_k = max(1, min(top_k, len(model.labels)))
  records = []
  progress = Progress('Classified', len(paths), interval=10.0)
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:

    def submit(k):
      return [pool.submit(_load, p, model.input_size, decoding, box)
              for p, box in zip(chunks[k], box_chunks[k], strict=True)]

    chunks = list(_chunks(list(paths), max(1, batch_size)))
    box_chunks = list(_chunks(list(boxes) if boxes is not None else
                              [None] * len(paths), max(1, batch_size)))
    name_chunks = list(_chunks(list(crop_names) if crop_names is not None else
                               list(paths), max(1, batch_size)))
    pending = submit(0) if chunks else []
    for k, _ in enumerate(chunks):
      loaded = [f.result() for f in pending]
      pending = submit(k + 1) if k + 1 < len(chunks) else []
      good = [i for i, x in enumerate(loaded) if isinstance(x, np.ndarray)]
      probs = np.zeros([0, len(model.labels)], np.float32)
      novelty = [None] * len(good)
      if good:
        tick = time.monotonic()
        probs = model.predict(np.stack([loaded[i] for i in good]))
        if model.last_novelty is not None:
          novelty = model.last_novelty()
        timing.model += time.monotonic() - tick
      row = dict(zip(good, zip(probs, novelty)))
      for i, path in enumerate(name_chunks[k]):
        if i in row:
          records.append(make_record(model, path, *row[i], top_k,
                                      min_confidence))
        else:
          records.append(Record(path, error=loaded[i]))
      progress.update(len(chunks[k]))
  timing.images += len(paths)
  timing.total += time.monotonic() - started
  return records


def make_record(model: Model, path: str, probabilities: np.ndarray, novelty,
            top_k: int, min_confidence: float) -> Record:
  """The Record of one classified image: probabilities float32 [N],
  novelty a score or None."""
  order = np.argsort(-probabilities, kind='stable')
  score = None if novelty is None else float(novelty)
  return Record(
      path, [(model.labels[j], float(probabilities[j]))
             for j in order[:top_k]],
      unknown=bool(probabilities.max() < min_confidence)
      and model.label_thresholds is None,
      novelty=score,
      novel=bool(score is not None and score > model.novelty_threshold),
      labels=_above(model, probabilities, order))


def _above(model: Model, probabilities: np.ndarray, order
           ) -> Optional[List[Tuple[str, float]]]:
  """(label, probability) at or above each label's threshold, in `order`;
  None for a single-label model."""
  if model.label_thresholds is None:
    return None
  return [(model.labels[j], float(probabilities[j])) for j in order
          if probabilities[j] >= model.label_thresholds[j]]
