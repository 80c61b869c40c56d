"""The flags of every program, made from retrain/config/'s declarations.

`python -m retrain` takes one flag per Config setting (retrain.py's names
and meanings) plus --list_modules and --logging_verbosity; `retrain.inspect`,
`retrain.evaluate` and `retrain.beam` take all of those plus their own. Each
program's `__main__` calls its `define_*_flags` once and reads its settings
back with the `*_from_flags` functions here, so no program imports another
program's `__main__`. Also makes the generated part of docs/flags.md.

Imports no TensorFlow, so `--help` and flag errors answer at once.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

from absl import app, flags, logging

from retrain import config as config_lib
from retrain.beam.options import BeamOptions
from retrain.common import atomic, settings
from retrain.errors import RetrainError, disk_full

FLAGS = flags.FLAGS
MODULE_CACHE_ENV = config_lib.MODULE_CACHE_ENV
CACHE_HOME_ENV = config_lib.CACHE_HOME_ENV
# The absl module names the flags are registered under (what --help lists).
RUN_FLAGS = 'retrain.flags'
INSPECT_FLAGS = 'retrain.inspect.flags'
EVALUATE_FLAGS = 'retrain.evaluate.flags'
BEAM_FLAGS = 'retrain.beam.flags'

# What --help shows first: the flags most runs need.
FIRST_FLAGS = ('image_dir', 'output_dir', 'tfhub_module', 'list_modules',
               'testing_percentage', 'crop_to_boxes', 'fine_tune',
               'tflite_output_file', 'tflite_quantization', 'onnx_output_file',
               'output_graph', 'bottleneck_dir', 'logging_verbosity')


def define_run_flags() -> None:
  """retrain's flags: one per Config setting, plus the program's own."""
  for group in config_lib.GROUPS.values():
    settings.define_flags(group, RUN_FLAGS)
  if 'list_modules' not in FLAGS:
    flags.DEFINE_bool('list_modules', False,
                      'Print the module presets and exit.',
                      module_name=RUN_FLAGS)
    flags.DEFINE_enum('logging_verbosity', 'INFO',
                      ['DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'],
                      'How much to log; DEBUG also shows TensorFlow\'s and '
                      'other libraries\' own lines.', module_name=RUN_FLAGS)


def define_inspect_flags() -> None:
  define_run_flags()
  settings.define_flags(config_lib.InspectConfig, INSPECT_FLAGS)


def define_evaluate_flags() -> None:
  define_run_flags()
  settings.define_flags(config_lib.EvaluateConfig, EVALUATE_FLAGS)


def define_beam_flags() -> None:
  define_run_flags()
  settings.define_flags(BeamOptions, BEAM_FLAGS)


def config_from_flags(environ=os.environ) -> config_lib.Config:
  """A Config with every setting taken from its flag (module_cache_dir from
  $RETRAIN_MODULE_CACHE and bottleneck_dir from $XDG_CACHE_HOME when their
  flags are not given; '~' in bottleneck_dir expanded)."""
  groups = {name: settings.from_flags(group)
            for name, group in config_lib.GROUPS.items()}
  config = config_lib.Config(**groups)
  module_cache_dir = config.module.module_cache_dir
  if not FLAGS['module_cache_dir'].present and environ.get(MODULE_CACHE_ENV):
    module_cache_dir = environ[MODULE_CACHE_ENV]
  bottleneck_dir = config.cache.bottleneck_dir
  if not FLAGS['bottleneck_dir'].present and environ.get(CACHE_HOME_ENV):
    bottleneck_dir = os.path.join(environ[CACHE_HOME_ENV], 'retrain',
                                  'bottlenecks')
  return config.replace(module_cache_dir=module_cache_dir,
                        bottleneck_dir=os.path.expanduser(bottleneck_dir))


def _output_dir(default: str) -> str:
  """--output_dir when given, else the program's own default."""
  return FLAGS.output_dir if FLAGS['output_dir'].present else default


def inspect_config_from_flags() -> config_lib.InspectConfig:
  return settings.from_flags(config_lib.InspectConfig, output_dir=_output_dir(
      config_lib.INSPECT_DEFAULTS.output_dir))


