"""What both commands (`retrain`, `label_image`) do alike on the command line.

* `--version` prints `<program> <version>` and exits 0.
* `--help` (also `-h`, `-?`, `--helpshort`, `--helpfull`) starts with what
  the tool does and one example, and exits 0 (absl's own help exits 1),
  also when piped into a reader that stops early (`| head`).
* The help text and the flag list are the same for `python -m retrain`,
  `python tools/label_image.py` and the installed console scripts (absl
  shows the docstring and key flags of the module named by sys.argv[0],
  which for a console script is a launcher that has neither).

Imports no TensorFlow, so `--help` and `--version` answer at once.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import signal
import sys
import textwrap
import threading
from typing import Callable, List, Optional, Sequence

from absl import app, flags
from absl import logging as absl_logging

from retrain.common import progress, quiet
from retrain.version import __version__

# The exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells use.
INTERRUPTED_STATUS = 130

HELP_ARGS = ('--help', '-help', '-?', '--helpshort', '-helpshort',
             '--helpfull', '-helpfull')


def define_version_flag() -> None:
  """Defines --version once per process."""
  if 'version' not in flags.FLAGS:
    flags.DEFINE_bool('version', False, 'Print the version and exit.')


def show_flags_in_help(module_names: Sequence[str]) -> None:
  """Lists the flags of `module_names` in the short --help of sys.argv[0]."""
  for name in module_names:
    for flag in flags.FLAGS.get_flags_for_module(name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def _flag_help(flag) -> List[str]:
  """A flag's lines in --help: `  --name: help` wrapped, then its default."""
  name = f'--[no]{flag.name}' if flag.boolean else f'--{flag.name}'
  text = re.sub(r';\s*repeat this option to specify a list of values', '',
                flag.help)
  lines = textwrap.wrap(f'{name}: {text}', 78, initial_indent='  ',
                        subsequent_indent='    ', break_on_hyphens=False)
  if 'default:' in text:
    pass  # The help names the default itself.
  elif flag.default not in (None, '', []) and not flag.boolean:
    lines.append(f'    (default: {flag.default_as_str})')
  elif flag.boolean and flag.default:
    lines.append('    (default: true)')
  return lines


def help_text(usage: str, modules: Sequence[str],
              first: Sequence[str]) -> str:
  """--help: `usage`, the flags named in `first` (those most runs need), in
  that order, then every other flag of `modules` alphabetically."""
  own = {flag.name: flag for module in [*modules, __name__]
         for flag in flags.FLAGS.get_flags_for_module(module)}
  lines = [usage.rstrip('\n'), '', 'Flags most runs need:']
  for name in first:
    lines += _flag_help(own[name])
  lines += ['', 'All other flags (--helpfull adds absl\'s own):']
  for name in sorted(set(own) - set(first)):
    lines += _flag_help(own[name])
  return '\n'.join(lines) + '\n'


def _short_help(argv: Sequence[str]) -> bool:
  """Asked for --help (not --helpfull, which absl answers)."""
  return _asked_for_help(argv) and not any(
      arg.lstrip('-') == 'helpfull' for arg in argv[1:])


def _asked_for_help(argv: Sequence[str]) -> bool:
  args = list(argv[1:])
  if '--' in args:  # Everything after a bare -- is an argument, not a flag.
    args = args[:args.index('--')]
  return any(arg in HELP_ARGS for arg in args)


def quiet_logging(verbosity: Optional[str]) -> None:
  """Sets absl's level from --logging_verbosity (None: keep absl's, from
  -v); unless that is DEBUG, quiets the process (retrain.common.quiet:
  native start-up lines and third-party lines out of sight) and, on a
  terminal, uses the short line format. Called before TensorFlow is
  imported."""
  if verbosity is not None:
    absl_logging.set_verbosity(verbosity.lower().replace('warn', 'warning'))
  if absl_logging.get_verbosity() >= absl_logging.DEBUG:
    return
  quiet.quiet_process()
  # TensorFlow's own INFO lines (SavedModel internals) are noise to a user.
  std_logging.getLogger('tensorflow').setLevel(std_logging.WARNING)
  handler = absl_logging.get_absl_handler()
  handler.addFilter(quiet.OwnLines())
  if sys.stderr.isatty():
    handler.setFormatter(quiet.ShortFormat())


