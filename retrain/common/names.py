"""Names shared by several steps and the command line, each defined once.

The accepted values of the settings that take one of a few words (the
library checks values against these tuples and the command line offers them
as its flags' choices), and the export's contract: the file names, metadata
keys and tensor names that the exports are written with and read by, and
the few defaults label_image shares with the run's settings. Kept
free of TensorFlow (and of any import) so that `--help`, flag errors and
label_image answer at once.
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

# --- The export's contract: what retrain/export/ writes and retrain/predict/
# (label_image, retrain.load, retrain.evaluate) reads.

# The frozen graph's input op (retrain.py's name, which label_image commands
# of the TensorFlow tutorial pass as --input_layer) and the default name of
# the output op of the probabilities (retrain.py's --final_tensor_name).
INPUT_TENSOR_NAME = 'Placeholder'
OUTPUT_TENSOR_NAME = 'final_result'
# The SavedModel's signature of images, its input and its outputs (also the
# ONNX model's input and output names): images float32 [batch, H, W, 3] in
# [0, 1] -> probabilities float32 [batch, N] and, when the head has a
# novelty score, novelty float32 [batch] (also the frozen graph's op name).
SERVING_SIGNATURE = 'serving_default'
IMAGES_INPUT = 'images'
PROBABILITIES_OUTPUT = 'probabilities'
NOVELTY_OUTPUT = 'novelty'
# Files in the SavedModel folder, and packed in the .tflite file (its
# associated files): the labels (row j is class id j) and the metadata JSON.
LABELS_FILE = 'labels.txt'
METADATA_FILE = 'retrain_metadata.json'
# The two files beside a .pb or .tflite file, named after the whole model
# file name (flowers.pb -> flowers.pb.labels.txt, flowers.pb.metadata.json).
LABELS_SUFFIX = '.labels.txt'
METADATA_SUFFIX = '.metadata.json'
# The ONNX model's metadata_props keys: the metadata JSON and the labels
# (a JSON list).
ONNX_METADATA_KEY = 'retrain_metadata'
ONNX_LABELS_KEY = 'labels'

# The keys of the metadata JSON (retrain_metadata.json, the X.metadata.json
# side file, the copy packed in a .tflite file and the ONNX model's
# retrain_metadata) that the writers and the readers share.
META_LABELS = 'labels'  # class names, row j is class id j
META_INPUT_HEIGHT = 'input_height'  # the model's input size in pixels
META_INPUT_WIDTH = 'input_width'
META_INPUT_VALUE_RANGE = 'input_value_range'  # [0.0, 1.0]
META_PREPROCESSING = 'preprocessing'  # how images become the input
META_RETRAIN_VERSION = 'retrain_version'
META_MODEL_FILE = 'model_file'  # side file: the model file it describes
META_QUANTIZATION = 'quantization'  # TFLite: one of QUANTIZATIONS
# The rejection by confidence: {threshold: the top probability in [0, 1]
# below which a photo is `unknown` (0: none), temperature: the calibrated
# softmax temperature, ...}.
META_CONFIDENCE = 'confidence'
CONFIDENCE_THRESHOLD = 'threshold'
CONFIDENCE_TEMPERATURE = 'temperature'
# Why a photo's prediction is `unknown` (label_image's reason column,
# retrain.load(...).predict's reasons): its features are far from every
# class (the novelty score), or its top probability is below the stored
# threshold.
UNKNOWN = 'unknown'
REASON_NOVEL = 'not like any class'
REASON_LOW_CONFIDENCE = 'low confidence'
# The novelty score, when the head has one: {threshold: above it a photo is
# not like any class, ...}.
META_NOVELTY = 'novelty'
NOVELTY_THRESHOLD = 'threshold'
# A multi-label head: {thresholds: one per label, label order, ...}.
META_MULTI_LABEL = 'multi_label'
MULTI_LABEL_THRESHOLDS = 'thresholds'
MULTI_LABEL_LABELS = 'labels'

# Where a run is found by default: retrain's --output_dir holds the runs,
# and each run's SavedModel is this folder in it (--saved_model_dir's
# default, {run}/saved_model); label_image's default model is the latest.
RUNS_DIR = 'retrain_runs'
SAVED_MODEL_IN_RUN = 'saved_model'
# Crops to annotated boxes, in training and in label_image --boxes: percent
# of context around each box (--crop_margin's default) and the smallest
# box side in pixels cropped (--min_box_size's default).
CROP_MARGIN = 5.0
MIN_BOX_SIZE = 8


def plural(n: int, noun: str) -> str:
  """'1 image', '2 images', '1 class', '3 classes', '0 copies'."""
  if n == 1:
    return f'{n} {noun}'
  if noun.endswith(('s', 'x', 'ch', 'sh')):
    return f'{n} {noun}es'
  if noun.endswith('y') and noun[-2:-1] not in 'aeiou':
    return f'{n} {noun[:-1]}ies'
  return f'{n} {noun}s'
