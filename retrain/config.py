"""The one home of every setting: its default, help, choices and bounds.

A run's settings come in groups named after the steps that use them
(`Data`, `Crop`, `Module`, `Cache`, `Head`, `Distort`, `FineTune`,
`Outputs`, `Deploy`, `Scale`); `Config` holds one of each and each step
receives its own group. Every field is declared once with
`retrain.common.settings.setting`; the command-line flags (retrain.py's
names: a field's name is its flag's), their checks and docs/flags.md are
made from these declarations (retrain/command_line.py).

`Config.replace(name=value, ...)` takes the flat names (`config.replace(
learning_rate=0.1, fine_tune=True)`), so tests and Python callers start
from `DEFAULTS` and override a few settings without knowing the groups.
Nothing here reads flags or the environment.

The defaults of the flags retrain.py had are retrain.py's own, so a command
line written for retrain.py means the same thing here. Where we differ the
comment says why.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple

from retrain import image_header
from retrain.common import names, settings
from retrain.common.settings import setting
from retrain.features import ensemble_presets, presets
from retrain.head import auto as head_auto

# The environment variables the command line reads for two defaults (the
# module cache, and the per-user cache folder of the bottlenecks).
MODULE_CACHE_ENV = 'RETRAIN_MODULE_CACHE'
CACHE_HOME_ENV = 'XDG_CACHE_HOME'
_BOTTLENECK_DIR = os.path.join('~', '.cache', 'retrain', 'bottlenecks')
# The six distortion settings of Distort (distorted_copies is not one).
DISTORTIONS = ('flip_left_right', 'random_crop', 'random_scale',
               'random_brightness', 'random_rotation', 'random_shift')


@dataclasses.dataclass(frozen=True)
class Data:
  """The images, their labels and the split (retrain/data/)."""

  image_dir: str = setting('',
      'Folder with one sub-folder of images per class.')
  # Percentages of each class held out, chosen by a stable hash of the file's
  # path relative to image_dir (retrain.py's defaults).
  testing_percentage: float = setting(10.0,
      'Percentage of each class used as the test set.')
  validation_percentage: float = setting(10.0,
      'Percentage of each class used as the validation set.')
  # How image_dir is laid out: 'auto' takes image_dir/{train, validation or
  # val, test}/<class>/ as a ready-made split when those are its only
  # folders, else one folder per class; 'class_folders' or 'split_folders'
  # force one. See retrain/data/sources.py.
  image_layout: str = setting('auto',
      'How --image_dir is laid out: auto detects train/, validation/ '
      '(or val/), test/ split folders of class folders; class_folders '
      'or split_folders force one.',
      choices=names.LAYOUTS)
  # Labels from CSV files of `path, label` rows instead of folders (paths
  # relative to the CSV's folder). One CSV is split by the stable hash;
  # train/validation/test CSVs are used as given.
  image_labels_csv: str = setting('',
      'CSV of "path, label" rows (paths relative to the CSV), split by '
      'the stable hash; replaces --image_dir.')
  train_csv: str = setting('',
      'CSV of "path, label" training rows; with --validation_csv and '
      '--test_csv the split is used as given (a missing one is taken '
      'from train by hash).')
  validation_csv: str = setting('',
      'CSV of "path, label" validation rows (needs --train_csv).')
  test_csv: str = setting('',
      'CSV of "path, label" test rows (needs --train_csv).')
  # 'verbatim' keeps folder names (or CSV labels) as they are; 'retrain'
  # makes retrain.py's labels (lower case, each run of non-alphanumerics one
  # space) for code that expects them.
  label_style: str = setting('verbatim',
      'verbatim keeps folder names / CSV labels; retrain makes '
      "retrain.py's labels (lower case, each run of other characters "
      'one space).',
      choices=names.LABEL_STYLES)
  # Several labels a photo, one sigmoid each (retrain/multilabel.py,
  # docs/multilabel.md): labels from a CSV ('a;b'), VOC objects or the same
  # photo in several class folders.
  multi_label: bool = setting(False,
      'Photos with several labels: one sigmoid per label, a threshold '
      'per label; labels from a CSV ("path, a;b"), the object names of '
      'VOC annotations, or the same photo in several class folders '
      '(docs/multilabel.md).')
  # Images whose decoded size would exceed this many pixels are skipped,
  # with the declared size (JPEGs count at the reduced scale they are
  # decoded at, so a 100 MP photo still works). 50 MP is more than any
  # phone or consumer camera takes and decodes to 150 MB of RGB; a few KB
  # can declare gigapixels.
  max_image_pixels: int = setting(image_header.MAX_IMAGE_PIXELS,
      'Images whose decoded size would exceed this many pixels are '
      'skipped (JPEGs count at the 1/2, 1/4 or 1/8 scale they are '
      'decoded at); raise it for genuine huge images.')
  # Links inside image_dir that lead out of it (to another folder or disk)
  # are skipped with a reason unless this allows them; links into /proc,
  # /sys and /dev are refused always.
  follow_outside_links: bool = setting(False,
      'Follow links in --image_dir that lead out of it (e.g. class '
      'folders linked from another disk); off, they are skipped with a '
      'reason.')


@dataclasses.dataclass(frozen=True)
class Crop:
  """Crops to annotated boxes (retrain/data/boxes.py, docs/boxes.md)."""

  # Every annotated box one example, cropped from its photo.
  crop_to_boxes: bool = setting(False,
      'Make every annotated box one example: its crop, labelled with '
      "the object's name.")
  # Where the boxes are: auto | voc | voc_tree | stanford_dogs | csv.
  boxes: str = setting('auto',
      'Where the boxes are: VOC XML beside each image, a VOC tree '
      '(JPEGImages/ + Annotations/), the Stanford Dogs layout, or '
      '--boxes_csv; auto detects.',
      choices=['auto', 'voc', 'voc_tree', 'stanford_dogs', 'csv'])
  boxes_csv: str = setting('',
      'CSV of boxes, one per row, columns by header name: '
      'path/filename, label/class, xmin, ymin, xmax, ymax.')
  # The CSV's label column when it is not called label/class/name/...
  boxes_label_column: str = setting('',
      'Header of the CSV column that holds the label.')
  # Percent of the box's width and height added as context on each side.
  # BCCD test boxes (EfficientNet-Lite0, bench/boxes_crop.py, N=945):
  # margins 0 / 5 / 10 / 25% gave 99.5 / 99.4 / 99.3 / 98.6% accuracy, the
  # first three one or two boxes apart; 5% keeps a little context for boxes
  # drawn tight, and wide context clearly costs.
  crop_margin: float = setting(5.0,
      "Percent of a box's width/height added as context on each side "
      '(clipped to the photo).')
  # Boxes narrower or lower than this many pixels say too little to learn.
  min_box_size: int = setting(8,
      'Boxes smaller than this many pixels on a side are skipped.')
  # VOC's `difficult` objects are left out of VOC's own evaluation; ours too.
  boxes_include_difficult: bool = setting(False,
      'Also use objects marked difficult.')


@dataclasses.dataclass(frozen=True)
class Module:
  """The feature module (retrain/features/)."""

  # retrain.py defaulted to an Inception V3 URL, which fails on machines with
  # no network; the bundled EfficientNet-Lite0 works offline and is both more
  # accurate and about 4x cheaper per image.
  # The three bundled modules as one ensemble are the default: 94.0%
  # on held-out flowers (lite0 alone: 91.8%); `efficientnet_lite0`
  # (presets.DEFAULT_MODULE) is the fast configuration (docs/accuracy.md).
  tfhub_module: str = setting(ensemble_presets.DEFAULT_ENSEMBLE,
      'Feature-vector module: a preset name (see --list_modules), a '
      'TF-Hub handle (URL, needs a network) or a local TF2 SavedModel '
      'folder.')
  # Only needed for modules whose input size is not fixed by the module.
  image_size: Optional[int] = setting(None,
      'Input height and width, for modules that accept any size.')
  # Where bundled presets are converted to SavedModels ('~' is expanded).
  # The command line takes $RETRAIN_MODULE_CACHE, when set, instead of this
  # default (share one cache between users, or keep it off a small home).
  module_cache_dir: str = setting(presets.DEFAULT_MODULE_CACHE,
      'Where bundled presets are converted to SavedModels (default: '
      f'${MODULE_CACHE_ENV} if set, else {presets.DEFAULT_MODULE_CACHE}).')
  # A local SavedModel is code: one whose graph can read or write files or
  # call Python is refused unless this says it is trusted.
  trust_module: bool = setting(False,
      'Load a local --tfhub_module even if its graph can read or write '
      'files or call Python (a SavedModel is code).')


@dataclasses.dataclass(frozen=True)
class Cache:
  """The bottleneck vectors and their cache (retrain/bottlenecks/)."""

  # One per-user cache shared by every run (safe for runs at the same time;
  # '~' is expanded). The command line takes $XDG_CACHE_HOME/retrain/
  # bottlenecks instead when XDG_CACHE_HOME is set.
  bottleneck_dir: str = setting(
      _BOTTLENECK_DIR,
      'Folder of the bottleneck cache, shared by all runs (default: '
      f'${CACHE_HOME_ENV}/retrain/bottlenecks if set, else '
      f'{_BOTTLENECK_DIR}).')
  # Images decoded together and handed to the module in one call. TFLite
  # runs a call's images one at a time (tflite_runtime.INVOKE_BATCH); TF as
  # one batch. In the pipeline on 2 cores (EfficientNet-Lite0, TFLite),
  # calls of 8 and 16 images ran at about the same speed (medians 145 and
  # 149 images/s side by side), calls of 4 slower (136).
  bottleneck_batch_size: int = setting(8,
      'Images per module call when computing bottlenecks.', at_least=1)
  # 'tf', 'tflite' (XNNPACK) or 'auto' (TFLite when the module converts and
  # agrees with TensorFlow, else TF); see retrain/features/tflite_runtime.py.
  # On TFLite (one 1-thread interpreter per core) the pipeline ran 146-158
  # images/s, on TF 100-123 (a 4000-image copy of the flower sample, 2
  # cores).
  bottleneck_runtime: str = setting('auto',
      'Runtime of the module for bottlenecks: TensorFlow, TFLite with '
      'XNNPACK, or auto (TFLite when the module converts).',
      choices=names.BOTTLENECK_RUNTIMES)
  # 'float32', 'int8' (each module's full-integer int8 copy, calibrated on
  # fixed synthetic images) or 'auto' (int8 where it is measured faster on
  # this CPU and agrees with float on a probe of the photos, else float);
  # see retrain/features/int8.py and retrain/bottlenecks/precision.py.
  # float32 by default: the exports compute float features, so a head
  # trained on int8 vectors would be measured on other features than the
  # ones it serves (2 points apart on flowers_sample's test set).
  bottleneck_precision: str = setting('float32',
      'Arithmetic of the modules for bottlenecks: float32, int8 (a '
      'full-integer copy of each module, its vectors cached apart), or '
      'auto (int8 where it is faster on this CPU and agrees with float '
      'on a probe of the photos).',
      choices=names.BOTTLENECK_PRECISIONS)


@dataclasses.dataclass(frozen=True)
class Head:
  """Training the head (retrain/head/): retrain.py's training flags, the
  options beyond them (all off, so head_solver 'sgd' trains exactly as
  retrain.py did; on flowers_sample none beat the defaults clearly enough
  to become one, docs/training.md) and the converging solver
  (retrain/head/solver.py, docs/accuracy.md)."""

  how_many_training_steps: int = setting(4000,
      'Training steps.', at_least=1)
  learning_rate: float = setting(0.01,
      'SGD learning rate.', above=0)
  train_batch_size: int = setting(100,
      'Images per training step.', at_least=1)
  eval_step_interval: int = setting(10,
      'Evaluate every this many steps.', at_least=1)
  # -1 means the whole set.
  validation_batch_size: int = setting(100,
      'Validation images per evaluation; -1 for all.')
  test_batch_size: int = setting(-1,
      'Test images in the final evaluation; -1 for all.')
  random_seed: int = setting(0,
      'Seed for initialisation and batch sampling.')
  # All off, so head_solver 'sgd' trains exactly as retrain.py did. Measured on
  # flowers_sample none of them beat the defaults clearly enough to become
  # one (docs/training.md, "Training options").
  # sgd | momentum | adam
  optimizer: str = setting('sgd',
      'Optimizer of the head: sgd (retrain.py), momentum (0.9) or adam;'
      ' all use --learning_rate.',
      choices=names.OPTIMIZERS)
  # of the bottleneck inputs, while training
  dropout_rate: float = setting(0.0,
      'Fraction of bottleneck values dropped while training; 0 for '
      'none.')
  # times sum(weights**2), added to the loss
  l2_regularizer: float = setting(0.0,
      'L2 penalty on the head weights; 0 for none.')
  label_smoothing: float = setting(0.0,
      'Label smoothing of the training targets, in [0, 1).')
  # classes: each example picks a class uniformly, then one of its images
  # (retrain.py); images: each training image equally likely.
  sampling: str = setting('classes',
      'How training batches are drawn: classes (a class uniformly, then'
      ' one of its images, as retrain.py) or images (every training '
      'image equally likely). With --head_solver lbfgs the same weights'
      ' in its objective: classes weighs every class the same.',
      choices=names.SAMPLINGS)
  # none | balanced (retrain/head/options.py)
  class_weighting: str = setting('none',
      'balanced: weight the loss so every class counts the same (only '
      'changes anything with --sampling images; works with both head '
      'solvers).',
      choices=names.CLASS_WEIGHTINGS)
  # Evaluations without a better validation cross entropy before training
  # stops and the best weights are restored; 0 never stops early.
  early_stopping_patience: int = setting(0,
      'Stop after this many evaluations without a better validation '
      'cross entropy and keep the best weights; 0 never stops early.')
  # auto: the converging solver (lbfgs), unless a retrain.py training flag
  # was given (then sgd, retrain.py's training exactly; __main__ decides).
  # auto | lbfgs | sgd
  head_solver: str = setting('auto',
      'How the head is trained: lbfgs (to convergence, L2 chosen on '
      "validation), sgd (retrain.py's training exactly) or auto (lbfgs,"
      ' unless a retrain.py training flag such as --learning_rate is '
      'given: then sgd).',
      choices=head_auto.SOLVERS)
  # L2 strengths tried (vectors scaled to unit RMS, mean loss), chosen on
  # validation: a log grid over 2.5 decades. The choice is logged and
  # written to head_solver.json, so a choice at an edge shows.
  solver_l2_grid: Tuple[float, ...] = setting(
      (1.0, 0.3, 0.1, 0.03, 0.01, 0.003),
      'L2 strengths the lbfgs solver chooses from on validation '
      '(comma-separated).')
  # Label smoothing tried with each L2 strength: (0.0,) for none. Not
  # measured yet; each value added doubles the grid's cost.
  solver_label_smoothing_grid: Tuple[float, ...] = setting((0.0,),
      'Label smoothing values the lbfgs solver chooses from.')
  solver_max_iterations: int = setting(300,
      'L-BFGS iterations per fit at most.')
  solver_tolerance: float = setting(1e-6,
      'A fit stops when an iteration lowers the objective by less than '
      'this fraction.')
  # k-fold selection when validation has fewer than this many images in
  # some class (its accuracy would move in steps of 10 points or more).
  solver_folds: int = setting(5,
      'k of the k-fold choice (used when validation is small).')
  solver_min_validation_per_class: int = setting(10,
      'Fewer validation images than this in a class: choose by k-fold '
      'on training + validation instead.')
  # Refit the chosen setting on training + validation (more data): +0.2 to
  # +0.8 points on sign_language_digits (bench/accuracy.py, lbfgs vs
  # lbfgs-norefit).
  solver_refit: bool = setting(True,
      'Refit the chosen setting on training + validation.')
  # Fit on the raw vectors, not standardised per dimension: raw was 0.4-1.2
  # points better in 9 of 12 configurations on flowers_sample and
  # sign_language_digits (bench/accuracy.py, lbfgs vs lbfgs-raw).
  solver_standardise: bool = setting(False,
      'Standardise each vector dimension before the lbfgs fit.')


@dataclasses.dataclass(frozen=True)
class Distort:
  """Distorted copies of the training images
  (retrain/bottlenecks/distort.py)."""

  flip_left_right: bool = setting(False,
      'Randomly mirror training images horizontally.')
  random_crop: float = setting(0.0,
      'Margin percentage to randomly crop training images.')
  random_scale: float = setting(0.0,
      'Percentage to randomly scale up training images.')
  random_brightness: float = setting(0.0,
      'Percentage to randomly change brightness.')
  # Degrees (angle drawn from [-r, r]) and % of width and height; not in
  # retrain.py.
  random_rotation: float = setting(0.0,
      'Degrees to randomly rotate training images by, either way.')
  random_shift: float = setting(0.0,
      'Percentage of width and height to randomly shift training images'
      ' by.')
  # Distorted copies of each training image, computed once and cached (used
  # only when a distortion is set). Each copy costs about one plain
  # bottleneck; on flowers_sample (bench/augmentation.py) 2 copies gained as
  # much test accuracy as 4 or 8, so 2 it is.
  distorted_copies: int = setting(2,
      'Distorted copies of each training image, computed once and '
      'cached, when any distortion flag is set.')

  def any(self) -> bool:
    """True if any distortion is switched on."""
    return any(bool(getattr(self, name)) for name in DISTORTIONS)

  def describe(self) -> dict:
    """The six distortions as a JSON-serialisable dict (part of the
    cache namespace of the distorted copies)."""
    return {name: (bool(v) if isinstance(v, bool) else float(v))
            for name in DISTORTIONS for v in [getattr(self, name)]}


@dataclasses.dataclass(frozen=True)
class Outputs:
  """What a run writes: its folder, the SavedModel, reports, the other export
  formats and the check of quantized TFLite models (retrain/export/)."""

  # Each run writes into a folder of its own, <output_dir>/<data set>/<run
  # id>/, and <output_dir>/<data set>/latest points to the last finished one
  # (retrain/common/runs.py). A path below that starts with {run}/ is inside
  # that folder; a path given instead is used as it is (retrain.py's fixed
  # /tmp paths made runs overwrite each other's outputs).
  output_dir: str = setting('retrain_runs',
      'Each run writes into a new folder <output_dir>/<image folder '
      'name>/<run id>/ ({run} in the paths below); "latest" beside it '
      'points to the last finished run.')
  summaries_dir: str = setting('{run}/summaries',
      'Where TensorBoard summaries are written.')
  output_labels: str = setting('{run}/labels.txt',
      'Where the labels file is written (one per line, class id order).')
  # retrain.py wrote no SavedModel unless asked; the SavedModel is this
  # project's main artifact, so it is written by default.
  saved_model_dir: str = setting('{run}/saved_model',
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
class FineTune:
  """Fine-tuning the top of the module (retrain/finetune/,
  docs/fine_tuning.md)."""

  # Off by default: it costs minutes where the head costs seconds. After the
  # head is trained, the top of the module is trained with it: for bundled
  # EfficientNet-Lite modules the blocks from --fine_tune_from on, on cached
  # activations; for other modules the whole module, image by image.
  fine_tune: bool = setting(False,
      'After the head, fine-tune the top of the module with it (see '
      'docs/fine_tuning.md).')
  # The first block trained; negative values count from the end (an
  # ensemble's members take only those). -2 picks the last two blocks (14
  # and 15 of Lite0: 7x7 maps in). With the default ensemble's Lite0 tuned,
  # 5-fold sign_language_digits: frozen 96.6 %, -1 97.1 %, -2 97.8 %, -3
  # 98.0 %; flowers_sample: 91.0, 91.0, 91.8, 91.0 %; a step from -2 costs
  # ~1.8x one from -1, from Lite0's block 11 (14x14 in) ~3.5x
  # (docs/fine_tuning.md).
  fine_tune_from: int = setting(-2,
      'First block fine-tuned (bundled EfficientNet-Lite modules); '
      'negative counts from the end: -1 the last block, -2 the last '
      'two.')
  # Epochs over the training images (with their distorted copies), after
  # the head-only training; early stopping usually ends sooner.
  fine_tune_epochs: int = setting(10,
      'Fine-tuning epochs (early stopping may end sooner).')
  # AdamW peak learning rate, reached after the warm-up and decayed to 0 by
  # a cosine; 1e-4 is the usual fine-tuning rate (10-100x below training
  # from scratch), 1e-3 overfit in a few epochs.
  fine_tune_learning_rate: float = setting(1e-4,
      'Peak AdamW learning rate of fine-tuning.')
  # decoupled (AdamW), kernels only
  fine_tune_weight_decay: float = setting(1e-4,
      'Decoupled weight decay of fine-tuning.')
  # of the pooled features, while training
  fine_tune_dropout: float = setting(0.2,
      'Dropout of the pooled features while fine-tuning.')
  fine_tune_batch_size: int = setting(32,
      'Images per fine-tuning step.')
  fine_tune_warmup_epochs: float = setting(1.0,
      'Epochs of linear learning-rate warm-up.')
  # Epochs without a better validation accuracy before fine-tuning stops
  # and the best epoch's weights are kept; 0 never stops early (and the
  # last epoch's weights are kept unless clearly worse on validation). Off by
  # default: the first epochs at the peak rate usually dip below the head
  # alone and the gain comes as the cosine decays (sign_language_digits:
  # stopped after 3 epochs 96.7 % test, all 10 epochs 98.6 %), and from
  # block 15 all 10 epochs on 3,670 photos take ~2 minutes.
  fine_tune_patience: int = setting(0,
      'Epochs without better validation accuracy before fine-tuning '
      'stops; 0 never stops early.')
  # Label smoothing of the fine-tuning loss (the target puts this much of
  # its mass evenly on all classes). A head that already fits its training
  # set has near-zero cross entropy, so the top gets almost no gradient;
  # smoothing keeps it learning and keeps the logits from growing.
  fine_tune_label_smoothing: float = setting(0.0,
      'Label smoothing of the fine-tuning loss, in [0, 1).')
  # Which members of an ensemble --tfhub_module are fine-tuned: "" the
  # first (Lite0 in the default ensemble), "all", or handles separated by
  # commas. The others keep their features as they are and cost no
  # training time. 3,670 photos, warm: the default 1:19, "all" 4:39 (the
  # target is 3 min); sign_language_digits 5-fold: frozen 96.6 %, the
  # default 97.1 %, "all" 97.8 % (docs/fine_tuning.md).
  fine_tune_members: str = setting('',
      'Members of an ensemble --tfhub_module to fine-tune: "" the '
      'first, "all", or handles separated by commas; the others keep '
      'their features.')


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


# The groups of a Config, by attribute name, in the order of docs/flags.md.
GROUPS = {'data': Data, 'crop': Crop, 'module': Module, 'cache': Cache,
          'head': Head, 'distort': Distort, 'outputs': Outputs,
          'finetune': FineTune, 'deploy': Deploy, 'scale': Scale}
# Each setting's group: {'learning_rate': 'head', ...}.
GROUP_OF = settings.flat_names(GROUPS)


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a retraining run needs, one group per step; see
  docs/flags.md for each setting."""
  data: Data = dataclasses.field(default_factory=Data)
  crop: Crop = dataclasses.field(default_factory=Crop)
  module: Module = dataclasses.field(default_factory=Module)
  cache: Cache = dataclasses.field(default_factory=Cache)
  head: Head = dataclasses.field(default_factory=Head)
  distort: Distort = dataclasses.field(default_factory=Distort)
  outputs: Outputs = dataclasses.field(default_factory=Outputs)
  finetune: FineTune = dataclasses.field(default_factory=FineTune)
  deploy: Deploy = dataclasses.field(default_factory=Deploy)
  scale: Scale = dataclasses.field(default_factory=Scale)

  def replace(self, **changes) -> 'Config':
    """A copy with `changes` applied: settings by their flat names
    (`learning_rate=0.1`), or whole groups by theirs (`head=Head(...)`;
    applied first).

    Raises:
      TypeError: a name is neither a setting nor a group.
    """
    unknown = sorted(set(changes) - set(GROUP_OF) - set(GROUPS))
    if unknown:
      raise TypeError(f'Config has no setting {", ".join(unknown)}.')
    groups = {name: changes[name] for name in GROUPS if name in changes}
    flat: Dict[str, dict] = {}
    for name, value in changes.items():
      if name in GROUP_OF:
        flat.setdefault(GROUP_OF[name], {})[name] = value
    for group, values in flat.items():
      groups[group] = dataclasses.replace(
          groups.get(group, getattr(self, group)), **values)
    return dataclasses.replace(self, **groups)

  def get(self, name: str, *default):
    """A setting by its flat name (`config.get('learning_rate')`); with a
    default, that for a name that is no setting."""
    if name not in GROUP_OF:
      if default:
        return default[0]
      raise AttributeError(f'Config has no setting {name!r}')
    return getattr(getattr(self, GROUP_OF[name]), name)

  def flat(self) -> Dict[str, object]:
    """{setting name: value} of every setting."""
    return {name: self.get(name) for name in GROUP_OF}

  def check(self) -> None:
    """Raises SettingError for a setting outside its choices or bounds."""
    for group in GROUPS:
      settings.check(getattr(self, group))

  @classmethod
  def from_flat(cls, **values) -> 'Config':
    """The defaults with `values` (flat setting names) replacing some."""
    return cls().replace(**values)


