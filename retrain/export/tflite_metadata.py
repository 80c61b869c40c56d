"""TFLite metadata that MediaPipe Tasks (and the TFLite Task Library) read.

`embed` writes, into the .tflite file itself:
- the input's normalisation: our models take float32 [1, H, W, 3] in
  [0, 1]; MediaPipe feeds (pixel - mean) / std with pixels in [0, 255], so
  mean 0 and std 255 (the same convention as label_image's --input_mean /
  --input_std), and the colour space RGB;
- the labels as the output's associated file `labels.txt` (row j is class
  id j), so `ImageClassifier` names its categories;
- the rejection threshold (when there is one) as the output's score
  threshold: MediaPipe then returns no category below it, its way of
  saying "unknown" (set `score_threshold` in the options to override);
- the model name and description, the retrain version as the model
  version, and this project's metadata (labels, input size, module,
  quantization figures, calibration) as the model's associated file
  `retrain_metadata.json`.

Associated files are packed as a zip archive appended to the flatbuffer,
so retrain.predict.tflite.read_embedded gets them back with the standard
library alone; writing needs the optional `mediapipe` package
(`pip install retrain[mediapipe]`).
We use its `metadata_writers` because it is the maintained writer:
`tflite-support` has had no release since 2023 and has no wheel for recent
Pythons and TF 2.21's protobuf.
"""

from __future__ import annotations

import gc
import importlib
import sys
import types
from typing import Sequence, Tuple

from retrain.common import strict_json
from retrain.common.names import (
  LABELS_FILE,
  META_NOVELTY,
  META_RETRAIN_VERSION,
  METADATA_FILE,
  NOVELTY_OUTPUT,
)

NOVELTY_LABELS_FILE = 'novelty_label.txt'
# MediaPipe's normalisation (pixel - mean) / std of pixels in [0, 255]
# giving our [0, 1] input.
NORM_MEAN = 0.0
NORM_STD = 255.0
MODEL_NAME = 'retrain image classifier'

_MISSING_VERSION_MODULE = 'mediapipe.tasks.cc.metadata.python'


class MetadataWriterUnavailable(ImportError):
  """The optional mediapipe package (or its metadata writer) is missing."""


def _minimum_parser_version(metadata_buffer: bytes) -> str:
  """Stand-in for mediapipe's C++ GetMinimumMetadataParserVersion.

  Every field `embed` writes (image normalisation, a label file, a score
  threshold, model-level associated files without a version) is in the
  metadata schema since 1.0.0, so that is the minimum parser version.
  """
  del metadata_buffer
  return '1.0.0'


def _import_metadata_modules():
  """mediapipe's (metadata, metadata_writer, metadata schema) modules.

  The mediapipe 1.2.x wheels omit the small compiled module that computes
  the metadata's minimum parser version, so `metadata.py` fails to import
  (`No module named 'mediapipe.tasks.cc'`). We then lend it a stand-in
  (see _minimum_parser_version) only while importing, and remove it from
  sys.modules afterwards so nothing else sees it.
  """
  try:
    import mediapipe  # noqa: F401
  except ImportError as e:
    raise MetadataWriterUnavailable(
        'the mediapipe package is not installed') from e
  added = []
  try:
    importlib.import_module(f'{_MISSING_VERSION_MODULE}.'
                            '_pywrap_metadata_version')
  except ImportError:
    parts = _MISSING_VERSION_MODULE.split('.')
    for i in range(3, len(parts) + 1):
      name = '.'.join(parts[:i])
      if name not in sys.modules:
        sys.modules[name] = types.ModuleType(name)
        added.append(name)
    stand_in = types.ModuleType(f'{_MISSING_VERSION_MODULE}.'
                                '_pywrap_metadata_version')
    stand_in.GetMinimumMetadataParserVersion = _minimum_parser_version
    sys.modules[stand_in.__name__] = stand_in
    added.append(stand_in.__name__)
  try:
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema
    from mediapipe.tasks.python.metadata import metadata
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer
  except ImportError as e:
    raise MetadataWriterUnavailable(
        f'mediapipe is installed but its metadata writer does not import '
        f'({e})') from e
  finally:
    for name in added:
      sys.modules.pop(name, None)
  return metadata, metadata_writer, schema


