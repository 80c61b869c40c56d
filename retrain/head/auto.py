"""Which head solver `--head_solver auto` means for a run (no TensorFlow).

`lbfgs` (retrain/head/solver.py) is the default. A user who passes any of
the flags that shape retrain.py's SGD training has a recipe in mind, so
`auto` then means `sgd`, today's training exactly, and one log line says
so. `--sampling` and `--class_weighting` are not among them: they shape
the L-BFGS objective the same way (retrain/report/head_solver.py,
`lbfgs_class_weights`), so they never change the solver. `__main__` knows
which flags were passed (absl's `FLAGS[name].present`); a program that
builds a Config itself gets the same rule from the fields that differ from
their defaults (`changed_training_fields`).
"""

from __future__ import annotations

from typing import Sequence

from absl import logging

from retrain.errors import DatasetError

SOLVERS = ('auto', 'lbfgs', 'sgd')
# What the lbfgs solver chose and why, in --report_dir (retrain/report/head_solver.py).
REPORT_FILE = 'head_solver.json'

# retrain.py's training flags, and this project's options of the SGD
# trainer (retrain/head/options.py): each means "train with SGD like this".
# (The class balance options work with both solvers.)
SGD_TRAINING_FLAGS = (
    'how_many_training_steps', 'learning_rate', 'train_batch_size',
    'eval_step_interval', 'validation_batch_size',
    'intermediate_store_frequency',
    'optimizer', 'dropout_rate', 'l2_regularizer', 'label_smoothing',
    'early_stopping_patience',
)


def changed_training_fields(config, defaults) -> list:
  """The SGD_TRAINING_FLAGS whose value in `config` is not the default."""
  return [name for name in SGD_TRAINING_FLAGS
          if config.get(name) != defaults.get(name)]


def resolve(head_solver: str, explicit: Sequence[str]) -> str:
  """'lbfgs' or 'sgd' for `--head_solver` given the training flags passed.

  Raises:
    DatasetError: head_solver is not one of SOLVERS.
  """
  if head_solver not in SOLVERS:
    raise DatasetError(f'head_solver={head_solver!r} is not one of '
                       f'{", ".join(SOLVERS)}: choose one of them.',
                       fields=('head_solver',))
  if head_solver != 'auto':
    return head_solver
  if explicit:
    logging.info('--head_solver auto: training with sgd (retrain.py\'s '
                 'training) because %s %s given; pass --head_solver lbfgs '
                 'for the converging solver.',
                 ', '.join(f'--{name}' for name in explicit),
                 'was' if len(explicit) == 1 else 'were')
    return 'sgd'
  return 'lbfgs'
