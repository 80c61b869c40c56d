"""Names shared by several steps and the command line, each defined once.

The accepted values of the settings that take one of a few words (the
library checks values against these tuples and the command line offers them
as its flags' choices), and the tensor names of the exported graphs. Kept
free of TensorFlow so that `--help` and flag errors answer at once.
"""

# How image_dir is laid out (retrain/data/sources.py).
LAYOUTS = ('auto', 'class_folders', 'split_folders')
# How folder names / CSV labels become class names (retrain/data/sources.py).
LABEL_STYLES = ('verbatim', 'retrain')
# What runs the module for bottlenecks (retrain/features/tflite_runtime.py).
BOTTLENECK_RUNTIMES = ('tf', 'tflite', 'auto')
# The arithmetic of the bottleneck module (retrain/features/int8.py).
BOTTLENECK_PRECISIONS = ('auto', 'float32', 'int8')
# Training options (retrain/head/options.py).
OPTIMIZERS = ('sgd', 'momentum', 'adam')
CLASS_WEIGHTINGS = ('none', 'balanced')
SAMPLINGS = ('classes', 'images')
# Quantization of the TFLite export (retrain/export/formats.py).
QUANTIZATIONS = ('none', 'dynamic', 'float16', 'int8')

# The frozen graph's input op (retrain.py's name, which label_image commands
# of the TensorFlow tutorial pass as --input_layer) and the default name of
# the output op of the probabilities (retrain.py's --final_tensor_name).
INPUT_TENSOR_NAME = 'Placeholder'
OUTPUT_TENSOR_NAME = 'final_result'


def plural(n: int, noun: str) -> str:
  """'1 image', '2 images', '1 class', '3 classes', '0 copies'."""
  if n == 1:
    return f'{n} {noun}'
  if noun.endswith(('s', 'x', 'ch', 'sh')):
    return f'{n} {noun}es'
  if noun.endswith('y') and noun[-2:-1] not in 'aeiou':
    return f'{n} {noun[:-1]}ies'
  return f'{n} {noun}s'
