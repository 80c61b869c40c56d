"""What a newcomer meets first: --version, --help, running from the clone's
parent folder, side-file names, the closing summary, TensorBoard's earlier
runs, file permissions, plurals, and `retrain.run` from Python."""

import configparser
import io
import json
import os
import pathlib
import stat
import subprocess
import sys
import textwrap
import types

import pytest

from tests.conftest import make_colour_dataset, shrunk_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(args, cwd=ROOT, pythonpath=ROOT, **kw):
  """Runs `python *args`, or the installed console script args[0] when it
  is a path, with this checkout first on sys.path."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('PYTHONPATH', None)
  if pythonpath is not None:
    env['PYTHONPATH'] = str(pythonpath)
  program = [] if os.path.isabs(args[0]) else [sys.executable]
  return subprocess.run([*program, *args], capture_output=True,
                        text=True, cwd=cwd, env=env, timeout=600, **kw)


def _console_script(name):
  path = pathlib.Path(sys.executable).parent / name
  return [str(path)] if path.exists() else None


# --- --version and --help ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('command, program', [
    (['-m', 'retrain'], 'retrain'),
    (['tools/label_image.py'], 'label_image'),
    (['-m', 'tools.label_image'], 'label_image'),
    (_console_script('retrain'), 'retrain'),
    (_console_script('label_image'), 'label_image'),
])
def test_version_and_help(command, program):
  from retrain.version import __version__
  if command is None:
    pytest.skip(f'the {program} command is not installed next to '
                f'{sys.executable} (the project is not pip-installed here)')
  version = _python([*command, '--version'])
  assert version.returncode == 0, version.stderr[-2000:]
  assert version.stdout == f'{program} {__version__}\n'
  for flag in ('--help', '-h'):
    shown = _python([*command, flag])
    assert shown.returncode == 0, shown.stderr[-2000:]
    lines = shown.stdout.splitlines()
    # What the tool does first, then one example, then the flags.
    assert lines[0].startswith(f'{program}: ')
    assert 'Example:' in lines
    example = lines[lines.index('Example:') + 1]
    assert example.strip().startswith(('python -m retrain --image_dir',
                                       'label_image --graph'))
    assert '--[no]version' in shown.stdout
  # Piped into a reader that stops at once: no traceback, still status 0.
  program = [] if os.path.isabs(command[0]) else [sys.executable]
  piped = subprocess.run(
      ' '.join([*program, *command, '--help', '| true']) +
      '; exit ${PIPESTATUS[0]}', shell=True, executable='/bin/bash',
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL='2'))
  assert piped.returncode == 0 and 'Traceback' not in piped.stderr, (
      piped.stderr[-2000:])
  # A real usage error still fails.
  assert _python([*command, '--no_such_flag']).returncode != 0


@pytest.mark.slow
@pytest.mark.parametrize('program', ['retrain', 'retrain.inspect',
                                     'retrain.evaluate', 'tools.label_image'])
def test_help_loads_no_tensorflow(program):
  """--help answers at once, with no TensorFlow start-up line."""
  code = textwrap.dedent(f'''
      import runpy, sys
      sys.argv = ['{program}', '--help']
      try:
        runpy.run_module('{program}', run_name='__main__', alter_sys=True)
      except SystemExit as e:
        assert e.code in (0, None), e.code
      print(sorted(m for m in sys.modules
                   if m.split('.')[0] == 'tensorflow'))
  ''')
  proc = _python(['-c', code])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.splitlines()[-1] == '[]', proc.stdout[-500:]


@pytest.mark.slow
def test_a_run_loads_neither_keras_nor_tensorflow_hub(fake_module):
  """What a run imports and a module folder's loading bring no Keras (over
  a second of start-up; retrain never uses it); Keras still imports when
  something asks for it."""
  code = textwrap.dedent(f'''
      import sys
      from retrain.common import cli
      cli.import_tensorflow()
      from retrain import pipeline
      from retrain.features import modules
      module = modules.load_module({fake_module!r})
      print(module.output_dim, sorted(m for m in sys.modules if m.split('.')[0]
                                      in ('keras', 'tf_keras', 'tensorflow_hub')))
      import keras.src.optimizers
      print('keras', 'keras.src.optimizers' in sys.modules)
  ''')
  proc = _python(['-c', code])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.splitlines()[-2:] == ['6 []', 'keras True'], proc.stdout


@pytest.mark.slow
def test_label_image_cli_helpers_load_no_other_retrain_module():
  """label_image (retrain.predict.__main__, run from tools/) may import
  retrain.common.cli (--help, --version) and .progress because they bring
  nothing else of retrain (no config, presets or TensorFlow)."""
  code = textwrap.dedent('''
      import sys
      from tools import label_image
      from retrain.common import cli, progress
      print(sorted(m for m in sys.modules if m.split('.')[0] in
                   ('retrain', 'tensorflow')))
  ''')
  proc = _python(['-c', code])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split('\n')[0] == str(sorted([
      'retrain', 'retrain.common', 'retrain.common.cli',
      'retrain.common.names', 'retrain.common.progress',
      'retrain.features', 'retrain.features.tflite_runner', 'retrain.common.quiet', 'retrain.errors',
      'retrain.predict', 'retrain.predict.__main__',
      'retrain.predict.classify', 'retrain.predict.common',
      'retrain.predict.frozen_graph', 'retrain.predict.load',
      'retrain.predict.onnx_file', 'retrain.predict.saved_model',
      'retrain.predict.tflite', 'retrain.version']))


# --- Running from the folder that holds the clone -------------------------------


def test_editable_install_puts_the_clone_on_sys_path():
  """package_dir '=.' makes setuptools' editable install a .pth file (the
  clone on sys.path), not a finder that runs after the working directory,
  where a folder named retrain would win as an empty namespace package."""
  setup = configparser.ConfigParser()
  setup.read(ROOT / 'setup.cfg')
  package_dir = setup['options']['package_dir'].split()
  assert package_dir == ['=.']
  assert setup['metadata']['version'] == 'attr: retrain.version.__version__'


@pytest.fixture
def clone_parent(tmp_path):
  """tmp/parent/retrain -> this checkout, as a user's clone named retrain."""
  parent = tmp_path / 'parent'
  parent.mkdir()
  (parent / 'retrain').symlink_to(ROOT, target_is_directory=True)
  return parent


