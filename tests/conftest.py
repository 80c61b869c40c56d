"""Shared fixtures: tiny synthetic image folders and tiny fake feature modules.

Everything here is made on the fly, so the suite runs offline. Real photos
from ../shared are used only by tests that skip when it is absent.
"""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / 'shared'
FLOWERS = SHARED / 'datasets' / 'flowers_sample'

# Solid colours, one per class; the fake module's features separate them.
COLOURS = {
    'blue': (20, 40, 220),
    'green': (30, 200, 40),
    'red': (220, 30, 30),
}
FAKE_SIZE = 32


def write_image(path, rgb, size=(40, 40), noise=10, seed=0, fmt=None):
  """Writes a solid-colour image with a little noise; returns the path."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  pixels = np.clip(
      np.array(rgb, np.float32) + rng.normal(0, noise, size + (3,)), 0, 255)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels.astype(np.uint8)).save(path, format=fmt)
  return path


def make_colour_dataset(root, per_class=12, colours=COLOURS, ext='.jpg',
                        start=0):
  """root/<colour>/img_<k><ext> for each colour; returns root."""
  root = pathlib.Path(root)
  for c, (name, rgb) in enumerate(sorted(colours.items())):
    for k in range(start, start + per_class):
      write_image(root / name / f'img_{k}{ext}', rgb, seed=1000 * c + k)
  return root


def export_fake_module(path, size=FAKE_SIZE, scale=4.0):
  """A TF2 SavedModel feature-vector module that average-pools.

  float32 [batch, size, size, 3] in [0, 1] -> float32 [batch, 6]: the mean
  of each channel and of its complement, times `scale`. With size None the
  module accepts any input size (and so needs --image_size).
  """
  import tensorflow as tf

  class Pool(tf.Module):

    def __init__(self):
      super().__init__()
      self.scale = tf.Variable(scale, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3],
                                                tf.float32)])
    def __call__(self, images):
      pooled = tf.reduce_mean(images, axis=[1, 2])
      return tf.concat([pooled, 1.0 - pooled], axis=1) * self.scale

  module = Pool()
  tf.saved_model.save(module, str(path))
  return str(path)


def export_conv_module(path, size=FAKE_SIZE):
  """A TF2 SavedModel feature-vector module that ends as a CNN does: a
  1x1 convolution with ReLU, then the global average pooling.

  float32 [batch, size, size, 3] in [0, 1] -> float32 [batch, 6]: the
  convolution gives each pixel's channels and their complements (r, g, b,
  1 - r, 1 - g, 1 - b), so the vector is the fake pooling module's
  (export_fake_module, scale 1).
  """
  import numpy as np
  import tensorflow as tf

  kernel = np.concatenate([np.eye(3), -np.eye(3)], 1)[None, None]
  bias = np.array([0, 0, 0, 1, 1, 1], np.float32)

  class ConvPool(tf.Module):

    def __init__(self):
      super().__init__()
      self.kernel = tf.Variable(kernel.astype(np.float32), trainable=False)
      self.bias = tf.Variable(bias, trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3],
                                                tf.float32)])
    def __call__(self, images):
      conv = tf.nn.relu(tf.nn.conv2d(images, self.kernel, 1, 'SAME') +
                        self.bias)
      return tf.reduce_mean(conv, axis=[1, 2])

  tf.saved_model.save(ConvPool(), str(path))
  return str(path)


@pytest.fixture(scope='session')
def fake_module(tmp_path_factory):
  return export_fake_module(tmp_path_factory.mktemp('modules') / 'pool32')


@pytest.fixture(scope='session')
def fake_module_any_size(tmp_path_factory):
  return export_fake_module(tmp_path_factory.mktemp('modules') / 'pool_any',
                            size=None)


@pytest.fixture
def colour_dir(tmp_path):
  return make_colour_dataset(tmp_path / 'images')


def shrunk_config(image_dir, out, module, **overrides):
  """The default config, shrunk to run in seconds, every output under `out`."""

  from retrain.config import DEFAULTS
  out = pathlib.Path(out)
  fields = dict(
      image_dir=str(image_dir),
      tfhub_module=module,
      output_dir=str(out / 'runs'),
      bottleneck_dir=str(out / 'bottlenecks'),
      summaries_dir=str(out / 'logs'),
      output_labels=str(out / 'labels.txt'),
      saved_model_dir=str(out / 'saved_model'),
      report_dir=str(out / 'report'),
      output_graph=str(out / 'output_graph.pb'),
      how_many_training_steps=300,
      learning_rate=0.5,
      eval_step_interval=50,
  )
  fields.update(overrides)
  return DEFAULTS.replace(**fields)


# The settings that place a shrunk_config's run: its data, module and
# output folders.
RUN_PLACES = ('image_dir', 'tfhub_module', 'bottleneck_dir', 'summaries_dir',
              'output_labels', 'saved_model_dir')


def flags_of(config, *names):
  """The command-line arguments that give `config`'s values of the settings
  `names`: ['--image_dir', '/x', ...]."""
  return [arg for name in names
          for arg in (f'--{name}', str(config.get(name)))]


@pytest.fixture
def small_config(tmp_path, fake_module):
  """The default config, shrunk to run in seconds on the fake module."""
  return shrunk_config(tmp_path / 'images', tmp_path / 'out', fake_module)


def require_shared(path=FLOWERS):
  if not path.exists():
    pytest.skip(f'{path} is absent (the shared data sets live beside the '
                'checkout)')
  return path


def kill_after(script, count):
  """Runs `python -c script`, which prints 0, 1, 2, ... one per finished
  write, and SIGKILLs it once it has printed `count`; returns the last
  number printed (the writes known to be done)."""
  import subprocess
  import sys
  proc = subprocess.Popen([sys.executable, '-c', script],
                          stdout=subprocess.PIPE, text=True)
  done = -1
  for line in proc.stdout:
    done = int(line)
    if done >= count:
      break
  proc.kill()
  proc.wait()
  return done


def exporting_config(root, images, module, **overrides):
  """shrunk_config over a colour data set made in root/<images>, outputs
  under root/out, writing a frozen graph.pb and a model.tflite too."""
  out = pathlib.Path(root) / 'out'
  fields = dict(output_graph=str(out / 'graph.pb'),
                tflite_output_file=str(out / 'model.tflite'))
  fields.update(overrides)
  return shrunk_config(make_colour_dataset(pathlib.Path(root) / images), out,
                       module, **fields)


@pytest.fixture
def fine_tuning_kept(monkeypatch):
  """Runs keep a fine-tuned network that moved off its start (epoch > 0)
  as if it beat the frozen head by the margin: for tests of what a
  fine-tuned export holds, on validation sets too small to show a gain."""
  from retrain.finetune import run
  original = run.versus_frozen
  monkeypatch.setattr(run, 'versus_frozen',
                      lambda *args: dict(original(*args), keep=True))
