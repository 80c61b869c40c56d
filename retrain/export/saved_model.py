"""Exporting the classifier: module plus trained head as one SavedModel.

The export folder describes itself, so inference needs no training flags
and no training data:

  saved_model.pb, variables/     the SavedModel
  labels.txt                     class names, row i is class id i
  retrain_metadata.json          labels, input size and value range,
                                 preprocessing, module identity, signatures

Signature `serving_default`: input `images` float32 [batch, H, W, 3] in
[0, 1] (decoded RGB, resized to H x W as `retrain.images` does) -> output
`probabilities` float32 [batch, N], columns in label order, and (when the
head has a novelty score) `novelty` float32 [batch], the feature vector's
distance to the classes (retrain.head.novelty; above the metadata's
`novelty.threshold`: not like any class).
Signature `serving_bytes`: input `image_bytes` string [batch] of encoded
image files -> the same output (see `retrain.export.signatures`).

Nothing a user made is lost: the export is written to a temporary folder
and renamed into place; an earlier export in the same place is first moved
to `<dir>.previous-<time>`. A non-empty folder that is not an export of
ours is never touched: `check_export_dir` refuses it before the run starts.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional, Sequence

import tensorflow as tf

from retrain.common import atomic, leftovers, names
from retrain.common import earlier_outputs as keep
from retrain.common.names import (
  IMAGES_INPUT,
  LABELS_FILE,
  METADATA_FILE,
  NOVELTY_OUTPUT,
  PROBABILITIES_OUTPUT,
  SERVING_SIGNATURE,
)
from retrain.errors import OutputError
from retrain.export import signatures as signatures_lib
from retrain.features.modules import FeatureModule
from retrain.head.model import Head
from retrain.version import __version__

FORMAT_VERSION = 1
PREPROCESSING = ('decode to RGB (grayscale repeated, alpha dropped, first GIF '
                 'frame, JPEG EXIF orientation applied), resize to '
                 'input_height x input_width (area averaging when shrinking '
                 'both sides, else bilinear with antialiasing), scale to '
                 'float32 [0, 1]; see retrain/images.py')


def is_export(path: str) -> bool:
  return os.path.isfile(os.path.join(path, METADATA_FILE))


def check_export_dir(path: str) -> None:
  """Raises OutputError if writing an export to `path` would destroy data."""
  if not path:
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise OutputError(f'saved_model_dir {path!r} is a file: give a folder '
                      'path (it is created).',
                      fields=('saved_model_dir',))
  if os.path.isdir(path) and os.listdir(path) and not is_export(path):
    raise OutputError(
        f'saved_model_dir {path!r} already holds files that are not a '
        'retrain export; refusing to overwrite them. Give a new or empty '
        'folder.',
        fields=('saved_model_dir',))
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  if not os.access(parent, os.W_OK):
    raise OutputError(f'Cannot write in {parent!r}: give a saved_model_dir '
                      'in a writable folder.',
                      fields=('saved_model_dir',))


class Classifier(tf.Module):
  """Feature module followed by the trained softmax layer."""

  def __init__(self, module: FeatureModule, head: Head, final_tensor_name: str):
    super().__init__(name='retrained_classifier')
    self.feature_module = module.obj
    self.final_weights = tf.Variable(head.weights, trainable=False,
                                     name='final_weights')
    self.final_biases = tf.Variable(head.biases, trainable=False,
                                    name='final_biases')
    self._final_tensor_name = final_tensor_name
    self._novelty = None
    if head.novelty is not None:
      # Variables, like the head's (constants captured from eager code
      # became extra graph inputs in the ONNX conversion).
      self._novelty = {name: tf.Variable(value, trainable=False,
                                         name=f'novelty_{name}')
                       for name, value in
                       head.novelty.graph_arrays().items()}
    self._activation = (tf.nn.sigmoid if getattr(head, "multi_label", False)
                        else tf.nn.softmax)
    height, width = module.input_size
    # Plain ops and Python branches on Python values only: AutoGraph would
    # give the same graph, after parsing and converting every function the
    # trace calls (most of the export's time).
    self.classify = tf.function(
        self._classify,
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32,
                                       name=IMAGES_INPUT)], autograph=False)

  def _classify(self, images):
    vectors = self.feature_module(images)
    logits = tf.matmul(vectors, self.final_weights) + self.final_biases
    outputs = {PROBABILITIES_OUTPUT: self._activation(
        logits, name=self._final_tensor_name)}
    if self._novelty is not None:
      outputs[NOVELTY_OUTPUT] = novelty_score(vectors, self._novelty)
    return outputs


def classifier_for(module, head, final_tensor_name: str):
  """The classifier the exports convert: `Classifier` of a module and head
  in memory, or the loaded classifier of a written export
  (retrain.export.from_disk.SavedModule, which has `saved_classifier`);
  either has `classify` (tf.function) and `_classify` (untraced), with the
  same inputs, outputs and op names."""
  loaded = getattr(module, 'saved_classifier', None)
  if loaded is not None:
    return loaded(head, final_tensor_name)
  return Classifier(module, head, final_tensor_name)


def novelty_score(vectors, arrays: dict):
  """float32 [batch] novelty of vectors float32 [batch, D], computed as
  retrain.head.novelty.Novelty.graph_scores does; op name NOVELTY_OUTPUT."""
  d = vectors - arrays['centre']
  dist = (arrays['rest'] * tf.reduce_sum(d * d, 1, keepdims=True) -
          tf.reduce_sum(tf.square(tf.matmul(d, arrays['basis'])), 1,
                        keepdims=True) -
          2.0 * tf.matmul(d, arrays['cross']) + arrays['offset'])
  score = tf.maximum(tf.reduce_min(dist, 1), 0.0) * arrays['scale']
  return tf.identity(score, name=NOVELTY_OUTPUT)


def describe_model(module: FeatureModule, labels: Sequence[str]) -> dict:
  """What every export says of itself (the SavedModel's metadata file and
  the side files of the other formats): labels in class id order, the input
  (float32 [batch, input_height, input_width, 3] in [0, 1], made as
  PREPROCESSING says) and the feature module."""
  height, width = module.input_size
  return {
      'format_version': FORMAT_VERSION,
      names.META_RETRAIN_VERSION: __version__,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
      names.META_LABELS: list(labels),
      names.META_INPUT_HEIGHT: height,
      names.META_INPUT_WIDTH: width,
      'input_dtype': 'float32',
      names.META_INPUT_VALUE_RANGE: [0.0, 1.0],
      names.META_PREPROCESSING: PREPROCESSING,
      'module': {
          'handle': module.handle,
          'resolved': module.resolved,
          'fingerprint': module.fingerprint,
          'output_dim': module.output_dim,
      },
  }


def labels_text(labels: Sequence[str]) -> str:
  """The labels file: one label a line, row i is class id i."""
  return ''.join(f'{label}\n' for label in labels)


def metadata(module: FeatureModule, labels: Sequence[str],
             final_tensor_name: str, extra: Optional[dict] = None) -> dict:
  """The SavedModel's metadata file: describe_model, its signatures and
  `extra`."""
  data = describe_model(module, labels)
  data.update({
      'signatures': {
          SERVING_SIGNATURE: {'inputs': {IMAGES_INPUT:
                                         'float32 [batch, H, W, 3]'},
                              'outputs': {PROBABILITIES_OUTPUT:
                                          'float32 [batch, N]'}},
          signatures_lib.BYTES_SIGNATURE: {
              'inputs': {signatures_lib.BYTES_INPUT:
                         'string [batch] (JPEG, PNG, GIF or BMP file '
                         'contents)'},
              'outputs': {PROBABILITIES_OUTPUT: 'float32 [batch, N]'}},
      },
      'final_tensor_name': final_tensor_name,
  })
  data.update(extra or {})
  if data.get(names.META_NOVELTY):
    for signature in data['signatures'].values():
      signature['outputs'][NOVELTY_OUTPUT] = 'float32 [batch]'
  return data


def write_labels(path: str, labels: Sequence[str]) -> None:
  """Writes labels one per line (row i is class id i), atomically."""
  atomic.write_text(path, labels_text(labels))


def export_saved_model(export_dir: str, module: FeatureModule, head: Head,
                       labels: Sequence[str], final_tensor_name: str,
                       extra_metadata: Optional[dict] = None) -> str:
  """Writes the classifier SavedModel to export_dir; returns its path."""
  check_export_dir(export_dir)
  export_dir = os.path.abspath(export_dir)
  classifier = Classifier(module, head, final_tensor_name)
  classify_bytes = signatures_lib.bytes_signature(classifier.classify,
                                                  module.input_size)
  # Assembled under a temporary name that says whose it is (removed if
  # anything fails; a later run removes it if this process is killed).
  with leftovers.temporary_for(export_dir) as tmp:
    tf.saved_model.save(classifier, tmp,
                        signatures={SERVING_SIGNATURE: classifier.classify,
                                    signatures_lib.BYTES_SIGNATURE:
                                    classify_bytes})
    write_labels(os.path.join(tmp, LABELS_FILE), labels)
    atomic.write_json(os.path.join(tmp, METADATA_FILE),
                      metadata(module, labels, final_tensor_name,
                               extra_metadata))
    if os.path.isdir(export_dir):
      if os.listdir(export_dir):
        keep.move_aside(export_dir)
      else:
        os.rmdir(export_dir)
    os.rename(tmp, export_dir)
  return export_dir
