"""A full disk under the bottleneck cache: exit 1 with a message, no crash,
and the next run with space reuses every vector written before."""

import os
import pathlib
import subprocess
import sys

import pytest

import bottleneck_cache
from bottleneck_cache import store as store_lib
from retrain import pipeline
from retrain.errors import OutputError
from tests.conftest import make_colour_dataset, shrunk_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIM = 20000  # 80 KB per vector: a few dozen images fill a 3 MB disk


def _wide_module(path):
  import tensorflow as tf

  class Wide(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3],
                                                tf.float32)])
    def __call__(self, images):
      pooled = tf.reduce_mean(images, axis=[1, 2])
      return tf.tile(tf.concat([pooled, 1.0 - pooled], 1), [1, DIM // 6 + 1]
                     )[:, :DIM] * 4.0

  tf.saved_model.save(Wide(), str(path))
  return str(path)


@pytest.fixture
def small_disk(tmp_path):
  if sys.platform != 'linux' or os.geteuid() != 0:
    pytest.skip('mounting a small tmpfs needs root on Linux')
  mnt = tmp_path / 'small_disk'
  mnt.mkdir()
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs',
                         str(mnt)], capture_output=True, text=True)
  if done.returncode != 0:
    pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
  yield mnt
  subprocess.run(['umount', str(mnt)], check=False)


@pytest.mark.slow
def test_cli_full_disk_says_where_and_how_much(tmp_path, small_disk):
  images = make_colour_dataset(tmp_path / 'images', per_class=20)
  config = shrunk_config(images, tmp_path / 'out',
                         _wide_module(tmp_path / 'wide'),
                         bottleneck_dir=str(small_disk / 'cache'))
  args = ['--image_dir', config.data.image_dir, '--tfhub_module',
          config.module.tfhub_module, '--bottleneck_dir', config.cache.bottleneck_dir,
          '--summaries_dir', config.outputs.summaries_dir, '--report_dir',
          config.outputs.report_dir, '--output_labels', config.outputs.output_labels,
          '--saved_model_dir', config.outputs.saved_model_dir, '--output_graph', '',
          '--how_many_training_steps', '20']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-m', 'retrain', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert 'Not enough disk space for the bottleneck cache' in proc.stderr
  assert str(small_disk / 'cache') in proc.stderr
  assert 'MiB needed' in proc.stderr and 'MiB free' in proc.stderr


@pytest.mark.slow
def test_disk_filling_mid_run_then_resume(tmp_path, small_disk, monkeypatch):
  images = make_colour_dataset(tmp_path / 'images', per_class=20)
  config = shrunk_config(images, tmp_path / 'out',
                         _wide_module(tmp_path / 'wide'),
                         bottleneck_dir=str(small_disk / 'cache'),
                         bottleneck_batch_size=4, output_graph='',
                         how_many_training_steps=20)
  # As if the disk filled after the check (another program writing).
  monkeypatch.setattr(bottleneck_cache, 'check_free_space', lambda *a: None)
  with pytest.raises(OutputError) as e:
    pipeline.run(config)
  assert str(small_disk / 'cache') in str(e.value)
  assert 'vectors still to compute' in str(e.value)
  monkeypatch.undo()
  cache = [d for d in (small_disk / 'cache').iterdir() if d.is_dir()][0]
  assert not [n for n in os.listdir(cache)
              if n.startswith(store_lib.TMP_PREFIX)]
  stored = len(_count(cache))
  assert 0 < stored < 60
  # Room again: the next run completes and reuses every stored vector.
  subprocess.run(['mount', '-o', 'remount,size=40m', str(small_disk)],
                 check=True)
  result = pipeline.run(config)
  assert result.bottleneck_stats.reused == stored
  assert result.bottleneck_stats.computed == 60 - stored


def _count(directory):
  """The keys stored in the shards of a namespace folder."""
  import h5py
  keys = set()
  for name in os.listdir(directory):
    if name.startswith(store_lib.SHARD_PREFIX):
      with h5py.File(directory / name, 'r') as f:
        keys.update(f['keys'][...].tolist())
  return keys