def evaluate_config_from_flags() -> config_lib.EvaluateConfig:
  return settings.from_flags(config_lib.EvaluateConfig, output_dir=_output_dir(
      config_lib.EVALUATE_DEFAULTS.output_dir))


def beam_options_from_flags() -> BeamOptions:
  return settings.from_flags(BeamOptions)


def flag_wording(error) -> str:
  """A library error's text with each setting it names worded as its flag
  (`optimizer='x'` -> `--optimizer='x'`)."""
  return error.worded(lambda field: f'--{field}')


def failed(error: Exception) -> int:
  """Logs the one line of an error a user can act on and returns exit
  status 1; re-raises any other error (a bug: its traceback is wanted)."""
  message = failure_message(error)
  if message is None:
    raise error
  logging.error('%s', message)
  return 1


def failure_message(error: Exception) -> Optional[str]:
  """The one line a command prints for an error a user can act on (a
  RetrainError, worded with flags; a bottleneck cache that cannot be
  written; a full disk), or None for an error that is a bug."""
  import bottleneck_cache
  if isinstance(error, RetrainError):
    return flag_wording(error)
  if isinstance(error, bottleneck_cache.CacheError):
    return str(error)
  if isinstance(error, OSError):
    return disk_full(error) or None
  return None


def report_main(argv, make_report: Callable, options_from_flags: Callable
                ) -> int:
  """The absl main of a program that writes a report (retrain.evaluate,
  retrain.inspect): `make_report(config, options)`, both read from the
  flags, returns a result with html_path and json_path, which are printed;
  exit status 0, or 1 after logging a RetrainError worded as flags."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(verbosity())
  from retrain.errors import RetrainError
  try:
    result = make_report(config_from_flags(), options_from_flags())
  except RetrainError as e:
    logging.error('%s', flag_wording(e))
    return 1
  sys.stdout.write(f'{result.html_path}\n{result.json_path}\n')
  return 0


def verbosity(level: Optional[str] = None) -> str:
  """absl's name of --logging_verbosity (WARN is absl's `warning`)."""
  return (level or FLAGS.logging_verbosity).lower().replace('warn', 'warning')


# docs/flags.md: a title for each group's table, and the generated part's
# fences (the page's prose around them is written by hand).
_TITLES = {
    'data': 'Input and split',
    'crop': 'Crops to annotated boxes ([boxes.md](boxes.md))',
    'module': 'Module ([modules-and-cache.md](modules-and-cache.md))',
    'cache': 'Bottlenecks',
    'head': 'Training ([training.md](training.md), '
            '[accuracy.md](accuracy.md))',
    'distort': 'Distortions ([augmentation.md](augmentation.md))',
    'outputs': 'Outputs',
    'finetune': 'Fine-tuning ([fine_tuning.md](fine_tuning.md))',
    'deploy': 'Confidence and novelty ([deploy.md](deploy.md))',
    'scale': 'Scale ([scale.md](scale.md))',
}
BEGIN = ('<!-- Made from retrain/config/ by '
         'retrain.command_line.flags_tables(); do not edit. -->')
END = '<!-- End of the generated tables. -->'


def flags_tables() -> str:
  """The generated part of docs/flags.md: one table per group of settings
  of each program, from the declarations (fences included)."""
  parts = [BEGIN, '', '## retrain', '']
  for name, group in config_lib.GROUPS.items():
    parts += [f'**{_TITLES[name]}**', '', *settings.markdown_rows(group), '']
  for title, group in (
      ('retrain.inspect (also all of retrain\'s flags)',
       config_lib.InspectConfig),
      ('retrain.evaluate (also all of retrain\'s flags)',
       config_lib.EvaluateConfig),
      ('retrain.beam (also all of retrain\'s flags)', BeamOptions)):
    parts += [f'## {title}', '', *settings.markdown_rows(group), '']
  parts.append(END)
  return '\n'.join(parts) + '\n'


def with_flags_tables(page: str) -> str:
  """docs/flags.md's text `page` with its generated part made anew."""
  start, end = page.index(BEGIN), page.index(END) + len(END) + 1
  return page[:start] + flags_tables() + page[end:]


def write_flags_page(path: str) -> None:
  """Rewrites the generated part of docs/flags.md at `path`."""
  with open(path, encoding='utf-8') as f:
    page = f.read()
  atomic.write_text(path, with_flags_tables(page))
