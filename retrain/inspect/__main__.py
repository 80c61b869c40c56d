"""Command line: `python -m retrain.inspect --image_dir DIR --output_dir OUT`
(or the `retrain-inspect` script).

The only module of retrain.inspect that reads flags. It accepts every flag
of `retrain` (the data flags choose the examples exactly as a training run
would: --image_dir, the CSV flags, --crop_to_boxes and its flags, the
percentages; --tfhub_module and --bottleneck_dir choose the vectors and the
cache a training run will reuse) plus those of retrain.config.InspectConfig
(--output_dir, given, is where report.html and report.json go).
"""

from __future__ import annotations

import os

# The report's matrices are small (a few thousand x 256); OpenBLAS's worker
# threads only spin against the feature module for the cores: the out-of-
# fold heads of 3,670 photos took 13 s with them and 3 s without, on 2
# busy cores. Set before numpy is first imported.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import flags  # noqa: E402

from retrain import command_line  # noqa: E402

command_line.define_inspect_flags()
FLAGS = flags.FLAGS


def main(argv):
  from retrain.inspect import report
  return command_line.report_main(argv, report.inspect_dataset,
                                  command_line.inspect_config_from_flags)


USAGE = """retrain-inspect: a dataset health report before training.

Lists the images as retrain would (same data flags), computes their feature
vectors into retrain's cache, and writes OUTPUT_DIR/report.html (one
self-contained page) and OUTPUT_DIR/report.json: class counts, image sizes,
unreadable files, exact and near-duplicates, suspected label errors,
outliers and a contact sheet per class (docs/inspect.md).

  python -m retrain.inspect --image_dir DIR --output_dir OUT
"""


def run():
  """Entry point of `python -m retrain.inspect` and `retrain-inspect`."""
  from retrain.common import cli
  cli.run(main, 'retrain-inspect', USAGE, [command_line.INSPECT_FLAGS,
                                             command_line.RUN_FLAGS])


if __name__ == '__main__':
  run()