@pytest.mark.slow
def test_import_from_the_clone_parent_gets_the_package(clone_parent):
  # As after `pip install -e .` (the clone on sys.path from a .pth file).
  code = 'import retrain; print(retrain.__file__, retrain.__version__)'
  proc = _python(['-c', code], cwd=clone_parent)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split()[0] == str(ROOT / 'retrain' / '__init__.py')


@pytest.mark.slow
def test_shadowing_namespace_package_does_not_break_the_cli(clone_parent):
  """The old editable install's finder ran after the working directory, so
  `retrain` was the clone folder as an empty namespace package and only its
  sub-modules came from the finder. Nothing may depend on the package's
  __init__ then: --version and the export's version must still work."""
  code = textwrap.dedent(f'''
      import importlib.abc, importlib.machinery, importlib.util, os, runpy, sys
      PACKAGE = {str(ROOT / 'retrain')!r}
      class Finder(importlib.abc.MetaPathFinder):  # setuptools' finder, cut
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] == 'bottleneck_cache':
            base = os.path.join(os.path.dirname(PACKAGE), *name.split('.'))
          elif name.startswith('retrain.'):
            base = os.path.join(PACKAGE, *name.split('.')[1:])
          else:
            return None
          if os.path.isdir(base):
            return importlib.util.spec_from_file_location(
                name, os.path.join(base, '__init__.py'),
                submodule_search_locations=[base])
          if os.path.isfile(base + '.py'):
            return importlib.util.spec_from_file_location(name, base + '.py')
          return None
      # The old install put no path entry for the clone on sys.path (the new
      # one does, and a regular package there would win over the namespace
      # portion): take it out, so the old situation is what is tested.
      sys.path[:] = [p for p in sys.path if not p or
                     os.path.realpath(p) != os.path.realpath({str(ROOT)!r})]
      # Right after PathFinder (which finds the clone folder first), before
      # any editable finder of another checkout in this environment.
      index = sys.meta_path.index(importlib.machinery.PathFinder)
      sys.meta_path.insert(index + 1, Finder())
      import retrain
      assert getattr(retrain, '__file__', None) is None, retrain  # shadowed
      from retrain.export import formats  # exports read the version
      from retrain.version import __version__
      print('export version', __version__)
      sys.argv = ['retrain', '--version']
      runpy.run_module('retrain', run_name='__main__', alter_sys=True)
  ''')
  proc = _python(['-c', code], cwd=clone_parent, pythonpath=None)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'export version 0.' in proc.stdout
  assert 'retrain 0.' in proc.stdout


