"""End to end on synthetic images with the fake module: the pipeline and the
real command line, the files written, the cache reuse, and a dataset that
must fail the accuracy bar."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from retrain import pipeline
from retrain.errors import DatasetError, OutputError
from tests.conftest import FAKE_SIZE, make_colour_dataset, write_image

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_trains_evaluates_exports_and_reuses_cache(small_config):
  make_colour_dataset(small_config.data.image_dir)
  out = pathlib.Path(small_config.outputs.saved_model_dir)
  assert not out.exists() and not os.path.exists(small_config.outputs.output_labels)

  result = pipeline.run(small_config)

  assert result.labels == ['blue', 'green', 'red']
  assert sum(result.counts.values()) == 36
  assert result.test_count == result.counts['test'] >= 3
  assert result.test_accuracy == 1.0
  assert result.bottleneck_stats.computed == 36
  assert result.bottleneck_stats.reused == 0
  assert pathlib.Path(small_config.outputs.output_labels).read_text() == \
      'blue\ngreen\nred\n'
  assert (out / 'saved_model.pb').exists()
  meta = json.loads((out / 'retrain_metadata.json').read_text())
  assert meta['labels'] == ['blue', 'green', 'red']
  assert (meta['input_height'], meta['input_width']) == (FAKE_SIZE, FAKE_SIZE)
  assert meta['input_value_range'] == [0.0, 1.0]
  assert meta['module']['handle'] == small_config.module.tfhub_module
  assert (out / 'labels.txt').read_text() == 'blue\ngreen\nred\n'
  for run in ('train', 'validation'):
    assert list((pathlib.Path(small_config.outputs.summaries_dir) / run).iterdir())
  summary = json.loads(
      (pathlib.Path(small_config.outputs.report_dir) / 'run_summary.json').read_text())
  assert summary['test_accuracy'] == 1.0
  assert summary['bottlenecks']['computed'] == 36
  assert set(summary['timings_seconds']) >= {'bottlenecks', 'training',
                                             'export', 'total'}
  # Training history: evaluation at step 0, every 50 steps and the last.
  assert [p.step for p in result.history] == [0, 50, 100, 150, 200, 250, 299]

  # The export classifies on its own.
  import tensorflow as tf
  loaded = tf.saved_model.load(str(out))
  from retrain import images
  red = images.load_image(str(next(
      pathlib.Path(small_config.data.image_dir, 'red').iterdir())),
      (FAKE_SIZE, FAKE_SIZE))
  probs = loaded.signatures['serving_default'](images=red[None])[
      'probabilities'].numpy()
  assert probs.shape == (1, 3) and np.argmax(probs) == 2
  np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)

  # Second run: nothing computed, previous export and logs kept aside.
  again = pipeline.run(small_config)
  assert again.bottleneck_stats.computed == 0
  assert again.bottleneck_stats.reused == 36
  assert again.test_accuracy == 1.0
  assert list(out.parent.glob('saved_model.previous-*'))
  # The earlier TensorBoard runs sit beside --summaries_dir, not inside it,
  # so TensorBoard on --summaries_dir shows this run only.
  logs = pathlib.Path(small_config.outputs.summaries_dir)
  beside = list(logs.parent.glob(logs.name + '.previous-*'))
  assert len(beside) == 1
  assert {p.name for p in beside[0].iterdir()} >= {'train', 'validation'}
  assert sorted(p.name for p in logs.iterdir()) == sorted(
      p.name for p in beside[0].iterdir())


@pytest.mark.slow
def test_renamed_image_reuses_vector_edited_gets_new(small_config):
  root = make_colour_dataset(small_config.data.image_dir, per_class=5)
  pipeline.run(small_config)
  os.rename(root / 'red' / 'img_0.jpg', root / 'red' / 'renamed.jpg')
  write_image(root / 'red' / 'img_1.jpg', (250, 0, 0), seed=99)  # edited
  result = pipeline.run(small_config)
  assert result.bottleneck_stats.computed == 1
  assert result.bottleneck_stats.reused == 14


@pytest.mark.slow
def test_random_labels_do_not_reach_accuracy_bar(small_config, tmp_path):
  """A control: if this passed the bar the test above would prove nothing."""
  rng = np.random.default_rng(0)
  root = pathlib.Path(small_config.data.image_dir)
  for k in range(120):
    label = ['a', 'b', 'c'][rng.integers(3)]
    write_image(root / label / f'x{k}.png', tuple(rng.integers(0, 255, 3)),
                fmt='PNG', seed=k)
  config = small_config.replace(testing_percentage=30)
  result = pipeline.run(config)
  assert result.test_count >= 20
  assert result.test_accuracy < 0.8


@pytest.mark.slow
def test_corrupt_image_is_skipped_and_run_goes_on(small_config, caplog):
  root = make_colour_dataset(small_config.data.image_dir)
  (root / 'red' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really')
  (root / 'blue' / 'empty.png').write_bytes(b'')
  result = pipeline.run(small_config)
  skipped = {os.path.basename(p): reason for p, reason in result.skipped}
  assert set(skipped) == {'broken.jpg', 'empty.png'}
  assert result.test_accuracy == 1.0
  assert 'broken.jpg' in caplog.text
  assert result.bottleneck_stats.failed == 2


def test_bad_value_is_refused_before_work(small_config):
  make_colour_dataset(small_config.data.image_dir, per_class=3)
  with pytest.raises(DatasetError, match='leave no images to train'):
    pipeline.run(small_config.replace(validation_percentage=60,
                                     testing_percentage=40))
  assert not os.path.exists(small_config.cache.bottleneck_dir)


@pytest.mark.slow
def test_foreign_export_dir_is_not_overwritten(small_config):
  make_colour_dataset(small_config.data.image_dir, per_class=3)
  target = pathlib.Path(small_config.outputs.saved_model_dir)
  target.mkdir(parents=True)
  (target / 'precious.txt').write_text('mine')
  with pytest.raises(OutputError, match='refusing to overwrite'):
    pipeline.run(small_config)
  assert (target / 'precious.txt').read_text() == 'mine'


@pytest.mark.slow
def test_variable_size_module_needs_image_size(small_config,
                                               fake_module_any_size):
  from retrain.errors import ModuleError
  make_colour_dataset(small_config.data.image_dir, per_class=4)
  config = small_config.replace(tfhub_module=fake_module_any_size)
  with pytest.raises(ModuleError, match='image_size'):
    pipeline.run(config)
  result = pipeline.run(config.replace(image_size=24))
  assert result.test_accuracy == 1.0


def _cli(args, **kw):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-m', 'retrain', *args],
                        capture_output=True, text=True, cwd=ROOT, env=env,
                        **kw)


def _cli_args(config):
  return ['--image_dir', config.data.image_dir, '--tfhub_module',
          config.module.tfhub_module, '--bottleneck_dir', config.cache.bottleneck_dir,
          '--summaries_dir', config.outputs.summaries_dir, '--report_dir',
          config.outputs.report_dir, '--output_labels',
          config.outputs.output_labels, '--saved_model_dir', config.outputs.saved_model_dir,
          '--output_graph', config.outputs.output_graph,
          '--how_many_training_steps', '100', '--learning_rate', '0.5']


@pytest.mark.slow
def test_cli_end_to_end(small_config):
  make_colour_dataset(small_config.data.image_dir)
  proc = _cli(_cli_args(small_config) + ['--print_misclassified_test_images'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Final test accuracy = 100.0% (N=' in proc.stderr
  assert 'MISCLASSIFIED TEST IMAGES' in proc.stderr
  assert os.path.exists(os.path.join(small_config.outputs.saved_model_dir,
                                     'saved_model.pb'))


@pytest.mark.slow
def test_cli_error_is_one_clear_line(tmp_path):
  proc = _cli(['--image_dir', str(tmp_path / 'missing')])
  assert proc.returncode == 1
  assert 'does not exist' in proc.stderr
  # The library names the setting; the command line words it as its flag.
  assert '--image_dir' in proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_cli_kill_during_bottlenecks_then_resume(small_config):
  """SIGKILL during bottlenecks: the cache opens, keeps every finished batch,
  and the next run computes only the rest."""
  make_colour_dataset(small_config.data.image_dir, per_class=150)
  args = _cli_args(small_config) + ['--bottleneck_batch_size', '1']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.Popen([sys.executable, '-m', 'retrain', *args], cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  cache = pathlib.Path(small_config.cache.bottleneck_dir)
  deadline = time.time() + 120
  shards = []
  while time.time() < deadline and proc.poll() is None:
    shards = list(cache.glob('*/shard-*.h5'))
    if len(shards) >= 3:
      break
    time.sleep(0.01)
  assert proc.poll() is None, 'run finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  import bottleneck_cache
  from retrain.bottlenecks import compute as bottlenecks
  from retrain.features import modules as features
  module = features.load_module(small_config.module.tfhub_module)
  store = bottleneck_cache.BottleneckStore(small_config.cache.bottleneck_dir,
                                           bottlenecks.cache_namespace(module))
  kept = len(store)
  assert kept >= len(shards) >= 3

  result = pipeline.run(small_config)
  assert result.bottleneck_stats.reused == kept
  assert result.bottleneck_stats.computed == 450 - kept
  assert result.test_accuracy == 1.0


def test_exports_within_one_second_keep_every_earlier_one(small_config):
  """Outputs replaced within one second never collide, and no earlier one
  is ever deleted (a path given by the user may hold another job's)."""
  from retrain.common import earlier_outputs as keep
  target = pathlib.Path(small_config.outputs.output_graph)
  target.parent.mkdir(parents=True, exist_ok=True)
  contents = [b'1', b'2', b'3', b'4', b'5', b'6']
  for content in contents:
    keep.move_aside(str(target))
    target.write_bytes(content)
  asides = sorted(target.parent.glob(target.name + '.previous-*'))
  assert [p.read_bytes() for p in asides] == contents[:-1]
  assert target.read_bytes() == b'6'


@pytest.mark.slow
@pytest.mark.parametrize('script,args,expect,status', [
    ('retrain', ['--list_modules'], 'efficientnet_lite0+lite1+lite2 (default)', 0),
    # --help exits 0 and lists the flags; --version says the version.
    ('retrain', ['--help'], '--bottleneck_dir', 0),
    ('label_image', ['--help'], '--saved_model_dir', 0),
    ('retrain', ['--version'], 'retrain 0.1.0', 0),
    ('label_image', ['--version'], 'label_image 0.1.0', 0),
])
def test_console_scripts(script, args, expect, status):
  """The installed `retrain` and `label_image` commands (pip install .)."""
  path = pathlib.Path(sys.executable).parent / script
  if not path.exists():
    pytest.skip(f'{script} is not installed next to {sys.executable} (the '
                'project is not pip-installed in this environment)')
  proc = subprocess.run([str(path), *args], capture_output=True, text=True,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == status, proc.stderr[-2000:]
  assert expect in proc.stdout + proc.stderr
