"""`retrain.run(...)`: the pipeline called from Python or a notebook.

  import retrain
  result = retrain.run(image_dir='flower_photos', how_many_training_steps=500)
  result = retrain.run(retrain.DEFAULTS)                      # the Config form
  result = retrain.run(my_config, how_many_training_steps=50)  # both

Keyword options are the settings of `retrain.Config` (the command line's
flag names without `--`); each one left out keeps its default from
`retrain.DEFAULTS`. An unknown name is a TypeError naming the close matches.

absl logging prints nothing below WARNING outside `absl.app.run`, so a run
from Python would be silent; while `run` works, INFO lines go to stderr
unless INFO lines are shown already (the caller set the levels). The run ends with the same summary as the
command line (test accuracy, wall time, every output path).
"""

from __future__ import annotations

import contextlib
import difflib
import logging as std_logging
import os
import sys
from typing import Iterator, Optional

from absl import logging

from retrain.common import cli
from retrain.config import GROUP_OF, Config


def make_config(config: Optional[Config] = None, **options) -> Config:
  """`config` (default: DEFAULTS) with `options` replacing its fields.

  Raises:
    TypeError: `config` is not a Config, or an option is not a Config field
      (the message lists the closest field names).
  """
  if config is None:
    # retrain.run(config=my_config) means the same as retrain.run(my_config).
    config = options.pop('config', None) or Config()
  if not isinstance(config, Config):
    raise TypeError(f'retrain.run takes a retrain.Config or keyword options, '
                    f'not {type(config).__name__}: use '
                    "retrain.run(image_dir='photos', ...).")
  names = list(GROUP_OF)
  unknown = sorted(set(options) - set(names))
  if unknown:
    hints = []
    for name in unknown:
      close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
      hints.append(f'{name!r} (did you mean {" or ".join(close)}?)' if close
                   else repr(name))
    raise TypeError(
        f'Unknown retrain option{"s" if len(unknown) > 1 else ""}: '
        f'{", ".join(hints)}. The options are the fields of retrain.Config '
        '(see docs/flags.md).')
  return config.replace(**options) if options else config


def _info_is_shown() -> bool:
  """True when absl INFO lines already reach a handler: under absl.app.run
  (or --logging_verbosity), or when the caller lowered the levels."""
  return logging.get_absl_logger().getEffectiveLevel() <= std_logging.INFO


@contextlib.contextmanager
def info_to_stderr() -> Iterator[None]:
  """While active, absl INFO lines go to stderr, once each.

  Does nothing when INFO is shown already. Else sets absl's verbosity to
  INFO through absl's own API (TensorFlow saves and restores that value
  while it exports, so a plain logger level would be lost) and writes
  absl's lines with a handler of its own, not also to the root logger's
  handlers (absl installs a WARNING-level one with basicConfig on its first
  line, which would print every line twice).
  """
  if _info_is_shown():
    yield
    return
  absl_logger = logging.get_absl_logger()
  handler = std_logging.StreamHandler(sys.stderr)
  handler.setFormatter(std_logging.Formatter('%(levelname).1s %(asctime)s '
                                             '%(message)s', '%H:%M:%S'))
  handler.addFilter(cli.QuietTensorFlow())
  verbosity, propagate = logging.get_verbosity(), absl_logger.propagate
  absl_logger.addHandler(handler)
  absl_logger.propagate = False
  logging.set_verbosity(logging.INFO)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)
    absl_logger.propagate = propagate
    absl_logger.removeHandler(handler)


@contextlib.contextmanager
def tensorflow_warnings_only() -> Iterator[None]:
  """While active, TensorFlow's Python logger passes WARNING and above only.

  In an interactive session (a notebook) TensorFlow sets its logger to
  INFO with a handler of its own, and its lines also reach the root
  logger's: SavedModel's "Assets written to: ..." came out twice.
  """
  logger = std_logging.getLogger('tensorflow')
  level = logger.level
  logger.setLevel(std_logging.WARNING)
  try:
    yield
  finally:
    logger.setLevel(level)


def run(config: Optional[Config] = None, /, **options):
  """Runs retraining end to end; see the module docstring.

  Args:
    config: a `retrain.Config`, or None for `retrain.DEFAULTS`.
    **options: Config fields to replace, e.g. image_dir='photos'.

  Returns:
    The `retrain.pipeline.RunResult` (labels, counts, test_accuracy,
    saved_model_dir, timings, ...).

  Raises:
    TypeError: an unknown option (the message lists close matches).
    retrain.errors.RetrainError: a problem with the data or the options,
      with the fix in the message.
  """
  config = make_config(config, **options)
  # As on the command line: TensorFlow's C++ start-up notes (CUDA probing,
  # CPU features) say nothing useful here; errors still show. Only has an
  # effect if TensorFlow is not imported yet.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # Imported here: the pipeline loads TensorFlow.
  from retrain import pipeline, summary
  with info_to_stderr(), tensorflow_warnings_only():
    result = pipeline.run(config)
    summary.log_summary(result.config or config, result)
  return result