DEFAULTS = Config()


def subset(record_type, config: Config):
  """The option record `record_type` (a dataclass whose fields are named
  as Config's settings) filled from `config`."""
  return record_type(**{f.name: config.get(f.name)
                        for f in dataclasses.fields(record_type)})


@dataclasses.dataclass(frozen=True)
class InspectConfig:
  """What `python -m retrain.inspect` (docs/inspect.md) adds to a Config's
  data settings."""
  # Where report.html and report.json go: retrain's --output_dir, with this
  # default when it is not given.
  output_dir: str = '/tmp/retrain_inspect'
  # EfficientNet-Lite0 on flowers_sample (bench/near_duplicates.py): above
  # 0.90 are 52% of 100 re-encoded copies (70% of those cropped by 2%, 12%
  # of those shrunk to 60%) and 2 of the 500 distinct photos; 0.85 finds
  # 78% of copies but 11 distinct photos, 0.92 41% and none. A person looks
  # at every pair, so 0.90.
  near_duplicate_cosine: float = setting(0.90,
      'Cosine similarity of feature vectors above which two images are '
      'near-duplicates.')
  # Memory is block x n x 4 bytes (100k images: 100 MB), never n x n.
  near_duplicate_block: int = setting(256,
      'Rows of the similarity matrix computed at once (memory: this x '
      'images x 4 bytes).')
  label_error_folds: int = setting(5,
      'Folds of the out-of-fold head that finds suspected label errors.')
  label_error_given: float = setting(0.2,
      'Suspect an image whose label gets less than this probability...')
  label_error_other: float = setting(0.6,
      '...while another class gets more than this.')
  # Robust standard deviations: the median absolute deviation (MAD).
  outlier_mad: float = setting(5.0,
      'Outlier: distance to the nearest class centre this many robust '
      'standard deviations above the median.')
  imbalance_warning: float = setting(3.0,
      'Warn when the largest class has this many times the examples of '
      'the smallest.')
  contact_sheet_images: int = setting(40,
      'Thumbnails per class on the contact sheets.')


INSPECT_DEFAULTS = InspectConfig()


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """What `python -m retrain.evaluate` (docs/results-page.md) adds to a
  Config's data settings."""
  model: str = setting('',
      'The export to judge: a SavedModel folder, or a frozen graph (.pb), '
      'TFLite (.tflite) or ONNX (.onnx) file.')
  # Where report.html and report.json go: retrain's --output_dir, with this
  # default when it is not given.
  output_dir: str = 'retrain_evaluation'
  subset: str = setting('all',
      'Judge on all photos, or on one set of the stable hash split at '
      '--validation_percentage / --testing_percentage (the set a run with '
      'those values held out).',
      choices=('all', 'train', 'validation', 'test'))
  heat_maps: bool = setting(True,
      'Draw occlusion heat maps through the export for the photo grid of '
      'the page.')


EVALUATE_DEFAULTS = EvaluateConfig()
