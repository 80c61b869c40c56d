"""The classifier as an ONNX model (`--onnx_output_file`), for ONNX Runtime.

Same function as the SavedModel's `serving_default`: input `images`
float32 [batch, H, W, 3] in [0, 1] (decoded RGB, resized as
`retrain.images` does) -> output `probabilities` float32 [batch, N],
column j is class id j.

The model describes itself in its `metadata_props` (string key -> value),
read with `onnxruntime.InferenceSession(...).get_modelmeta()
.custom_metadata_map` or `onnx.load(...).metadata_props`:
  labels               JSON list, entry j is class id j
  input_height, input_width, input_value_range ("[0.0, 1.0]")
  preprocessing        how images become the input (see saved_model.py)
  retrain_metadata     the full JSON metadata (module, calibration,
                       rejection threshold, ...), as the SavedModel's
                       retrain_metadata.json

Converter: tf2onnx (optional extra `pip install retrain[onnx]`), which
converts the same tf.function the SavedModel serves (no SavedModel
round trip); tf2onnx 1.17 converts the bundled EfficientNet-Lite modules
under TF 2.21 and ONNX Runtime matches TensorFlow to 1e-6.
"""

from __future__ import annotations

import json
from typing import Sequence

from retrain.common.names import (
  IMAGES_INPUT,
  ONNX_LABELS_KEY,
  ONNX_METADATA_KEY,
  OUTPUT_TENSOR_NAME,
)
from retrain.errors import OutputError

# ONNX opset 17 runs in every ONNX Runtime since 1.13 (2022) and has every
# op these models need.
OPSET = 17


class OnnxUnavailable(ImportError):
  """tf2onnx (the converter) is not installed."""


def onnx_model(module, head, labels: Sequence[str], metadata: dict,
               opset: int = OPSET) -> bytes:
  """The serialized ONNX ModelProto of module + head.

  Args:
    module: a retrain.features.modules.FeatureModule.
    head: a retrain.head.train.Head (weights [D, N], biases [N]).
    labels: N class names in class id order.
    metadata: JSON-ready metadata stored as `retrain_metadata`.

  Raises:
    OnnxUnavailable: tf2onnx is not installed.
    OutputError: the converter failed on this module (with its message).
  """
  try:
    import tf2onnx
  except ImportError as e:
    raise OnnxUnavailable('tf2onnx is not installed: pip install '
                          '"retrain[onnx]" (tf2onnx, onnx, onnxruntime) for '
                          '--onnx_output_file.') from e
  import tensorflow as tf

  from retrain.export import saved_model as export_lib
  classifier = export_lib.Classifier(module, head, OUTPUT_TENSOR_NAME)
  height, width = module.input_size
  try:
    proto, _ = tf2onnx.convert.from_function(
        classifier.classify,
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32,
                                       name=IMAGES_INPUT)],
        opset=opset)
  except Exception as e:
    raise OutputError(f'tf2onnx could not convert {module.handle!r} to ONNX '
                      f'({type(e).__name__}: {e}); leave --onnx_output_file '
                      'empty, or use the SavedModel or TFLite export.') from e
  props = {
      ONNX_LABELS_KEY: json.dumps(list(labels)),
      'input_height': str(height),
      'input_width': str(width),
      'input_value_range': json.dumps(metadata.get('input_value_range',
                                                   [0.0, 1.0])),
      'preprocessing': str(metadata.get('preprocessing', '')),
      ONNX_METADATA_KEY: json.dumps(metadata),
  }
  del proto.metadata_props[:]
  for key, value in props.items():
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value
  proto.producer_name = 'retrain (tf2onnx)'
  proto.doc_string = ('retrain image classifier: images float32 [batch, H, '
                      'W, 3] in [0, 1] -> probabilities float32 [batch, N]; '
                      'labels in metadata_props')
  return proto.SerializeToString()
