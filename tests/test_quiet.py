"""Quiet by default: the tool's own lines only; Ctrl-C is one line."""

from __future__ import annotations

import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from retrain.common import progress, quiet
from tests.conftest import make_colour_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent
# What TensorFlow prints while it starts, through no logger of ours.
START_UP = ('oneDNN', 'cuInit', 'cuda', 'absl::InitializeLog', 'XNNPACK delegate',
            'fully_quantize', 'UserWarning')


def _record(path, level=logging.INFO, name='absl'):
  return logging.LogRecord(name, level, str(path), 1, 'a %s', ('line',), None)


def test_only_own_lines_pass_below_error():
  keep = quiet.OwnLines()
  assert keep.filter(_record(ROOT / 'retrain' / 'pipeline.py'))
  assert keep.filter(_record(ROOT / 'tools' / 'label_image.py'))
  assert keep.filter(_record(ROOT / 'bottleneck_cache' / 'store.py'))
  elsewhere = pathlib.Path(os.sep, 'venv', 'site-packages', 'tf2onnx',
                           'tfonnx.py')
  assert not keep.filter(_record(elsewhere, name='tf2onnx'))
  assert not keep.filter(_record(elsewhere, logging.WARNING, 'py.warnings'))
  assert keep.filter(_record(elsewhere, logging.ERROR))


def test_short_format_names_only_warnings_and_errors():
  short = quiet.ShortFormat()
  info = _record(ROOT / 'retrain' / 'x.py')
  assert re.fullmatch(r'\d\d:\d\d:\d\d a line', short.format(info))
  warning = _record(ROOT / 'retrain' / 'x.py', logging.WARNING)
  warning.levelname = 'WARNING'
  assert re.fullmatch(r'\d\d:\d\d:\d\d WARNING: a line',
                      short.format(warning))


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
              PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
                  'PYTHONPATH', '')]))


def _args(tmp_path, images, module):
  return ['--image_dir', str(images), '--tfhub_module', module,
          '--bottleneck_dir', str(tmp_path / 'cache'),
          '--output_dir', str(tmp_path / 'runs'), '--projector_max_images',
          '0']


@pytest.mark.slow
def test_a_run_shows_no_tensorflow_start_up_line(tmp_path, fake_module):
  images = make_colour_dataset(tmp_path / 'images', per_class=20)
  proc = subprocess.run([sys.executable, '-m', 'retrain',
                         *_args(tmp_path, images, fake_module),
                         '--tflite_output_file', str(tmp_path / 'm.tflite')],
                        capture_output=True, text=True, env=_env(),
                        cwd=tmp_path, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.splitlines()
  assert 'Found 60 images in 3 classes' in lines[0]
  noise = [line for line in lines if any(word in line for word in START_UP)]
  assert not noise
  # With DEBUG, TensorFlow's own lines are there again.
  proc = subprocess.run([sys.executable, '-m', 'retrain',
                         *_args(tmp_path, images, fake_module),
                         '--logging_verbosity', 'DEBUG'],
                        capture_output=True, text=True, env=_env(),
                        cwd=tmp_path, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'oneDNN' in proc.stderr or 'cuda' in proc.stderr


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_status_130(tmp_path, fake_module):
  images = make_colour_dataset(tmp_path / 'images', per_class=150)
  proc = subprocess.Popen([sys.executable, '-m', 'retrain',
                           *_args(tmp_path, images, fake_module),
                           '--bottleneck_batch_size', '1'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=_env(), cwd=tmp_path)
  cache = tmp_path / 'cache'
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if len(list(cache.glob('*/shard-*.h5'))) >= 5:
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run finished before it could be stopped'
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  match = re.fullmatch(r'interrupted; ([\d,]+) vectors? cached; run the same '
                       r'command to resume', last)
  assert match, last
  assert int(match.group(1).replace(',', '')) >= 5
  # No run folder is left with nothing in it, and no lock.
  assert not list((tmp_path / 'runs').glob('*/*/'))


def test_a_swallowed_ctrl_c_still_ends_the_run_with_130():
  """Python raises KeyboardInterrupt in whatever code runs when SIGINT
  arrives; code that drops it (a destructor, a TensorFlow callback that turns
  it into an error status) must not turn Ctrl-C into a finished run."""
  script = (
      'import os, signal, sys\n'
      'from retrain.common import cli, progress\n'
      'def main(argv):\n'
      '  try:\n'
      '    os.kill(os.getpid(), signal.SIGINT)\n'
      '    for _ in range(10**6):\n'
      '      pass\n'
      '  except KeyboardInterrupt:\n'
      '    pass  # swallowed, as an ignored exception would be\n'
      '  p = progress.Progress("Things", 3, bar=False)\n'
      '  p.update(1)\n'
      '  print("went on after Ctrl-C")\n'
      '  return 0\n'
      'cli.run(main, "x", "Does x.", [], on_interrupt=lambda: "stopped")\n')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True,
                        text=True, env=_env(), timeout=120)
  assert proc.returncode == 130, proc.stderr
  assert 'went on after Ctrl-C' not in proc.stdout
  assert proc.stderr.strip().splitlines()[-1] == 'stopped'
  assert 'Traceback' not in proc.stderr


def test_progress_stops_at_its_next_item_after_ctrl_c(monkeypatch):
  monkeypatch.setattr(progress, '_INTERRUPT', threading.Event())
  p = progress.Progress('Things', 3, bar=False)
  p.update(1)
  progress.note_interrupt()
  with pytest.raises(KeyboardInterrupt):
    p.update(1)
  assert p.done == 1


@pytest.mark.slow
def test_the_native_log_moves_into_the_folder_it_is_kept_in(tmp_path):
  """What native code wrote to fd 2 before and after keep_log_in is in
  <folder>/native.log; the temporary file is gone, and stays gone."""
  script = (
      'import os, sys\n'
      'from retrain.common import quiet\n'
      'temp = quiet.quiet_process()\n'
      'os.write(2, b"native line before\\n")\n'
      'kept = quiet.keep_log_in(sys.argv[1])\n'
      'os.write(2, b"native line after\\n")\n'
      'quiet.release_log()\n'
      'print(temp, kept)\n')
  proc = subprocess.run([sys.executable, '-c', script, str(tmp_path)],
                        capture_output=True, text=True, env=_env(),
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  temp, kept = proc.stdout.split()
  assert kept == str(tmp_path / quiet.LOG_NAME)
  assert (tmp_path / quiet.LOG_NAME).read_text() == (
      'native line before\nnative line after\n')
  assert not os.path.exists(temp)
  assert 'native line' not in proc.stderr


@pytest.mark.slow
def test_a_run_keeps_the_native_log_in_its_run_folder(tmp_path, fake_module):
  images = make_colour_dataset(tmp_path / 'images', per_class=20)
  proc = subprocess.run([sys.executable, '-m', 'retrain',
                         *_args(tmp_path, images, fake_module)],
                        capture_output=True, text=True, env=_env(),
                        cwd=tmp_path, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / 'runs' / 'images' / 'latest' / quiet.LOG_NAME).is_file()
