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
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a retraining run needs; see README.md for each field."""

  # --- Input -----------------------------------------------------------------
  image_dir: str = ''
  # Percentages of each class held out, chosen by a stable hash of the file's
  # path relative to image_dir (retrain.py's defaults).
  testing_percentage: float = 10.0
  validation_percentage: float = 10.0

  # --- Feature module ----------------------------------------------------------
  # retrain.py defaulted to an Inception V3 URL, which fails on machines with
  # no network; the bundled EfficientNet-Lite0 works offline and is both more
  # accurate and about 4x cheaper per image.
  tfhub_module: str = 'efficientnet_lite0'
  # Only needed for modules whose input size is not fixed by the module.
  image_size: Optional[int] = None
  # Where bundled presets are converted to SavedModels (None: the presets'
  # default, ~/.cache/retrain/modules or $RETRAIN_MODULE_CACHE).
  module_cache_dir: Optional[str] = None

  # --- Bottlenecks ---------------------------------------------------------------
  bottleneck_dir: str = '/tmp/bottleneck'
  # Batch 16 was the fastest per image on a 2-core CPU for EfficientNet-Lite;
  # 32 and 64 were slower.
  bottleneck_batch_size: int = 16

  # --- Training (retrain.py's defaults) -------------------------------------
  how_many_training_steps: int = 4000
  learning_rate: float = 0.01
  train_batch_size: int = 100
  eval_step_interval: int = 10
  # -1 means the whole set.
  validation_batch_size: int = 100
  test_batch_size: int = -1
  random_seed: int = 0

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
  summaries_dir: str = '/tmp/retrain_logs'
  output_labels: str = '/tmp/output_labels.txt'
  # retrain.py wrote no SavedModel unless asked; the SavedModel is this
  # project's main artifact, so it is written by default.
  saved_model_dir: str = '/tmp/retrain_saved_model'
  final_tensor_name: str = 'final_result'
  print_misclassified_test_images: bool = False
  # Machine-readable reports of a run (skipped files, per-class metrics,
  # confusion matrix, misclassified images).
  report_dir: str = '/tmp/retrain_report'
  # retrain.py always wrote these three; here they are off until asked for
  # (empty string or 0), because they are not implemented yet and a default
  # must never fail.
  output_graph: str = ''
  intermediate_output_graphs_dir: str = ''
  intermediate_store_frequency: int = 0
  checkpoint_path: str = ''


DEFAULTS = Config()