@pytest.mark.slow
def test_cli_run_from_the_clone_parent(clone_parent, fake_module):
  images = make_colour_dataset(clone_parent / 'flowers', per_class=6)
  out = clone_parent / 'out'
  config = shrunk_config(images, out, fake_module, how_many_training_steps=50)
  args = ['-m', 'retrain', '--image_dir', 'flowers', '--tfhub_module',
          fake_module, '--output_graph', 'out/flowers.pb',
          '--saved_model_dir', 'out/saved_model', '--bottleneck_dir',
          config.cache.bottleneck_dir, '--summaries_dir', config.outputs.summaries_dir,
          '--report_dir', config.outputs.report_dir, '--output_labels',
          config.outputs.output_labels, '--how_many_training_steps', '50',
          '--projector_max_images', '0']
  proc = _python(args, cwd=clone_parent)
  assert proc.returncode == 0, proc.stderr[-3000:]
  meta = json.loads((out / 'saved_model' / 'retrain_metadata.json')
                    .read_text())
  assert meta['retrain_version'].startswith('0.')
  assert (out / 'flowers.pb.metadata.json').is_file()
  # The run ends with the summary, which names the outputs.
  tail = proc.stderr[proc.stderr.index('Done in '):]
  assert 'out/flowers.pb' in tail and 'out/saved_model' in tail


@pytest.mark.slow
def test_cli_timings_count_from_the_process_start(tmp_path, fake_module):
  """run_summary.json's timings_seconds of a command-line run start with
  `launch` (interpreter, imports, flags: before the first phase) and its
  total counts it, so the total is the run's wall time; a run from Python
  has no `launch`."""
  images = make_colour_dataset(tmp_path / 'flowers', per_class=6)
  config = shrunk_config(images, tmp_path / 'out', fake_module)
  args = ['-m', 'retrain', '--image_dir', str(images), '--tfhub_module',
          fake_module, '--bottleneck_dir', config.cache.bottleneck_dir,
          '--output_dir', str(tmp_path / 'runs'), '--projector_max_images',
          '0']
  proc = _python(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary, = (tmp_path / 'runs').glob('flowers/2*/report/run_summary.json')
  timings = json.loads(summary.read_text())['timings_seconds']
  assert list(timings)[0] == 'launch' and list(timings)[-1] == 'total'
  assert timings['launch'] > 0
  phases = sum(v for k, v in timings.items() if k != 'total')
  assert timings['total'] >= phases - 0.01
  from retrain import pipeline
  result = pipeline.run(config)
  assert 'launch' not in result.timings


# --- One full run with two model files of one stem -------------------------------


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory, fake_module):
  from retrain import pipeline
  root = tmp_path_factory.mktemp('first_hour')
  out = root / 'out'
  config = shrunk_config(
      make_colour_dataset(root / 'images', per_class=8), out, fake_module,
      output_graph=str(out / 'flowers.pb'),
      tflite_output_file=str(out / 'flowers.tflite'),
      how_many_training_steps=100, projector_max_images=6)
  first = pipeline.run(config)
  second = pipeline.run(config)
  return config, first, second


