"""The one home of every default.

`Config` is an immutable description of a run. `__main__.py` builds one from
flags (each flag reads its default from `DEFAULTS`), tests start from
`DEFAULTS` and override a few fields with `dataclasses.replace`, and
`pipeline.run` takes it and returns a result. Nothing below `__main__` reads
flags.

The defaults of the flags retrain.py had are retrain.py's own, so a command
line written for retrain.py means the same thing here. Where we differ the
comment says why.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from retrain import image_header
from retrain.common import names
from retrain.features import ensemble_presets, presets


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a retraining run needs; see docs/flags.md for each field."""

  # --- Input -----------------------------------------------------------------
  image_dir: str = ''
  # Percentages of each class held out, chosen by a stable hash of the file's
  # path relative to image_dir (retrain.py's defaults).
  testing_percentage: float = 10.0
  validation_percentage: float = 10.0
  # How image_dir is laid out: 'auto' takes image_dir/{train, validation or
  # val, test}/<class>/ as a ready-made split when those are its only
  # folders, else one folder per class; 'class_folders' or 'split_folders'
  # force one. See retrain/layouts.py.
  image_layout: str = 'auto'
  # Labels from CSV files of `path, label` rows instead of folders (paths
  # relative to the CSV's folder). One CSV is split by the stable hash;
  # train/validation/test CSVs are used as given.
  image_labels_csv: str = ''
  train_csv: str = ''
  validation_csv: str = ''
  test_csv: str = ''
  # 'verbatim' keeps folder names (or CSV labels) as they are; 'retrain'
  # makes retrain.py's labels (lower case, each run of non-alphanumerics one
  # space) for code that expects them.
  label_style: str = 'verbatim'
  # Several labels a photo, one sigmoid each (retrain/steps/multilabel.py,
  # docs/multilabel.md): labels from a CSV ('a;b'), VOC objects or the same
  # photo in several class folders.
  multi_label: bool = False

  # --- Crops to annotated boxes (retrain/data/boxes.py, docs/boxes.md) ------
  # Every annotated box one example, cropped from its photo.
  crop_to_boxes: bool = False
  # Where the boxes are: auto | voc | voc_tree | stanford_dogs | csv.
  boxes: str = 'auto'
  boxes_csv: str = ''
  # The CSV's label column when it is not called label/class/name/...
  boxes_label_column: str = ''
  # Percent of the box's width and height added as context on each side.
  # BCCD test boxes (EfficientNet-Lite0, bench/boxes_crop.py, N=945):
  # margins 0 / 5 / 10 / 25% gave 99.5 / 99.4 / 99.3 / 98.6% accuracy, the
  # first three one or two boxes apart; 5% keeps a little context for boxes
  # drawn tight, and wide context clearly costs.
  crop_margin: float = 5.0
  # Boxes narrower or lower than this many pixels say too little to learn.
  min_box_size: int = 8
  # VOC's `difficult` objects are left out of VOC's own evaluation; ours too.
  boxes_include_difficult: bool = False
  # --- End of crops to annotated boxes ----------------------------------------

  # --- Feature module ----------------------------------------------------------
  # retrain.py defaulted to an Inception V3 URL, which fails on machines with
  # no network; the bundled EfficientNet-Lite0 works offline and is both more
  # accurate and about 4x cheaper per image.
  # The three bundled modules as one ensemble are the default: 94.0%
  # on held-out flowers (lite0 alone: 91.8%); `efficientnet_lite0`
  # (presets.DEFAULT_MODULE) is the fast configuration (docs/accuracy.md).
  tfhub_module: str = ensemble_presets.DEFAULT_ENSEMBLE
  # Only needed for modules whose input size is not fixed by the module.
  image_size: Optional[int] = None
  # Where bundled presets are converted to SavedModels ('~' is expanded).
  # The command line takes $RETRAIN_MODULE_CACHE, when set, instead of this
  # default (share one cache between users, or keep it off a small home).
  module_cache_dir: str = presets.DEFAULT_MODULE_CACHE

  # --- Bottlenecks ---------------------------------------------------------------
  # One per-user cache shared by every run (safe for runs at the same time;
  # '~' is expanded). The command line takes $XDG_CACHE_HOME/retrain/
  # bottlenecks instead when XDG_CACHE_HOME is set.
  bottleneck_dir: str = os.path.join('~', '.cache', 'retrain', 'bottlenecks')
  # Images decoded together and handed to the module in one call. TFLite
  # runs a call's images one at a time (tflite_runtime.INVOKE_BATCH); TF as
  # one batch. In the pipeline on 2 cores (EfficientNet-Lite0, TFLite),
  # calls of 8 and 16 images ran at about the same speed (medians 145 and
  # 149 images/s side by side), calls of 4 slower (136).
  bottleneck_batch_size: int = 8
  # 'tf', 'tflite' (XNNPACK) or 'auto' (TFLite when the module converts and
  # agrees with TensorFlow, else TF); see retrain/tflite_runtime.py. On TFLite
  # (one 1-thread interpreter per core) the pipeline ran 146-158 images/s,
  # on TF 100-123 (a 4000-image copy of the flower sample, 2 cores).
  bottleneck_runtime: str = 'auto'
  # 'float32', 'int8' (each module's full-integer int8 copy, calibrated on
  # fixed synthetic images) or 'auto' (int8 where it is measured faster on
  # this CPU and agrees with float on a probe of the photos, else float);
  # see retrain/features/int8.py and retrain/bottlenecks/precision.py.
  # float32 by default: the exports compute float features, so a head
  # trained on int8 vectors would be measured on other features than the
  # ones it serves (2 points apart on flowers_sample's test set).
  bottleneck_precision: str = 'float32'

  # --- Training (retrain.py's defaults) -------------------------------------
  how_many_training_steps: int = 4000
  learning_rate: float = 0.01
  train_batch_size: int = 100
  eval_step_interval: int = 10
  # -1 means the whole set.
  validation_batch_size: int = 100
  test_batch_size: int = -1
  random_seed: int = 0

  # --- Training options beyond retrain.py (retrain/train_options.py) --------
  # All off, so head_solver 'sgd' trains exactly as retrain.py did. Measured on
  # flowers_sample none of them beat the defaults clearly enough to become
  # one (docs/training.md, "Training options").
  optimizer: str = 'sgd'  # sgd | momentum | adam
  dropout_rate: float = 0.0  # of the bottleneck inputs, while training
  l2_regularizer: float = 0.0  # times sum(weights**2), added to the loss
  label_smoothing: float = 0.0
  # classes: each example picks a class uniformly, then one of its images
  # (retrain.py); images: each training image equally likely.
  sampling: str = 'classes'
  class_weighting: str = 'none'  # none | balanced (see train_options.py)
  # auto: on a strongly imbalanced training set with every class weighed the
  # same, the L-BFGS head's class biases are tuned for balanced accuracy on
  # its held-out predictions (retrain/head/imbalance.py); none: never.
  imbalance_adjustment: str = 'auto'  # auto | none
  # Evaluations without a better validation cross entropy before training
  # stops and the best weights are restored; 0 never stops early.
  early_stopping_patience: int = 0

  # --- Head solver (retrain/head/solver.py, docs/accuracy.md) ----
  # auto: the converging solver (lbfgs), unless a retrain.py training flag
  # was given (then sgd, retrain.py's training exactly; __main__ decides).
  head_solver: str = 'auto'  # auto | lbfgs | sgd
  # L2 strengths tried (vectors scaled to unit RMS, mean loss), chosen on
  # validation: a log grid over 2.5 decades. The choice is logged and
  # written to head_solver.json, so a choice at an edge shows.
  solver_l2_grid: tuple = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
  # Label smoothing tried with each L2 strength: (0.0,) for none. Not
  # measured yet; each value added doubles the grid's cost.
  solver_label_smoothing_grid: tuple = (0.0,)
  solver_max_iterations: int = 300
  solver_tolerance: float = 1e-6
  # k-fold selection when validation has fewer than this many images in
  # some class (its accuracy would move in steps of 10 points or more).
  solver_folds: int = 5
  solver_min_validation_per_class: int = 10
  # Refit the chosen setting on training + validation (more data): +0.2 to
  # +0.8 points on sign_language_digits (bench/accuracy.py, lbfgs vs
  # lbfgs-norefit).
  solver_refit: bool = True
  # Fit on the raw vectors, not standardised per dimension: raw was 0.4-1.2
  # points better in 9 of 12 configurations on flowers_sample and
  # sign_language_digits (bench/accuracy.py, lbfgs vs lbfgs-raw).
  solver_standardise: bool = False

  # --- Distortions (retrain.py flags; see retrain/distort.py) ---------------
  flip_left_right: bool = False
  random_crop: float = 0.0
  random_scale: float = 0.0
  random_brightness: float = 0.0
  # Degrees (angle drawn from [-r, r]) and % of width and height; not in
  # retrain.py.
  random_rotation: float = 0.0
  random_shift: float = 0.0
  # Distorted copies of each training image, computed once and cached (used
  # only when a distortion is set). Each copy costs about one plain
  # bottleneck; on flowers_sample (bench/augmentation.py) 2 copies gained as
  # much test accuracy as 4 or 8, so 2 it is.
  distorted_copies: int = 2

  # --- Outputs ---------------------------------------------------------------
  # Each run writes into a folder of its own, <output_dir>/<data set>/<run
  # id>/, and <output_dir>/<data set>/latest points to the last finished one
  # (retrain/common/runs.py). A path below that starts with {run}/ is inside
  # that folder; a path given instead is used as it is (retrain.py's fixed
  # /tmp paths made runs overwrite each other's outputs).
  output_dir: str = 'retrain_runs'
  summaries_dir: str = '{run}/summaries'
  output_labels: str = '{run}/labels.txt'
  # retrain.py wrote no SavedModel unless asked; the SavedModel is this
  # project's main artifact, so it is written by default.
  saved_model_dir: str = '{run}/saved_model'
  final_tensor_name: str = names.OUTPUT_TENSOR_NAME
  print_misclassified_test_images: bool = False
  # Machine-readable reports of a run (skipped files, per-class metrics,
  # confusion matrix, misclassified images).
  report_dir: str = '{run}/report'
  # Images shown in TensorBoard's embedding projector (a sample spread over
  # the data set; 0 for none). 1000 thumbnails take a few seconds to make.
  projector_max_images: int = 1000
  # retrain.py's frozen graph: only when asked for (it repeats the
  # SavedModel's weights, 49 MB for the default ensemble, and label_image
  # reads the SavedModel).
  output_graph: str = ''
  # No intermediate graphs unless a frequency is given (retrain.py's default).
  intermediate_output_graphs_dir: str = '{run}/intermediate_graphs/'
  intermediate_store_frequency: int = 0
  # retrain.py wrote /tmp/_retrain_checkpoint as a scratch file to rebuild
  # its graph for export, never as a product; here the head is in every
  # export, so a checkpoint is written only when asked for.
  checkpoint_path: str = ''
  # A TFLite model ("" for none): quantization none (float32), dynamic,
  # float16 or int8 (calibrated on this many training images).
  tflite_output_file: str = ''
  tflite_quantization: str = 'none'
  tflite_calibration_images: int = 100

  # --- Fine-tuning (retrain/finetune/, docs/fine_tuning.md) -----------------
  # Off by default: it costs minutes where the head costs seconds. After the
  # head is trained, the top of the module is trained with it: for bundled
  # EfficientNet-Lite modules the blocks from --fine_tune_from on, on cached
  # activations; for other modules the whole module, image by image.
  fine_tune: bool = False
  # The first block trained; negative values count from the end (an
  # ensemble's members take only those). -2 picks the last two blocks (14
  # and 15 of Lite0: 7x7 maps in). With the default ensemble's Lite0 tuned,
  # 5-fold sign_language_digits: frozen 96.6 %, -1 97.1 %, -2 97.8 %, -3
  # 98.0 %; flowers_sample: 91.0, 91.0, 91.8, 91.0 %; a step from -2 costs
  # ~1.8x one from -1, from Lite0's block 11 (14x14 in) ~3.5x
  # (docs/fine_tuning.md).
  fine_tune_from: int = -2
  # Epochs over the training images (with their distorted copies), after
  # the head-only training; early stopping usually ends sooner.
  fine_tune_epochs: int = 10
  # AdamW peak learning rate, reached after the warm-up and decayed to 0 by
  # a cosine; 1e-4 is the usual fine-tuning rate (10-100x below training
  # from scratch), 1e-3 overfit in a few epochs.
  fine_tune_learning_rate: float = 1e-4
  fine_tune_weight_decay: float = 1e-4  # decoupled (AdamW), kernels only
  fine_tune_dropout: float = 0.2  # of the pooled features, while training
  fine_tune_batch_size: int = 32
  fine_tune_warmup_epochs: float = 1.0
  # Epochs without a better validation accuracy before fine-tuning stops
  # and the best epoch's weights are kept; 0 never stops early (and the
  # last epoch's weights are kept unless clearly worse on validation). Off by
  # default: the first epochs at the peak rate usually dip below the head
  # alone and the gain comes as the cosine decays (sign_language_digits:
  # stopped after 3 epochs 96.7 % test, all 10 epochs 98.6 %), and from
  # block 15 all 10 epochs on 3,670 photos take ~2 minutes.
  fine_tune_patience: int = 0
  # Label smoothing of the fine-tuning loss (the target puts this much of
  # its mass evenly on all classes). A head that already fits its training
  # set has near-zero cross entropy, so the top gets almost no gradient;
  # smoothing keeps it learning and keeps the logits from growing.
  fine_tune_label_smoothing: float = 0.0
  # Which members of an ensemble --tfhub_module are fine-tuned: "" the
  # first (Lite0 in the default ensemble), "all", or handles separated by
  # commas. The others keep their features as they are and cost no
  # training time. 3,670 photos, warm: the default 1:19, "all" 4:39 (the
  # target is 3 min); sign_language_digits 5-fold: frozen 96.6 %, the
  # default 97.1 %, "all" 97.8 % (docs/fine_tuning.md).
  fine_tune_members: str = ''

  # --- Deployment: ONNX, quantization check, confidence ------------
  # An ONNX model ("" for none); needs the [onnx] extra (tf2onnx).
  onnx_output_file: str = ''
  # A quantized TFLite model that loses more than this many points of top-1
  # accuracy against the float model (on the test set) is refused. One
  # point is about the noise of a few hundred test images; int8 of the
  # bundled modules measured well under it on flowers_sample.
  max_quantization_loss: float = 1.0
  keep_lossy_quantization: bool = False
  # Temperature scaling of the exported probabilities on the validation set
  # (changes no prediction, only the confidence).
  calibrate_confidence: bool = True
  # The rejection threshold stored in every export is the lowest top
  # probability at which validation predictions are right this often.
  target_precision: float = 0.95
  # Fewer validation images than this and neither temperature nor
  # threshold is chosen: fitted to a handful of images they would mislead.
  calibration_min_images: int = 30
  # "Not one of my classes" (retrain/head/novelty.py): every export scores
  # the feature vector's distance to the classes; the threshold keeps this
  # fraction of held-out images of the classes (0: no novelty score). 0.95
  # flagged 4.8 % of flowers_sample's own test photos, 98.8 % of
  # sign_language_digits and 99.9 % of bccd (bench/trust.py).
  novelty_keep: float = 0.95
  # Eigenvectors of the covariance kept exactly (the rest share one value):
  # 64 measured AUROC 0.990 against 0.987 at 32 and 0.992 at 128 (flowers
  # against sign_language_digits, bench/trust.py --novelty_components), at
  # 1 MB of export for the default ensemble's 3,840 dimensions.
  novelty_components: int = 64
  # A folder of photos of none of the classes (any layout): the run reports
  # how many the novelty score flags and the AUROC; never trained on.
  unknown_dir: str = ''

  # --- Untrusted input (docs/robustness.md) ------------------------------------
  # Images whose decoded size would exceed this many pixels are skipped,
  # with the declared size (JPEGs count at the reduced scale they are
  # decoded at, so a 100 MP photo still works). 50 MP is more than any
  # phone or consumer camera takes and decodes to 150 MB of RGB; a few KB
  # can declare gigapixels.
  max_image_pixels: int = image_header.MAX_IMAGE_PIXELS
  # Links inside image_dir that lead out of it (to another folder or disk)
  # are skipped with a reason unless this allows them; links into /proc,
  # /sys and /dev are refused always.
  follow_outside_links: bool = False
  # A local SavedModel is code: one whose graph can read or write files or
  # call Python is refused unless this says it is trusted.
  trust_module: bool = False

  # --- Scale (docs/scale.md) -----------------------------------------------------
  # Past this many training vectors (distorted copies included), training and
  # evaluation read the vectors from the cache in chunks instead of holding
  # them in one array (retrain/head/streaming.py). 100,000 vectors of 1,280
  # float32 are 0.5 GB, which the in-memory path (the faster one) turns into
  # about 2.3 GB of peak memory with its working copies (bench/scale.py);
  # streaming past it keeps a run under 2 GB at a million vectors.
  # 0 never streams.
  max_vectors_in_memory: int = 100_000


