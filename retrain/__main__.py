"""Command line: `python -m retrain --image_dir DIR` (or the `retrain` script).

The only module that reads flags. It turns them into one immutable Config
(every default comes from retrain.config.DEFAULTS) and calls
retrain.pipeline.run. retrain.py's flags are all accepted with their
meanings.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) says
# nothing useful to a user of a CPU tool; errors still show.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import (
  app,  # noqa: E402
  flags,  # noqa: E402
  logging,  # noqa: E402
)

from retrain.common import cli, names  # noqa: E402
from retrain.config import (  # noqa: E402
  DEFAULTS,
  Config,
)
from retrain.head import auto as head_auto  # noqa: E402 (no TensorFlow)

_D = DEFAULTS

flags.DEFINE_string('image_dir', _D.image_dir,
                    'Folder with one sub-folder of images per class.')
flags.DEFINE_float('testing_percentage', _D.testing_percentage,
                   'Percentage of each class used as the test set.')
flags.DEFINE_float('validation_percentage', _D.validation_percentage,
                   'Percentage of each class used as the validation set.')
flags.DEFINE_enum('image_layout', _D.image_layout, list(names.LAYOUTS),
                  'How --image_dir is laid out: auto detects '
                  'train/, validation/ (or val/), test/ split folders of '
                  'class folders; class_folders or split_folders force one.')
flags.DEFINE_string('image_labels_csv', _D.image_labels_csv,
                    'CSV of "path, label" rows (paths relative to the CSV), '
                    'split by the stable hash; replaces --image_dir.')
flags.DEFINE_string('train_csv', _D.train_csv,
                    'CSV of "path, label" training rows; with '
                    '--validation_csv and --test_csv the split is used as '
                    'given (a missing one is taken from train by hash).')
flags.DEFINE_string('validation_csv', _D.validation_csv,
                    'CSV of "path, label" validation rows (needs --train_csv).')
flags.DEFINE_string('test_csv', _D.test_csv,
                    'CSV of "path, label" test rows (needs --train_csv).')
flags.DEFINE_enum('label_style', _D.label_style, list(names.LABEL_STYLES),
                  'verbatim keeps folder names / CSV labels; retrain makes '
                  "retrain.py's labels (lower case, each run of other "
                  'characters one space).')
flags.DEFINE_bool('multi_label', _D.multi_label,
                  'Photos with several labels: one sigmoid per label, a '
                  'threshold per label; labels from a CSV ("path, a;b"), '
                  'the object names of VOC annotations, or the same photo '
                  'in several class folders (docs/multilabel.md).')
# --- Crops to annotated boxes (retrain/data/boxes.py, docs/boxes.md) -------
flags.DEFINE_bool('crop_to_boxes', _D.crop_to_boxes,
                  'Make every annotated box one example: its crop, labelled '
                  'with the object\'s name.')
flags.DEFINE_enum('boxes', _D.boxes,
                  ['auto', 'voc', 'voc_tree', 'stanford_dogs', 'csv'],
                  'Where the boxes are: VOC XML beside each image, a VOC '
                  'tree (JPEGImages/ + Annotations/), the Stanford Dogs '
                  'layout, or --boxes_csv; auto detects.')
flags.DEFINE_string('boxes_csv', _D.boxes_csv,
                    'CSV of boxes, one per row, columns by header name: '
                    'path/filename, label/class, xmin, ymin, xmax, ymax.')
flags.DEFINE_string('boxes_label_column', _D.boxes_label_column,
                    'Header of the CSV column that holds the label.')
flags.DEFINE_float('crop_margin', _D.crop_margin,
                   'Percent of a box\'s width/height added as context on '
                   'each side (clipped to the photo).')
flags.DEFINE_integer('min_box_size', _D.min_box_size,
                     'Boxes smaller than this many pixels on a side are '
                     'skipped.')
flags.DEFINE_bool('boxes_include_difficult', _D.boxes_include_difficult,
                  'Also use objects marked difficult.')
flags.DEFINE_string(
    'tfhub_module', _D.tfhub_module,
    'Feature-vector module: a preset name (see --list_modules), a TF-Hub '
    'handle (URL, needs a network) or a local TF2 SavedModel folder.')
flags.DEFINE_integer('image_size', _D.image_size,
                     'Input height and width, for modules that accept any '
                     'size.')
# Read here, the only module that reads the environment: the module cache
# when --module_cache_dir is not given.
MODULE_CACHE_ENV = 'RETRAIN_MODULE_CACHE'

flags.DEFINE_string('module_cache_dir', _D.module_cache_dir,
                    'Where bundled presets are converted to SavedModels '
                    f'(default: ${MODULE_CACHE_ENV} if set, else '
                    f'{_D.module_cache_dir}).')
flags.DEFINE_bool('list_modules', False,
                  'Print the module presets and exit.')
# The per-user cache folder when --bottleneck_dir is not given:
# $XDG_CACHE_HOME/retrain/bottlenecks if that is set.
CACHE_HOME_ENV = 'XDG_CACHE_HOME'
flags.DEFINE_string('bottleneck_dir', _D.bottleneck_dir,
                    'Folder of the bottleneck cache, shared by all runs '
                    f'(default: ${CACHE_HOME_ENV}/retrain/bottlenecks if set, '
                    f'else {_D.bottleneck_dir}).')
flags.DEFINE_integer('bottleneck_batch_size', _D.bottleneck_batch_size,
                     'Images per module call when computing bottlenecks.')
flags.DEFINE_enum('bottleneck_runtime', _D.bottleneck_runtime,
                  list(names.BOTTLENECK_RUNTIMES),
                  'Runtime of the module for bottlenecks: TensorFlow, TFLite '
                  'with XNNPACK, or auto (TFLite when the module converts).')
flags.DEFINE_enum('bottleneck_precision', _D.bottleneck_precision,
                  list(names.BOTTLENECK_PRECISIONS),
                  'Arithmetic of the modules for bottlenecks: float32, int8 '
                  '(a full-integer copy of each module, its vectors cached '
                  'apart), or auto (int8 where it is faster on this CPU and '
                  'agrees with float on a probe of the photos).')
flags.DEFINE_integer('how_many_training_steps', _D.how_many_training_steps,
                     'Training steps.')
flags.DEFINE_float('learning_rate', _D.learning_rate, 'SGD learning rate.')
flags.DEFINE_integer('train_batch_size', _D.train_batch_size,
                     'Images per training step.')
flags.DEFINE_integer('eval_step_interval', _D.eval_step_interval,
                     'Evaluate every this many steps.')
flags.DEFINE_integer('validation_batch_size', _D.validation_batch_size,
                     'Validation images per evaluation; -1 for all.')
flags.DEFINE_integer('test_batch_size', _D.test_batch_size,
                     'Test images in the final evaluation; -1 for all.')
flags.DEFINE_integer('random_seed', _D.random_seed,
                     'Seed for initialisation and batch sampling.')
flags.DEFINE_enum('optimizer', _D.optimizer, list(names.OPTIMIZERS),
                  'Optimizer of the head: sgd (retrain.py), momentum (0.9) '
                  'or adam; all use --learning_rate.')
flags.DEFINE_float('dropout_rate', _D.dropout_rate,
                   'Fraction of bottleneck values dropped while training; 0 '
                   'for none.')
flags.DEFINE_float('l2_regularizer', _D.l2_regularizer,
                   'L2 penalty on the head weights; 0 for none.')
flags.DEFINE_float('label_smoothing', _D.label_smoothing,
                   'Label smoothing of the training targets, in [0, 1).')
flags.DEFINE_enum('sampling', _D.sampling, list(names.SAMPLINGS),
                  'How training batches are drawn: classes (a class '
                  'uniformly, then one of its images, as retrain.py) or '
                  'images (every training image equally likely). With '
                  '--head_solver lbfgs the same weights in its objective: '
                  'classes weighs every class the same.')
flags.DEFINE_enum('class_weighting', _D.class_weighting,
                  list(names.CLASS_WEIGHTINGS),
                  'balanced: weight the loss so every class counts the same '
                  '(only changes anything with --sampling images; works with '
                  'both head solvers).')
flags.DEFINE_enum('imbalance_adjustment', _D.imbalance_adjustment,
                  ['auto', 'none'],
                  'auto: when the training set is strongly imbalanced and '
                  'every class weighs the same, shift the L-BFGS head\'s '
                  'class biases by -tau * log(class share), tau chosen for '
                  'balanced accuracy on its held-out predictions; none: '
                  'keep the head as fitted.')
flags.DEFINE_integer('early_stopping_patience', _D.early_stopping_patience,
                     'Stop after this many evaluations without a better '
                     'validation cross entropy and keep the best weights; 0 '
                     'never stops early.')
# --- head solver (retrain/head/solver.py, docs/accuracy.md) ---
flags.DEFINE_enum('head_solver', _D.head_solver, list(head_auto.SOLVERS),
                  'How the head is trained: lbfgs (to convergence, L2 '
                  'chosen on validation), sgd (retrain.py\'s training '
                  'exactly) or auto (lbfgs, unless a retrain.py training '
                  'flag such as --learning_rate is given: then sgd).')
flags.DEFINE_list('solver_l2_grid', [str(v) for v in _D.solver_l2_grid],
                  'L2 strengths the lbfgs solver chooses from on '
                  'validation (comma-separated).')
flags.DEFINE_list('solver_label_smoothing_grid',
                  [str(v) for v in _D.solver_label_smoothing_grid],
                  'Label smoothing values the lbfgs solver chooses from.')
flags.DEFINE_integer('solver_max_iterations', _D.solver_max_iterations,
                     'L-BFGS iterations per fit at most.')
flags.DEFINE_float('solver_tolerance', _D.solver_tolerance,
                   'A fit stops when an iteration lowers the objective by '
                   'less than this fraction.')
flags.DEFINE_integer('solver_folds', _D.solver_folds,
                     'k of the k-fold choice (used when validation is '
                     'small).')
flags.DEFINE_integer('solver_min_validation_per_class',
                     _D.solver_min_validation_per_class,
                     'Fewer validation images than this in a class: choose '
                     'by k-fold on training + validation instead.')
flags.DEFINE_bool('solver_refit', _D.solver_refit,
                  'Refit the chosen setting on training + validation.')
flags.DEFINE_bool('solver_standardise', _D.solver_standardise,
                  'Standardise each vector dimension before the lbfgs fit.')
flags.DEFINE_bool('flip_left_right', _D.flip_left_right,
                  'Randomly mirror training images horizontally.')
flags.DEFINE_float('random_crop', _D.random_crop,
                   'Margin percentage to randomly crop training images.')
flags.DEFINE_float('random_scale', _D.random_scale,
                   'Percentage to randomly scale up training images.')
flags.DEFINE_float('random_brightness', _D.random_brightness,
                   'Percentage to randomly change brightness.')
flags.DEFINE_float('random_rotation', _D.random_rotation,
                   'Degrees to randomly rotate training images by, either '
                   'way.')
flags.DEFINE_float('random_shift', _D.random_shift,
                   'Percentage of width and height to randomly shift '
                   'training images by.')
flags.DEFINE_integer('distorted_copies', _D.distorted_copies,
                     'Distorted copies of each training image, computed once '
                     'and cached, when any distortion flag is set.')
flags.DEFINE_string('output_dir', _D.output_dir,
                    'Each run writes into a new folder <output_dir>/<image '
                    'folder name>/<run id>/ ({run} in the paths below); '
                    '"latest" beside it points to the last finished run.')
flags.DEFINE_string('summaries_dir', _D.summaries_dir,
                    'Where TensorBoard summaries are written.')
flags.DEFINE_string('output_labels', _D.output_labels,
                    'Where the labels file is written (one per line, class '
                    'id order).')
flags.DEFINE_string('saved_model_dir', _D.saved_model_dir,
                    'Where the classifier SavedModel is exported ("" for '
                    'none).')
flags.DEFINE_string('final_tensor_name', _D.final_tensor_name,
                    'Name of the output (probabilities) tensor.')
flags.DEFINE_bool('print_misclassified_test_images',
                  _D.print_misclassified_test_images,
                  'List every misclassified test image.')
flags.DEFINE_string('report_dir', _D.report_dir,
                    'Where machine-readable reports of the run are written.')
flags.DEFINE_integer('projector_max_images', _D.projector_max_images,
                     'Images shown in TensorBoard\'s embedding projector; 0 '
                     'for none.')
flags.DEFINE_string('output_graph', _D.output_graph,
                    'Where a frozen GraphDef (input Placeholder, output '
                    '--final_tensor_name) is written ("" for none).')
flags.DEFINE_string('intermediate_output_graphs_dir',
                    _D.intermediate_output_graphs_dir,
                    'Where intermediate frozen graphs are written.')
flags.DEFINE_integer('intermediate_store_frequency',
                     _D.intermediate_store_frequency,
                     'Steps between intermediate frozen graphs; 0 for none.')
flags.DEFINE_string('checkpoint_path', _D.checkpoint_path,
                    'Where a checkpoint of the trained head is written ("" '
                    'for none).')
flags.DEFINE_string('tflite_output_file', _D.tflite_output_file,
                    'Where a TFLite model is written ("" for none).')
flags.DEFINE_enum('tflite_quantization', _D.tflite_quantization,
                  list(names.QUANTIZATIONS),
                  'Quantization of the TFLite model.')
flags.DEFINE_integer('tflite_calibration_images',
                     _D.tflite_calibration_images,
                     'Training images that calibrate int8 quantization.')
# --- Fine-tuning (retrain/finetune/) -----------------------------------------
flags.DEFINE_bool('fine_tune', _D.fine_tune,
                  'After the head, fine-tune the top of the module with it '
                  '(see docs/fine_tuning.md).')
flags.DEFINE_integer('fine_tune_from', _D.fine_tune_from,
                     'First block fine-tuned (bundled EfficientNet-Lite '
                     'modules); negative counts from the end: -1 the last '
                     'block, -2 the last two.')
flags.DEFINE_integer('fine_tune_epochs', _D.fine_tune_epochs,
                     'Fine-tuning epochs (early stopping may end sooner).')
flags.DEFINE_float('fine_tune_learning_rate', _D.fine_tune_learning_rate,
                   'Peak AdamW learning rate of fine-tuning.')
flags.DEFINE_float('fine_tune_weight_decay', _D.fine_tune_weight_decay,
                   'Decoupled weight decay of fine-tuning.')
flags.DEFINE_float('fine_tune_dropout', _D.fine_tune_dropout,
                   'Dropout of the pooled features while fine-tuning.')
flags.DEFINE_integer('fine_tune_batch_size', _D.fine_tune_batch_size,
                     'Images per fine-tuning step.')
flags.DEFINE_float('fine_tune_warmup_epochs', _D.fine_tune_warmup_epochs,
                   'Epochs of linear learning-rate warm-up.')
flags.DEFINE_integer('fine_tune_patience', _D.fine_tune_patience,
                     'Epochs without better validation accuracy before '
                     'fine-tuning stops; 0 never stops early.')
flags.DEFINE_float('fine_tune_label_smoothing', _D.fine_tune_label_smoothing,
                   'Label smoothing of the fine-tuning loss, in [0, 1).')
flags.DEFINE_string('fine_tune_members', _D.fine_tune_members,
                    'Members of an ensemble --tfhub_module to fine-tune: "" '
                    'the first, "all", or handles separated by commas; the '
                    'others keep their features.')


# --- Deployment: ONNX, quantization check, confidence ---
flags.DEFINE_string('onnx_output_file', _D.onnx_output_file,
                    'Where an ONNX model is written ("" for none; needs '
                    'pip install "retrain[onnx]").')
flags.DEFINE_float('max_quantization_loss', _D.max_quantization_loss,
                   'Points of top-1 test accuracy a quantized TFLite model '
                   'may lose against the float model before it is refused.')
flags.DEFINE_bool('keep_lossy_quantization', _D.keep_lossy_quantization,
                  'Keep a quantized TFLite model that loses more than '
                  '--max_quantization_loss (with a warning).')
flags.DEFINE_bool('calibrate_confidence', _D.calibrate_confidence,
                  'Temperature-scale the exported probabilities on the '
                  'validation set.')
flags.DEFINE_float('target_precision', _D.target_precision,
                   'Precision the stored rejection threshold aims for on '
                   'the validation set; below it label_image says unknown.')
flags.DEFINE_integer('calibration_min_images', _D.calibration_min_images,
                     'Validation images needed to calibrate and choose the '
                     'threshold.')
flags.DEFINE_float('novelty_keep', _D.novelty_keep,
                   'Fraction of held-out images of the classes the novelty '
                   'threshold keeps; photos scoring above it are "not like '
                   'any class" (0: no novelty score in the exports).')
flags.DEFINE_integer('novelty_components', _D.novelty_components,
                     'Covariance eigenvectors the novelty score keeps '
                     'exactly (the rest share one value).')
flags.DEFINE_string('unknown_dir', _D.unknown_dir,
                    'Optional folder of photos of none of the classes: the '
                    'run reports how many are flagged unknown and the AUROC; '
                    'they are never trained on.')
# --- Scale (docs/scale.md) ---
flags.DEFINE_integer('max_vectors_in_memory', _D.max_vectors_in_memory,
                     'Past this many training vectors, training and '
                     'evaluation stream from the cache in chunks (about half '
                     'of this many vectors in memory at once); 0 never '
                     'streams.')
flags.DEFINE_enum('logging_verbosity', 'INFO',
                  ['DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'],
                  'How much to log; DEBUG also shows TensorFlow\'s and other '
                  'libraries\' own lines.')

FLAGS = flags.FLAGS


# --- Untrusted input (docs/robustness.md) ------------------------------------
flags.DEFINE_integer('max_image_pixels', _D.max_image_pixels,
                     'Images whose decoded size would exceed this many '
                     'pixels are skipped (JPEGs count at the 1/2, 1/4 or 1/8 '
                     'scale they are decoded at); raise it for genuine huge '
                     'images.')
flags.DEFINE_bool('follow_outside_links', _D.follow_outside_links,
                  'Follow links in --image_dir that lead out of it (e.g. '
                  'class folders linked from another disk); off, they are '
                  'skipped with a reason.')
flags.DEFINE_bool('trust_module', _D.trust_module,
                  'Load a local --tfhub_module even if its graph can read or '
                  'write files or call Python (a SavedModel is code).')


def config_from_flags(environ=os.environ) -> Config:
  """A Config with every field taken from the flag of the same name (and
  module_cache_dir from $RETRAIN_MODULE_CACHE when the flag is not given)."""
  values = {field.name: FLAGS[field.name].value
            for field in dataclasses.fields(Config)}
  if not FLAGS['module_cache_dir'].present and environ.get(MODULE_CACHE_ENV):
    values['module_cache_dir'] = environ[MODULE_CACHE_ENV]
  if not FLAGS['bottleneck_dir'].present and environ.get(CACHE_HOME_ENV):
    values['bottleneck_dir'] = os.path.join(environ[CACHE_HOME_ENV], 'retrain',
                                            'bottlenecks')
  values['bottleneck_dir'] = os.path.expanduser(values['bottleneck_dir'])
  return Config(**values)


def flag_wording(error) -> str:
  """A library error's text with each setting it names worded as its flag
  (`optimizer='x'` -> `--optimizer='x'`)."""
  return error.worded(lambda field: f'--{field}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  # Before TensorFlow loads: its start-up lines and third-party chatter are
  # shown only with --logging_verbosity DEBUG.
  cli.quiet_logging(FLAGS.logging_verbosity)
  # Imported here so that --help and flag errors answer without loading
  # TensorFlow.
  from retrain.errors import RetrainError
  from retrain.features import presets
  if FLAGS.list_modules:
    cache_dir = config_from_flags().module_cache_dir
    # Ensembles are listed after the single modules.
    from retrain.features import ensemble_presets
    sys.stdout.write(presets.format_module_list(cache_dir,
                                                DEFAULTS.tfhub_module) +
                     '\n\n' + ensemble_presets.format_ensemble_list(
                         DEFAULTS.tfhub_module) + '\n'
                     f'(Set {MODULE_CACHE_ENV} or --module_cache_dir to move '
                     'the module cache.)\n')
    return 0
  import bottleneck_cache
  from retrain import pipeline, summary
  config = config_from_flags()
  try:
    # `auto` is sgd when a retrain.py training flag was passed.
    config = dataclasses.replace(config, head_solver=head_auto.resolve(
        config.head_solver, [name for name in head_auto.SGD_TRAINING_FLAGS
                             if FLAGS[name].present]))
    result = pipeline.run(config)
  except RetrainError as e:
    logging.error('%s', flag_wording(e))
    return 1
  # A cache that cannot be written, a full disk: a message.
  except bottleneck_cache.CacheError as e:
    logging.error('%s', e)
    return 1
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    logging.error('The disk is full: could not write %s (%s). Free some space '
                  'there or choose an output folder on another disk; '
                  'nothing half-written was left.', e.filename or 'an output',
                  e.strerror)
    return 1
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
The documentation (docs/ in the source repository, docs/flags.md for
every flag) says more.
"""

# What --help shows first: the flags most runs need.
FIRST_FLAGS = ('image_dir', 'output_dir', 'tfhub_module', 'list_modules',
               'testing_percentage', 'crop_to_boxes', 'fine_tune',
               'tflite_output_file', 'tflite_quantization', 'onnx_output_file',
               'output_graph', 'bottleneck_dir', 'logging_verbosity')


def interrupted_line() -> str:
  """What Ctrl-C prints: the vectors this run stored, and how to go on."""
  import bottleneck_cache
  n = bottleneck_cache.vectors_written()
  return (f'interrupted; {n:,} vector{"" if n == 1 else "s"} cached; run the '
          'same command to resume')


def run():
  """Entry point of `python -m retrain` and of the `retrain` console script."""
  cli.run(main, 'retrain', USAGE, [__name__], on_interrupt=interrupted_line,
          first_flags=FIRST_FLAGS)


if __name__ == '__main__':
  run()