# What `import tensorflow` imports eagerly and retrain never uses: Keras's
# optimizers (it pulls in most of Keras, about a third of TensorFlow's
# import time). Keras 3 registers nothing that loading a SavedModel needs.
_UNUSED_AT_IMPORT = ('keras.src.optimizers', 'tf_keras.src.optimizers')


def import_tensorflow() -> None:
  """Imports TensorFlow without _UNUSED_AT_IMPORT (TensorFlow skips an
  import that fails); a later `import keras` then loads Keras as usual. A
  no-op when TensorFlow is imported already."""
  if 'tensorflow' in sys.modules:
    return
  blocked = [name for name in _UNUSED_AT_IMPORT if name not in sys.modules]
  for name in blocked:
    sys.modules[name] = None  # `import name` raises ImportError
  try:
    import tensorflow  # noqa: F401
  finally:
    for name in blocked:
      if sys.modules.get(name, 0) is None:
        del sys.modules[name]


def resume_line(vectors: int) -> str:
  """What Ctrl-C prints after a run: the vectors it stored, how to go on."""
  return (f'interrupted; {vectors:,} vector{"" if vectors == 1 else "s"} '
          'cached; run the same command to resume')


def _remember_ctrl_c() -> None:
  """Ctrl-C raises KeyboardInterrupt as Python's own handler does, and is
  remembered (retrain.common.progress) in case that exception is
  swallowed."""

  def on_sigint(signum, frame):
    del signum, frame
    progress.note_interrupt()
    raise KeyboardInterrupt

  # Left alone when SIGINT is ignored (a job started in the background) or
  # handled by someone else.
  if (threading.current_thread() is threading.main_thread() and
      signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, on_sigint)


def _interrupted(line: str) -> None:
  """Ends the process after Ctrl-C with one line and status 130, without
  waiting for worker threads (what they finished is stored already)."""
  sys.stdout.flush()
  sys.stderr.write(f'\n{line}\n')
  sys.stderr.flush()
  quiet.release_log()
  os._exit(INTERRUPTED_STATUS)


def run(main: Callable[[list], int], program: str, usage: str,
        flag_modules: Sequence[str],
        on_interrupt: Optional[Callable[[], str]] = None,
        first_flags: Sequence[str] = ()) -> None:
  """Runs `main` under absl.app.run with --version and a friendly --help.

  Args:
    main: absl main, argv -> exit status.
    program: the command's name, first word of --version.
    usage: the help text: what the tool does, then one example. Shown by
      --help above the flags; no '%' characters (absl formats them).
    flag_modules: modules whose flags --help lists (the command's own).
    on_interrupt: the one line shown after Ctrl-C (default: 'interrupted').
    first_flags: the flags --help shows first, in this order.
  """
  define_version_flag()
  show_flags_in_help([*flag_modules, __name__])
  sys.modules['__main__'].__doc__ = usage
  argv = ['--help' if arg == '-h' else arg for arg in sys.argv]

  def main_or_version(args):
    if flags.FLAGS.version:
      sys.stdout.write(f'{program} {__version__}\n')
      return 0
    return main(args)

  _remember_ctrl_c()
  try:
    if _short_help(argv):
      sys.stdout.write(help_text(usage, flag_modules, first_flags))
      sys.stdout.flush()
      sys.exit(0)
    app.run(main_or_version, argv=argv)
  except KeyboardInterrupt:
    _interrupted(on_interrupt() if on_interrupt else 'interrupted')
  except SystemExit as e:
    if progress.interrupted():
      # Ctrl-C came where Python drops the KeyboardInterrupt (a destructor,
      # a callback, the last moments of the run): still one line and 130.
      _interrupted(on_interrupt() if on_interrupt else 'interrupted')
    quiet.release_log()
    # absl exits 1 after printing the help; asking for help is no error.
    if e.code == 1 and _asked_for_help(argv):
      sys.exit(0)
    raise
  except BrokenPipeError:
    # `retrain --help | head`: the reader stopped reading; no traceback.
    # stdout goes to /dev/null so that the final flush does not fail again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0 if _asked_for_help(argv) else 1)


class QuietTensorFlow(std_logging.Filter):
  """Drops TensorFlow's own lines below WARNING (SavedModel internals, which
  TensorFlow writes through absl, one of them thousands of characters long
  for an ensemble): noise to a user. --logging_verbosity DEBUG keeps them."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING or
            f'{os.sep}tensorflow{os.sep}' not in record.pathname)
