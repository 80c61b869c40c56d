"""The settings of training: the head (`Head`), the distorted copies it
trains on (`Distort`) and fine-tuning the module with it (`FineTune`). See
retrain/config/__init__.py."""

from __future__ import annotations

import dataclasses
from typing import Tuple

from retrain.common import names
from retrain.common.settings import setting
from retrain.head import auto as head_auto

# The six distortion settings of Distort (distorted_copies is not one).
DISTORTIONS = ('flip_left_right', 'random_crop', 'random_scale',
               'random_brightness', 'random_rotation', 'random_shift')


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
  # auto: on a strongly imbalanced training set with every class weighed the
  # same, the L-BFGS head's class biases are tuned for balanced accuracy on
  # its held-out predictions (retrain/head/imbalance.py, docs/accuracy.md).
  imbalance_adjustment: str = setting('auto',
      'auto: when the training set is strongly imbalanced and every class '
      "weighs the same, shift the L-BFGS head's class biases by -tau * "
      'log(class share), tau chosen for balanced accuracy on its held-out '
      'predictions; none: keep the head as fitted.',
      choices=('auto', 'none'))
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
