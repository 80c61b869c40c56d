"""The SavedModel's second serving signature: encoded image files in.

`serving_bytes`: input `image_bytes` string [batch], each element the whole
contents of a JPEG, PNG, GIF (first frame) or BMP file -> output
`probabilities` float32 [batch, N], columns in label order.

Decoding and resizing happen inside the graph with `retrain.images.
decode_and_resize`, the very function that made the training bottlenecks,
so TF Serving, `saved_model_cli run` or any TF program can be fed raw files
and sees the same pixels training saw. Every op is a TF graph op (no
py_function), so the signature survives export and serving.

One undecodable element fails the whole call (a graph cannot skip a row);
`tools/label_image.py` decodes file by file instead, to report and go on.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import tensorflow as tf

from retrain import images as images_lib

BYTES_SIGNATURE = 'serving_bytes'
BYTES_INPUT = 'image_bytes'


def bytes_signature(classify: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
                    size: Tuple[int, int]) -> tf.types.experimental.Function:
  """A tf.function string [batch] -> classify(decoded images).

  Args:
    classify: float32 [batch, H, W, 3] in [0, 1] -> {'probabilities': ...};
      the float signature of the export.
    size: (H, W) the images are resized to.
  """
  height, width = size

  def decode(contents):
    return images_lib.decode_and_resize(contents, (height, width))

  # No AutoGraph: decode_and_resize branches with tf.cond itself (see
  # Classifier.classify).
  @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                              name=BYTES_INPUT)],
               autograph=False)
  def classify_bytes(image_bytes):
    # map_fn because images differ in size until decode_and_resize has run.
    images = tf.map_fn(
        decode, image_bytes,
        fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
    return classify(images)

  return classify_bytes
