"""The settings of a run's input: the images and their labels (`Data`),
crops to annotated boxes (`Crop`), the feature module (`Module`) and the
bottleneck cache (`Cache`). See retrain/config/__init__.py."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from retrain import image_header
from retrain.common import names
from retrain.common.settings import setting
from retrain.features import ensemble_presets, presets

# The environment variables the command line reads for two defaults (the
# module cache, and the per-user cache folder of the bottlenecks).
MODULE_CACHE_ENV = 'RETRAIN_MODULE_CACHE'
CACHE_HOME_ENV = 'XDG_CACHE_HOME'
_BOTTLENECK_DIR = os.path.join('~', '.cache', 'retrain', 'bottlenecks')


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
  # Several labels a photo, one sigmoid each (retrain/steps/multilabel.py,
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
  crop_margin: float = setting(names.CROP_MARGIN,
      "Percent of a box's width/height added as context on each side "
      '(clipped to the photo).')
  # Boxes narrower or lower than this many pixels say too little to learn.
  min_box_size: int = setting(names.MIN_BOX_SIZE,
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
