"""Command line: `python -m retrain.evaluate --model PATH --image_dir DIR
--output_dir OUT`.

The only module of retrain.evaluate that reads flags. It accepts retrain's
data flags (--image_dir, the CSV flags, --image_layout, --label_style, the
percentages; the others are accepted and unused) plus the flags below,
whose defaults come from retrain.config.EVALUATE_DEFAULTS.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging

from retrain import __main__ as retrain_cli
from retrain.config import EVALUATE_DEFAULTS, EvaluateConfig

_E = EVALUATE_DEFAULTS

flags.DEFINE_string('model', _E.model, 'The export to judge: a SavedModel '
                    'folder, or a frozen graph (.pb), TFLite (.tflite) or '
                    'ONNX (.onnx) file.')
# --output_dir is retrain's flag (retrain_cli defines it): here it names
# where report.html and report.json are written, default _E.output_dir.
flags.DEFINE_enum('subset', _E.subset, ['all', 'train', 'validation', 'test'],
                  'Judge on all photos, or on one set of the stable hash '
                  'split at --validation_percentage / --testing_percentage '
                  '(the set a run with those values held out).')
flags.DEFINE_bool('heat_maps', _E.heat_maps, 'Draw occlusion heat maps '
                  'through the export for the photo grid of the page.')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(FLAGS.logging_verbosity.lower().replace('warn',
                                                                'warning'))
  from retrain import evaluate as evaluate_lib
  from retrain.errors import RetrainError
  options = EvaluateConfig(**{field.name: FLAGS[field.name].value
                              for field in dataclasses.fields(EvaluateConfig)
                              if field.name != 'output_dir'})
  if FLAGS['output_dir'].present:
    options = dataclasses.replace(options, output_dir=FLAGS.output_dir)
  try:
    result = evaluate_lib.evaluate(config=retrain_cli.config_from_flags(),
                                   options=options)
  except RetrainError as e:
    logging.error('%s', retrain_cli.flag_wording(e))
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
  from retrain.common import cli
  cli.run(main, 'retrain-evaluate', USAGE, [__name__, retrain_cli.__name__])


if __name__ == '__main__':
  run()
