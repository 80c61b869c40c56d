"""Command line: `python -m retrain.evaluate --model PATH --image_dir DIR
--output_dir OUT`.

The only module of retrain.evaluate that reads flags. It accepts retrain's
data flags (--image_dir, the CSV flags, --image_layout, --label_style, the
percentages; the others are accepted and unused) plus those of
retrain.config.EvaluateConfig (--output_dir, given, is where report.html
and report.json go).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from retrain import command_line

command_line.define_evaluate_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(command_line.verbosity())
  from retrain import evaluate as evaluate_lib  # pylint: disable=g-import-not-at-top
  from retrain.errors import RetrainError  # pylint: disable=g-import-not-at-top
  try:
    result = evaluate_lib.evaluate(
        config=command_line.config_from_flags(),
        options=command_line.evaluate_config_from_flags())
  except RetrainError as e:
    logging.error('%s', command_line.flag_wording(e))
    return 1
  sys.stdout.write(f'{result.html_path}\n{result.json_path}\n')
  return 0


USAGE = """retrain-evaluate: judge an export on a labelled folder.

Classifies every photo of the folder (any layout training takes) with the
export (SavedModel, frozen graph, TFLite or ONNX) and writes
OUTPUT_DIR/report.html (one self-contained page) and OUTPUT_DIR/report.json:
accuracy with its 95% interval, per-class metrics, the confusion matrix,
the worst mistakes with heat maps, classes the model does not know
(docs/results-page.md).

  python -m retrain.evaluate --model MODEL --image_dir DIR --output_dir OUT
"""


def run():
  """Entry point of `python -m retrain.evaluate`."""
  from retrain.common import cli  # pylint: disable=g-import-not-at-top
  cli.run(main, 'retrain-evaluate', USAGE, [command_line.EVALUATE_FLAGS,
                                              command_line.RUN_FLAGS])


if __name__ == '__main__':
  run()
