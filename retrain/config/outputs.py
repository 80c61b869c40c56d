"""The settings of what a run writes (`Outputs`), the confidence and
novelty stored in every export (`Deploy`) and runs too large for memory
(`Scale`). See retrain/config/__init__.py."""

from __future__ import annotations

import dataclasses

from retrain.common import names
from retrain.common.settings import setting


@dataclasses.dataclass(frozen=True)
class Outputs:
  """What a run writes: its folder, the SavedModel, reports, the other export
  formats and the check of quantized TFLite models (retrain/export/)."""

  # Each run writes into a folder of its own, <output_dir>/<data set>/<run
  # id>/, and <output_dir>/<data set>/latest points to the last finished one
  # (retrain/common/runs.py). A path below that starts with {run}/ is inside
  # that folder; a path given instead is used as it is (retrain.py's fixed
  # /tmp paths made runs overwrite each other's outputs).
  output_dir: str = setting(names.RUNS_DIR,
      'Each run writes into a new folder <output_dir>/<image folder '
      'name>/<run id>/ ({run} in the paths below); "latest" beside it '
      'points to the last finished run.')
  summaries_dir: str = setting('{run}/summaries',
      'Where TensorBoard summaries are written.')
  output_labels: str = setting('{run}/labels.txt',
      'Where the labels file is written (one per line, class id order).')
  # retrain.py wrote no SavedModel unless asked; the SavedModel is this
  # project's main artifact, so it is written by default.
  saved_model_dir: str = setting(f'{{run}}/{names.SAVED_MODEL_IN_RUN}',
      'Where the classifier SavedModel is exported ("" for none).')
  final_tensor_name: str = setting(names.OUTPUT_TENSOR_NAME,
      'Name of the output (probabilities) tensor.')
  print_misclassified_test_images: bool = setting(False,
      'List every misclassified test image.')
  # Machine-readable reports of a run (skipped files, per-class metrics,
  # confusion matrix, misclassified images).
  report_dir: str = setting('{run}/report',
      'Where machine-readable reports of the run are written.')
  # Images shown in TensorBoard's embedding projector (a sample spread over
  # the data set; 0 for none). 1000 thumbnails take a few seconds to make.
  projector_max_images: int = setting(1000,
      "Images shown in TensorBoard's embedding projector; 0 for none.",
      at_least=0)
  # retrain.py's frozen graph: only when asked for (it repeats the
  # SavedModel's weights, 49 MB for the default ensemble, and label_image
  # reads the SavedModel).
  output_graph: str = setting('',
      'Where a frozen GraphDef (input Placeholder, output '
      '--final_tensor_name) is written ("" for none).')
  # No intermediate graphs unless a frequency is given (retrain.py's default).
  intermediate_output_graphs_dir: str = setting('{run}/intermediate_graphs/',
      'Where intermediate frozen graphs are written.')
  intermediate_store_frequency: int = setting(0,
      'Steps between intermediate frozen graphs; 0 for none.')
  # retrain.py wrote /tmp/_retrain_checkpoint as a scratch file to rebuild
  # its graph for export, never as a product; here the head is in every
  # export, so a checkpoint is written only when asked for.
  checkpoint_path: str = setting('',
      'Where a checkpoint of the trained head is written ("" for none).')
  # A TFLite model ("" for none): quantization none (float32), dynamic,
  # float16 or int8 (calibrated on this many training images).
  tflite_output_file: str = setting('',
      'Where a TFLite model is written ("" for none).')
  tflite_quantization: str = setting('none',
      'Quantization of the TFLite model.',
      choices=names.QUANTIZATIONS)
  tflite_calibration_images: int = setting(100,
      'Training images that calibrate int8 quantization.')
  # An ONNX model ("" for none); needs the [onnx] extra (tf2onnx).
  onnx_output_file: str = setting('',
      'Where an ONNX model is written ("" for none; needs pip install '
      '"retrain[onnx]").')
  # A quantized TFLite model that loses more than this many points of top-1
  # accuracy against the float model (on the test set) is refused. One
  # point is about the noise of a few hundred test images; int8 of the
  # bundled modules measured well under it on flowers_sample.
  max_quantization_loss: float = setting(1.0,
      'Points of top-1 test accuracy a quantized TFLite model may lose '
      'against the float model before it is refused.')
  keep_lossy_quantization: bool = setting(False,
      'Keep a quantized TFLite model that loses more than '
      '--max_quantization_loss (with a warning).')


@dataclasses.dataclass(frozen=True)
class Deploy:
  """The confidence stored in every export: calibration, the rejection
  threshold and the novelty score (retrain/head/calibration.py,
  retrain/head/novelty.py)."""

  # Temperature scaling of the exported probabilities on the validation set
  # (changes no prediction, only the confidence).
  calibrate_confidence: bool = setting(True,
      'Temperature-scale the exported probabilities on the validation '
      'set.')
  # The rejection threshold stored in every export is the lowest top
  # probability at which validation predictions are right this often.
  target_precision: float = setting(0.95,
      'Precision the stored rejection threshold aims for on the '
      'validation set; below it label_image says unknown.')
  # Fewer validation images than this and neither temperature nor
  # threshold is chosen: fitted to a handful of images they would mislead.
  calibration_min_images: int = setting(30,
      'Validation images needed to calibrate and choose the threshold.')
  # "Not one of my classes" (retrain/head/novelty.py): every export scores
  # the feature vector's distance to the classes; the threshold keeps this
  # fraction of held-out images of the classes (0: no novelty score). 0.95
  # flagged 4.8 % of flowers_sample's own test photos, 98.8 % of
  # sign_language_digits and 99.9 % of bccd (bench/trust.py).
  novelty_keep: float = setting(0.95,
      'Fraction of held-out images of the classes the novelty threshold'
      ' keeps; photos scoring above it are "not like any class" (0: no '
      'novelty score in the exports).')
  # Eigenvectors of the covariance kept exactly (the rest share one value):
  # 64 measured AUROC 0.990 against 0.987 at 32 and 0.992 at 128 (flowers
  # against sign_language_digits, bench/trust.py --novelty_components), at
  # 1 MB of export for the default ensemble's 3,840 dimensions.
  novelty_components: int = setting(64,
      'Covariance eigenvectors the novelty score keeps exactly (the '
      'rest share one value).')
  # A folder of photos of none of the classes (any layout): the run reports
  # how many the novelty score flags and the AUROC; never trained on.
  unknown_dir: str = setting('',
      'Optional folder of photos of none of the classes: the run '
      'reports how many are flagged unknown and the AUROC; they are '
      'never trained on.')


@dataclasses.dataclass(frozen=True)
class Scale:
  """Runs too large for memory (docs/scale.md)."""

  # Past this many training vectors (distorted copies included), training and
  # evaluation read the vectors from the cache in chunks instead of holding
  # them in one array (retrain/head/streaming.py). 100,000 vectors of 1,280
  # float32 are 0.5 GB, which the in-memory path (the faster one) turns into
  # about 2.3 GB of peak memory with its working copies (bench/scale.py);
  # streaming past it keeps a run under 2 GB at a million vectors.
  # 0 never streams.
  max_vectors_in_memory: int = setting(100_000,
      'Past this many training vectors, training and evaluation stream '
      'from the cache in chunks (about half of this many vectors in '
      'memory at once); 0 never streams.')
