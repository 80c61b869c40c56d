"""Command line: `python -m retrain --image_dir DIR` (or the `retrain` script).

Reads the flags (made from retrain/config/'s declarations by
retrain/command_line.py) into one immutable Config and calls
retrain.pipeline.run. retrain.py's flags are all accepted with their
meanings.
"""

from __future__ import annotations

import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) says
# nothing useful to a user of a CPU tool; errors still show.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import (
  app,  # noqa: E402
  flags,  # noqa: E402
  )

from retrain import command_line  # noqa: E402
from retrain.command_line import (  # noqa: E402, F401  (tests read these here)
  CACHE_HOME_ENV,
  FIRST_FLAGS,
  MODULE_CACHE_ENV,
  config_from_flags,
  flag_wording,
)
from retrain.common import cli, phases  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.head import auto as head_auto  # noqa: E402 (no TensorFlow)

command_line.define_run_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # The run's timings count from the process's start (`launch`).
  phases.note_launch()
  # Before TensorFlow loads: its start-up lines and third-party chatter are
  # shown only with --logging_verbosity DEBUG.
  cli.quiet_logging(FLAGS.logging_verbosity)
  # Imported here so that --help and flag errors answer without loading
  # TensorFlow.
  from retrain.features import presets
  if FLAGS.list_modules:
    cache_dir = config_from_flags().module.module_cache_dir
    # Ensembles are listed after the single modules.
    from retrain.features import ensemble_presets
    sys.stdout.write(presets.format_module_list(cache_dir,
                                                DEFAULTS.module.tfhub_module)
                     + '\n\n' + ensemble_presets.format_ensemble_list(
                         DEFAULTS.module.tfhub_module) + '\n'
                     f'(Set {MODULE_CACHE_ENV} or --module_cache_dir to move '
                     'the module cache.)\n')
    return 0
  import bottleneck_cache
  cli.import_tensorflow()
  from retrain import pipeline, summary
  config = config_from_flags()
  try:
    # `auto` is sgd when a retrain.py training flag was passed.
    config = config.replace(head_solver=head_auto.resolve(
        config.head.head_solver, [name for name in head_auto.SGD_TRAINING_FLAGS
                                  if FLAGS[name].present]))
    # The last conversions run in fresh processes (retrain.export_job).
    result = pipeline.run(config, convert_later=True)
  except Exception as e:  # noqa: BLE001 command_line.failed re-raises bugs
    return command_line.failed(e)
  if result.pending_exports:
    from retrain import export_job
    export_job.hand_over(result.pending_exports, result.config or config,
                         result, FLAGS.logging_verbosity,
                         bottleneck_cache.vectors_written())
  summary.log_summary(result.config or config, result)
  return 0


USAGE = """retrain: train an image classifier on a folder of photos.

Give it a folder with one sub-folder of images per class; it computes (and
caches) image features with a pretrained module, trains a small classifier
on them, reports its test accuracy and exports a model that label_image
(and TensorFlow, TFLite) can run.

Example:
  python -m retrain --image_dir flower_photos

Each run writes into a new folder retrain_runs/flower_photos/<run id>/
(the SavedModel, labels, reports, TensorBoard logs); then
`label_image --image photo.jpg` classifies with the latest run's model.
Below: the flags most runs need, then every other flag. The docs/ folder
of the source (README.md first) explains each step with figures.
"""


def interrupted_line() -> str:
  """What Ctrl-C prints: the vectors this run stored, and how to go on."""
  import bottleneck_cache
  return cli.resume_line(bottleneck_cache.vectors_written())


def run():
  """Entry point of `python -m retrain` and of the `retrain` console script."""
  cli.run(main, 'retrain', USAGE, [command_line.RUN_FLAGS],
          on_interrupt=interrupted_line,
          first_flags=FIRST_FLAGS)


if __name__ == '__main__':
  run()