@pytest.mark.slow
def test_side_files_are_named_after_each_model_file(two_runs):
  from tools import label_image
  config, _, _ = two_runs
  out = pathlib.Path(config.outputs.output_graph).parent
  for model, fmt in (('flowers.pb', 'frozen_graph'),
                     ('flowers.tflite', 'tflite')):
    meta = json.loads((out / f'{model}.metadata.json').read_text())
    assert meta['format'] == fmt and meta['model_file'] == model
    assert (out / f'{model}.labels.txt').read_text() == 'blue\ngreen\nred\n'
    loaded = label_image.load_model(graph=str(out / model))
    assert loaded.labels == ['blue', 'green', 'red']
  # Nothing shared by the two models, and retrain.py's labels file as it was.
  assert not (out / 'flowers.labels.txt').exists()
  assert not (out / 'flowers.metadata.json').exists()
  # Earlier versions moved aside by the second run are each model's own.
  for model in ('flowers.pb', 'flowers.tflite'):
    for aside in out.glob(f'{model}.metadata.json.previous-*'):
      assert json.loads(aside.read_text())['model_file'] == model
  assert pathlib.Path(config.outputs.output_labels).read_text() == 'blue\ngreen\nred\n'


def test_label_image_reads_old_side_files_only_for_their_model(tmp_path):
  from tools import label_image
  graph = tmp_path / 'flowers.pb'
  graph.write_bytes(b'')
  (tmp_path / 'flowers.labels.txt').write_text('a\nb\n')
  (tmp_path / 'flowers.metadata.json').write_text(
      json.dumps({'model_file': 'flowers.tflite'}))
  # The old shared files describe the .tflite: not taken for the .pb.
  assert label_image._sidecars(str(graph)) == (None, None)
  (tmp_path / 'flowers.metadata.json').write_text(
      json.dumps({'model_file': 'flowers.pb'}))
  assert label_image._sidecars(str(graph)) == (
      {'model_file': 'flowers.pb'}, str(tmp_path / 'flowers.labels.txt'))


@pytest.mark.slow
def test_summary_names_accuracy_time_and_every_output(two_runs):
  from retrain import summary
  config, _, second = two_runs
  lines = summary.summary_lines(config, second)
  assert lines[0].startswith('Done in ')
  assert 'test accuracy 100.0% (N=' in lines[0]
  assert lines[1] == 'Outputs:'
  listed = [line.split()[-1] for line in lines[2:] if line.startswith('  ')
            and not line.startswith('  reports ')]
  out = pathlib.Path(config.outputs.output_graph).parent
  for path in (config.outputs.saved_model_dir, config.outputs.output_labels,
               out / 'flowers.pb', out / 'flowers.pb.labels.txt',
               out / 'flowers.pb.metadata.json', out / 'flowers.tflite',
               out / 'flowers.tflite.metadata.json',
               config.outputs.summaries_dir, config.cache.bottleneck_dir):
    assert str(path) in listed
  assert all(os.path.exists(path) for path in listed)
  # The reports: one line for their folder, naming every file.
  reports = [line for line in lines if line.startswith('  reports ')]
  assert len(reports) == 1
  written = sorted(p.name for p in pathlib.Path(config.outputs.report_dir).iterdir()
                   if p.is_file() and '.previous-' not in p.name)
  assert reports[0].split()[1] == config.outputs.report_dir + os.sep
  assert reports[0].endswith(f'({len(written)} files: {", ".join(written)})')
  assert lines[-1] == (f'See training curves with: tensorboard --logdir '
                       f'{config.outputs.summaries_dir}')


