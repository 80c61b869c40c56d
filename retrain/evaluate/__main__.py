"""Command line: `python -m retrain.evaluate --model PATH --image_dir DIR
--output_dir OUT`.

The only module of retrain.evaluate that reads flags. It accepts retrain's
data flags (--image_dir, the CSV flags, --image_layout, --label_style, the
percentages; the others are accepted and unused) plus those of
retrain.config.EvaluateConfig (--output_dir, given, is where report.html
and report.json go).
"""

from __future__ import annotations

from absl import flags

from retrain import command_line

command_line.define_evaluate_flags()
FLAGS = flags.FLAGS


def main(argv):
  from retrain.evaluate import judge as evaluate_lib

  def judge(config, options):
    return evaluate_lib.evaluate(config=config, options=options)

  return command_line.report_main(argv, judge,
                                  command_line.evaluate_config_from_flags)


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
  from retrain.common import cli
  cli.run(main, 'retrain-evaluate', USAGE, [command_line.EVALUATE_FLAGS,
                                              command_line.RUN_FLAGS])


if __name__ == '__main__':
  run()
