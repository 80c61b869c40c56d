"""The command line's last exports run in fresh processes
(retrain.export_job): converted from the SavedModel on disk, the same
files, the run's closing lines, locks and `latest` pointer after them;
Ctrl-C there is still one line and 130."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from retrain import images
from tests.conftest import FAKE_SIZE, make_colour_dataset
from tools import label_image

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _onnx_available() -> bool:
  try:
    import onnxruntime  # noqa: F401
    import tf2onnx  # noqa: F401
  except ImportError:
    return False
  return True


def _command(tmp_path, module, per_class=20):
  images_dir = make_colour_dataset(tmp_path / 'images', per_class=per_class)
  out = tmp_path / 'given'
  command = [sys.executable, '-m', 'retrain', '--image_dir', str(images_dir),
             '--tfhub_module', module,
             '--bottleneck_dir', str(tmp_path / 'cache'),
             '--output_dir', str(tmp_path / 'runs'),
             '--projector_max_images', '0',
             '--output_graph', str(out / 'g.pb'),
             '--tflite_output_file', str(out / 'm.tflite')]
  if _onnx_available():
    command += ['--onnx_output_file', str(out / 'm.onnx')]
  (tmp_path / 'tmp').mkdir()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TMPDIR=str(tmp_path / 'tmp'),
             PYTHONPATH=os.pathsep.join([str(ROOT),
                                         os.environ.get('PYTHONPATH', '')]))
  return command, env, out


def _leftovers(tmp_path):
  """Plan files, temporary models and lock files left behind."""
  return (sorted((tmp_path / 'tmp').glob('retrain-exports-*')) +
          sorted(tmp_path.rglob('*.lock')))


@pytest.mark.slow
def test_the_cli_converts_from_the_saved_model_after_the_run(tmp_path,
                                                            fake_module):
  command, env, out = _command(tmp_path, fake_module)
  proc = subprocess.run(command, capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  log = proc.stderr
  # The SavedModel and the results page first, then each conversion, then
  # the closing lines listing every file.
  order = [log.index('Exported the classifier'), log.index('Results page:'),
           log.index('Wrote the frozen graph'),
           log.index('Wrote the TFLite model'), log.index('Done in')]
  assert order == sorted(order)
  assert 'TFLite model' in log[order[-1]:] and 'frozen graph' in log[
      order[-1]:]
  run_dir = (tmp_path / 'runs' / 'images' / 'latest').resolve()
  saved = run_dir / 'saved_model'
  meta = json.loads((saved / 'retrain_metadata.json').read_text())
  others = meta['other_exports']
  assert others['output_graph'] == str(out / 'g.pb')
  assert others['tflite'] == str(out / 'm.tflite')
  deployment = json.loads((run_dir / 'report' / 'deployment.json').read_text())
  assert deployment['exports'] == others
  assert not _leftovers(tmp_path)

  paths = sorted(str(p) for p in (tmp_path / 'images').rglob('*.jpg'))[::7]
  batch = np.stack([images.load_image(p, (FAKE_SIZE, FAKE_SIZE)).numpy()
                    for p in paths])
  reference = label_image.load_model(saved_model_dir=str(saved)).predict(batch)
  files = ['g.pb', 'm.tflite'] + (['m.onnx'] if _onnx_available() else [])
  for name in files:
    model = label_image.load_model(graph=str(out / name))
    assert model.labels == ['blue', 'green', 'red'], name
    np.testing.assert_allclose(model.predict(batch), reference, atol=1e-4,
                               err_msg=name)
  if _onnx_available():
    assert others['onnx'] == str(out / 'm.onnx')
    import onnxruntime
    session = onnxruntime.InferenceSession(str(out / 'm.onnx'),
                                           providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['images']
    import tensorflow as tf
    served = tf.saved_model.load(str(saved)).signatures['serving_default'](
        images=tf.constant(batch))
    # The same outputs (probabilities and the novelty score) by the same
    # names, in the order of the in-memory conversion.
    assert [o.name for o in session.get_outputs()] == sorted(served)
    got = dict(zip(sorted(served), session.run(sorted(served),
                                               {'images': batch})))
    np.testing.assert_allclose(got['probabilities'],
                               served['probabilities'].numpy(), atol=1e-4)
    # The fake module's features are so large that the novelty score's
    # float32 rounding differs between runtimes (TFLite too); on the
    # bundled modules ONNX and the SavedModel agree to 1e-6.
    if 'novelty' in got:
      assert got['novelty'].shape == (len(batch),)


@pytest.mark.slow
def test_ctrl_c_during_the_conversions_is_one_line_and_130(tmp_path,
                                                           fake_module):
  command, env, out = _command(tmp_path, fake_module)
  proc = subprocess.Popen(command, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env,
                          cwd=tmp_path)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if (out / 'g.pb').exists():
      break
    time.sleep(0.02)
  assert proc.poll() is None, 'the run finished before it could be stopped'
  time.sleep(1.0)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  assert 'Traceback' not in err
  last = err.strip().splitlines()[-1]
  assert re.fullmatch(r'interrupted; [\d,]+ vectors? cached; run the same '
                      r'command to resume', last), last
  # What was written stays; nothing of the job is left behind.
  assert (out / 'g.pb').exists()
  assert (tmp_path / 'runs' / 'images').is_dir()
  assert not _leftovers(tmp_path)