def test_summary_without_test_images(tmp_path):
  from retrain import summary
  from retrain.config import DEFAULTS
  config = DEFAULTS.replace(output_labels=str(tmp_path / 'labels.txt'),
      summaries_dir=str(tmp_path / 'none'), output_graph='',
      bottleneck_dir=str(tmp_path / 'none'), report_dir=str(tmp_path / 'none'))
  (tmp_path / 'labels.txt').write_text('a\n')
  result = types.SimpleNamespace(test_accuracy=float('nan'), test_count=0,
                                 timings={'total': 75.4}, saved_model_dir=None,
                                 explained=None)
  assert summary.summary_lines(config, result) == [
      'Done in 1 min 15 s: no test images, so no test accuracy.', 'Outputs:',
      f'  labels  {tmp_path / "labels.txt"}']


@pytest.mark.slow
def test_earlier_tensorboard_runs_are_moved_beside_not_inside(two_runs):
  config, _, _ = two_runs
  logs = pathlib.Path(config.outputs.summaries_dir)
  assert sorted(p.name for p in logs.iterdir()) == [
      'projector', 'test', 'train', 'validation']
  beside = list(logs.parent.glob('logs.previous-*'))
  assert len(beside) == 1
  assert sorted(p.name for p in beside[0].iterdir()) == [
      'projector', 'test', 'train', 'validation']


@pytest.mark.slow
def test_report_and_export_files_share_one_permission(two_runs):
  config, _, _ = two_runs
  umask = os.umask(0)
  os.umask(umask)
  out = pathlib.Path(config.outputs.output_graph).parent
  files = [p for p in pathlib.Path(config.outputs.report_dir).rglob('*')
           if p.is_file()] + [p for p in out.glob('flowers.*') if p.is_file()]
  files.append(pathlib.Path(config.outputs.output_labels))
  modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in files}
  assert len(files) > 8
  # One mode for all (it was 0600 for some reports and 0644 for the rest):
  # what open() gives, never more than the umask allows, readable by others
  # exactly when the umask lets every file be.
  assert len(set(modes.values())) == 1, modes
  mode = modes.popitem()[1]
  assert mode & 0o600 == 0o600 and mode & umask == 0
  assert mode & 0o044 == 0o044 & ~umask


# --- label_image messages --------------------------------------------------------


@pytest.mark.slow
def test_label_image_one_image_and_a_failing_path_said_once(two_runs,
                                                            tmp_path):
  config, _, _ = two_runs
  one = next(pathlib.Path(config.data.image_dir, 'red').iterdir())
  proc = _python(['tools/label_image.py', '--graph', config.outputs.output_graph,
                  '--image', str(one)])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'Classifying 1 image with' in proc.stderr
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'not an image at all')
  proc = _python(['tools/label_image.py', '--graph', config.outputs.output_graph,
                  '--image', str(one), '--image', str(broken)])
  assert proc.returncode == 1
  assert 'Classifying 2 images with' in proc.stderr
  said = proc.stdout + proc.stderr
  assert said.count('broken.jpg') == 1, said
  assert '1 of 2 images could not be classified' in proc.stderr