DEFAULTS = Config()


def subset(record_type, config: Config):
  """The option record `record_type` (a dataclass whose fields are named
  as Config's) filled from `config`, so that library functions take only
  the settings they use, never the whole Config."""
  return record_type(**{f.name: getattr(config, f.name)
                        for f in dataclasses.fields(record_type)})


# --- retrain.inspect, the dataset health report (docs/inspect.md) -----------
@dataclasses.dataclass(frozen=True)
class InspectConfig:
  """What `python -m retrain.inspect` adds to a Config's data fields."""
  output_dir: str = '/tmp/retrain_inspect'
  # Cosine similarity of bottleneck vectors above which two images are
  # near-duplicates. EfficientNet-Lite0 on flowers_sample
  # (bench/near_duplicates.py): above 0.90 are 52% of 100 re-encoded copies
  # (70% of those cropped by 2%, 12% of those shrunk to 60%) and 2 of the
  # 500 distinct photos; 0.85 finds 78% of copies but 11 distinct photos,
  # 0.92 41% and none. A person looks at every pair, so 0.90.
  near_duplicate_cosine: float = 0.90
  # Rows of the similarity matrix computed at once: memory is
  # block x n x 4 bytes (100k images: 100 MB), never n x n.
  near_duplicate_block: int = 256
  # Folds of the out-of-fold head that looks for label errors.
  label_error_folds: int = 5
  # An image is a suspected label error when the out-of-fold head gives its
  # label less than this probability and another class more than
  # label_error_other.
  label_error_given: float = 0.2
  label_error_other: float = 0.6
  # Outliers: distance to the nearest class centre more than this many
  # robust standard deviations (MAD) above the median.
  outlier_mad: float = 5.0
  # A class this many times larger than the smallest one gets a warning.
  imbalance_warning: float = 3.0
  # Thumbnails per class on the contact sheets.
  contact_sheet_images: int = 40


INSPECT_DEFAULTS = InspectConfig()
# --- End of retrain.inspect -------------------------------------------------


# --- retrain.evaluate, a model judged on a labelled folder ------------------
# (docs/results-page.md)
@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """What `python -m retrain.evaluate` adds to a Config's data fields."""
  # The export: a SavedModel folder, or a .pb, .tflite or .onnx file.
  model: str = ''
  # Where report.html and report.json go (retrain's own --output_dir flag,
  # with this default when it is not given).
  output_dir: str = 'retrain_evaluation'
  # Which photos of the folder: all, or one set of the stable hash split
  # (train, validation, test) at --validation_percentage and
  # --testing_percentage, the set a run with those values held out.
  subset: str = 'all'
  # Heat maps (occlusion through the export) on the page's photo grid.
  heat_maps: bool = True


EVALUATE_DEFAULTS = EvaluateConfig()
# --- End of retrain.evaluate ------------------------------------------------
