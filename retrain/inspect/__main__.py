"""Command line: `python -m retrain.inspect --image_dir DIR --output_dir OUT`
(or the `retrain-inspect` script).

The only module of retrain.inspect that reads flags. It accepts every flag
of `retrain` (the data flags choose the examples exactly as a training run
would: --image_dir, the CSV flags, --crop_to_boxes and its flags, the
percentages; --tfhub_module and --bottleneck_dir choose the vectors and the
cache a training run will reuse) plus the flags below, whose defaults come
from retrain.config.INSPECT_DEFAULTS.
"""

from __future__ import annotations

import dataclasses
import os
import sys

# The report's matrices are small (a few thousand x 256); OpenBLAS's worker
# threads only spin against the feature module for the cores: the out-of-
# fold heads of 3,670 photos took 13 s with them and 3 s without, on 2
# busy cores. Set before numpy is first imported.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app, flags, logging  # noqa: E402

from retrain import __main__ as retrain_cli  # noqa: E402
from retrain.config import INSPECT_DEFAULTS, InspectConfig  # noqa: E402

_I = INSPECT_DEFAULTS

# --output_dir is retrain's flag (its run folders); here, given, it is
# where report.html and report.json are written (default
# INSPECT_DEFAULTS.output_dir).
flags.DEFINE_float('near_duplicate_cosine', _I.near_duplicate_cosine,
                   'Cosine similarity of feature vectors above which two '
                   'images are near-duplicates.')
flags.DEFINE_integer('near_duplicate_block', _I.near_duplicate_block,
                     'Rows of the similarity matrix computed at once '
                     '(memory: this x images x 4 bytes).')
flags.DEFINE_integer('label_error_folds', _I.label_error_folds,
                     'Folds of the out-of-fold head that finds suspected '
                     'label errors.')
flags.DEFINE_float('label_error_given', _I.label_error_given,
                   'Suspect an image whose label gets less than this '
                   'probability...')
flags.DEFINE_float('label_error_other', _I.label_error_other,
                   '...while another class gets more than this.')
flags.DEFINE_float('outlier_mad', _I.outlier_mad,
                   'Outlier: distance to the nearest class centre this many '
                   'robust standard deviations above the median.')
flags.DEFINE_float('imbalance_warning', _I.imbalance_warning,
                   'Warn when the largest class has this many times the '
                   'examples of the smallest.')
flags.DEFINE_integer('contact_sheet_images', _I.contact_sheet_images,
                     'Thumbnails per class on the contact sheets.')

FLAGS = flags.FLAGS


def options_from_flags() -> InspectConfig:
  return InspectConfig(**{field.name: FLAGS[field.name].value
                          for field in dataclasses.fields(InspectConfig)
                          if field.name != 'output_dir'},
                       output_dir=(FLAGS.output_dir
                                   if FLAGS['output_dir'].present
                                   else _I.output_dir))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(FLAGS.logging_verbosity.lower().replace('warn',
                                                                'warning'))
  from retrain.errors import RetrainError
  from retrain.inspect import report
  try:
    result = report.inspect_dataset(retrain_cli.config_from_flags(),
                                    options_from_flags())
  except RetrainError as e:
    logging.error('%s', retrain_cli.flag_wording(e))
    return 1
  sys.stdout.write(f'{result.html_path}\n{result.json_path}\n')
  return 0


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
  cli.run(main, 'retrain-inspect', USAGE, [__name__, retrain_cli.__name__])


if __name__ == '__main__':
  run()