# --- Progress ---------------------------------------------------------------------


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar_on_a_terminal_and_lines_elsewhere(caplog):
  from absl import logging as absl_logging

  from retrain.common.progress import Progress
  caplog.set_level('INFO', logger='absl')
  terminal = _Terminal()
  progress = Progress('Bottlenecks', 10, stream=terminal)
  for _ in range(10):
    progress.update(1)
  # A line logged while the bar shows erases the bar first (ends in \r).
  absl_logging.info('a line')
  assert terminal.getvalue().endswith('\r')
  progress.finish()
  assert not absl_logging.get_absl_logger().filters
  drawn = terminal.getvalue()
  assert drawn.startswith('\rBottlenecks:') and '/10 [' in drawn
  assert 'images/s' in drawn
  assert caplog.messages[-1].startswith('Bottlenecks: 10/10 (100%)')

  caplog.clear()
  ticks = iter(range(100))
  piped = io.StringIO()
  progress = Progress('Training', 40, unit='steps', interval=2.0,
                      clock=lambda: float(next(ticks)), stream=piped)
  for step in (10, 20, 30, 40):
    progress.update_to(step)
  progress.finish()
  assert piped.getvalue() == ''
  # The clock ticks one second per reading: a line every 2 s at most, with
  # the rate and the time left.
  assert caplog.messages[0] == ('Training: 20/40 (50%), 6.7 steps/s, about '
                                '3 s left')
  assert caplog.messages[-1] == 'Training: 40/40 (100%), 5.0 steps/s, done in 8 s'


# --- The Python API ---------------------------------------------------------------


def test_unknown_option_names_close_matches():
  import retrain
  with pytest.raises(TypeError, match="'how_many_training_step' \\(did you "
                     'mean how_many_training_steps\\?\\)'):
    retrain.run(image_dir='x', how_many_training_step=5)
  with pytest.raises(TypeError, match="'zzz'"):
    retrain.run(retrain.DEFAULTS, zzz=1)
  with pytest.raises(TypeError, match='takes a retrain.Config'):
    retrain.run('photos')


def test_make_config_keeps_defaults_and_replaces_options():
  import retrain
  from retrain import api
  config = api.make_config(image_dir='photos', learning_rate=0.1)
  assert config.data.image_dir == 'photos' and config.head.learning_rate == 0.1
  assert config.cache.bottleneck_dir == retrain.DEFAULTS.cache.bottleneck_dir
  assert api.make_config(config) is config
  assert retrain.run is not api.run  # The lazy wrapper in retrain/__init__.
  assert api.make_config(config=config) is config
  assert api.make_config(config, image_dir='b').head.learning_rate == 0.1


@pytest.mark.slow
def test_python_api_is_cheap_to_import_and_logs_to_stderr(tmp_path,
                                                          fake_module):
  images = make_colour_dataset(tmp_path / 'images', per_class=6)
  config = shrunk_config(images, tmp_path / 'out', fake_module,
                         how_many_training_steps=50, projector_max_images=0)
  from retrain.config import DEFAULTS
  options = {k: v for k, v in config.flat().items()
             if v != DEFAULTS.get(k)}
  code = textwrap.dedent(f'''
      import sys
      import retrain
      assert 'tensorflow' not in sys.modules and 'numpy' not in sys.modules
      assert sorted(retrain.__all__) == ['Config', 'DEFAULTS', '__version__',
                                         'evaluate', 'load', 'run']
      result = retrain.run(**{options!r})
      print('accuracy', result.test_accuracy, result.saved_model_dir)
  ''')
  proc = _python(['-c', code], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith('accuracy 1.0 ')
  assert 'Found 18 images in 3 classes' in proc.stderr
  assert 'Final test accuracy' in proc.stderr
  assert 'Done in ' in proc.stderr and config.outputs.saved_model_dir in proc.stderr


def test_tensorflow_info_lines_are_dropped_but_not_its_warnings():
  import logging as std_logging

  from retrain.common import cli
  quiet = cli.QuietTensorFlow()

  def record(path, level):
    return std_logging.LogRecord('absl', level, path, 1, 'm', None, None)

  tf_file = os.path.join(os.sep, 'venv', 'tensorflow', 'python', 'x.py')
  assert not quiet.filter(record(tf_file, std_logging.INFO))
  assert quiet.filter(record(tf_file, std_logging.WARNING))
  assert quiet.filter(record(str(ROOT / 'retrain' / 'pipeline.py'),
                             std_logging.INFO))