def writer_available() -> Tuple[bool, str]:
  """(True, '') when `embed` can run, else (False, the reason)."""
  try:
    _import_metadata_modules()
  except MetadataWriterUnavailable as e:
    return False, str(e)
  return True, ''


def embed(model: bytes, labels: Sequence[str], project: dict,
          threshold: float = 0.0, description: str = '') -> bytes:
  """The TFLite flatbuffer `model` with metadata written into it.

  Args:
    model: a TFLite model with one float32 image input [1, H, W, 3] in
      [0, 1] and one float32 output [1, N] of probabilities (then, when
      project has 'novelty', a second output [1], the novelty score).
    labels: N class names; row j of labels.txt is class id j.
    project: this project's metadata (JSON-ready), stored as
      retrain_metadata.json.
    threshold: the rejection threshold in [0, 1]; 0 writes none.
    description: the model description shown by metadata viewers.

  Raises:
    MetadataWriterUnavailable: mediapipe is absent or its writer broken.
  """
  import flatbuffers
  metadata, metadata_writer, schema = _import_metadata_modules()
  writer = metadata_writer.MetadataWriter.create(bytearray(model))
  writer.add_general_info(MODEL_NAME, description)
  writer.add_image_input([NORM_MEAN], [NORM_STD])
  writer.add_classification_output(
      metadata_writer.Labels().add(list(labels), exported_filename=LABELS_FILE),
      score_thresholding=(metadata_writer.ScoreThresholding(float(threshold))
                          if threshold > 0 else None))
  if project.get(META_NOVELTY):
    # The second output, the novelty score, described as a one-class
    # classification head named `novelty`: MediaPipe's ImageClassifier
    # runs every output as a head and needs a label map for each (a plain
    # feature output failed there), so it reports classifications[1] =
    # [novelty: score] beside the classes in classifications[0].
    writer.add_classification_output(
        metadata_writer.Labels().add([NOVELTY_OUTPUT],
                                     exported_filename=NOVELTY_LABELS_FILE),
        name=NOVELTY_OUTPUT, description='float32 [batch]: distance of the '
        'feature vector to the classes; above the threshold in '
        f'{METADATA_FILE} (novelty.threshold) the photo is not like any '
        'class')
  with_labels, _ = writer.populate()

  # The writer has no call for model-level fields beyond name and
  # description, so add the version and our JSON with mediapipe's
  # populator: it keeps the packed labels.txt and appends ours.
  buffer = metadata.get_metadata_buffer(bytes(with_labels))
  model_md = schema.ModelMetadataT.InitFromObj(
      schema.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
  model_md.version = str(project.get(META_RETRAIN_VERSION, ''))
  project_file = schema.AssociatedFileT()
  project_file.name = METADATA_FILE
  project_file.description = ('retrain metadata: labels, input size and '
                              'value range, module, quantization figures, '
                              'calibration and rejection threshold')
  project_file.type = schema.AssociatedFileType.DESCRIPTIONS
  model_md.associatedFiles = list(model_md.associatedFiles or []) + [
      project_file]
  builder = flatbuffers.Builder(0)
  builder.Finish(model_md.Pack(builder),
                 metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)
  populator = metadata.MetadataPopulator.with_model_buffer(bytes(with_labels))
  populator.load_metadata_buffer(builder.Output())
  populator.load_associated_file_buffers(
      {METADATA_FILE: strict_json.dumps(project, indent=2).encode()})
  populator.populate()
  content = bytes(populator.get_model_buffer())
  # Both objects clean up temporary files in __del__, which fails noisily
  # if it first runs at interpreter exit; they sit in reference cycles, so
  # collect them now.
  del writer, populator
  gc.collect()
  return content

