"""The Beam bottleneck job (retrain.beam) on the in-process runner."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import make_colour_dataset, shrunk_config

beam = pytest.importorskip(
    'apache_beam', reason='apache_beam is not installed (pip install ".[beam]")')

import bottleneck_cache  # noqa: E402
from bottleneck_cache import shards  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


def _beam_cli(image_dir, bottleneck_dir, module, report_dir, *extra):
  return [sys.executable, '-m', 'retrain.beam', '--image_dir', str(image_dir),
          '--bottleneck_dir', str(bottleneck_dir), '--tfhub_module', module,
          '--report_dir', str(report_dir), '--runner', 'DirectRunner',
          *extra]


def _shard_keys(bottleneck_dir):
  """{namespace folder: [keys of every shard, concatenated]}; asserts every
  shard is whole and no temporary file is left."""
  found = {}
  for namespace in pathlib.Path(bottleneck_dir).iterdir():
    names = sorted(os.listdir(namespace))
    assert not [n for n in names if n.startswith(shards.TMP_PREFIX)], names
    keys = []
    for name in names:
      if shards.is_shard_name(name):
        keys.extend(k.decode() for k in shards.read_shard_keys(
            str(namespace / name)))
    found[str(namespace)] = keys
  return found


def test_shard_name_depends_only_on_keys(tmp_path):
  from retrain.beam import cache as cache_lib
  vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
  first = cache_lib.write_shard_file(str(tmp_path), ['b', 'a', 'c'], vectors)
  # Same keys in another order (a retried bundle): same name, not rewritten.
  assert cache_lib.write_shard_file(str(tmp_path), ['c', 'a', 'b'],
                                    vectors[::-1]) is None
  assert os.listdir(tmp_path) == [os.path.basename(first)]
  store = bottleneck_cache.BottleneckStore.__new__(
      bottleneck_cache.BottleneckStore)
  store.directory, store._index, store._dim, store._shards = (
      str(tmp_path), {}, None, [])
  store._load_index()
  np.testing.assert_array_equal(store.get(['a', 'b', 'c']),
                                vectors[[1, 0, 2]])
  assert cache_lib.existing_keys(str(tmp_path)) == {'a', 'b', 'c'}


def test_direct_runner_is_pinned_in_process():
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.runners.portability.fn_api_runner import fn_runner

  from retrain.beam import job
  for args in ([], ['--runner', 'DirectRunner'],
               ['--runner=DirectRunner', '--direct_num_workers=2']):
    assert isinstance(job.make_runner(PipelineOptions(args)),
                      fn_runner.FnApiRunner), args
  assert job.make_runner(PipelineOptions(['--runner', 'DataflowRunner'])) is None
  options = PipelineOptions(['--direct_num_workers', '2'])
  job.make_runner(options)
  assert options.get_all_options()['direct_running_mode'] == 'multi_threading'


def test_handler_runs_the_module_on_batches(fake_module):
  from retrain.beam import handler as handler_lib
  handler = handler_lib.FeatureModuleHandler(
      fake_module, (32, 32), min_batch_size=2, max_batch_size=4)
  assert handler.batch_elements_kwargs() == {'min_batch_size': 2,
                                             'max_batch_size': 4}
  model = handler.load_model()
  images = [np.full((32, 32, 3), v, np.float32) for v in (0.0, 0.25, 1.0)]
  results = list(handler.run_inference(images, model))
  assert len(results) == 3
  # The fake module: channel means and their complements, times 4.
  np.testing.assert_allclose(results[1].inference,
                             [1.0, 1.0, 1.0, 3.0, 3.0, 3.0], rtol=1e-6)


def test_job_matches_in_process_vectors_without_network(tmp_path, fake_module,
                                                        monkeypatch):
  """The job on the pinned runner: no Prism, no socket to the outside, and
  the vectors the in-process pipeline computes, to 1e-5."""
  from apache_beam.runners.portability import prism_runner

  from retrain.beam import job
  from retrain.beam.options import BEAM_DEFAULTS

  def no_prism(*args, **kwargs):
    raise AssertionError('the Prism runner (a Go binary download) was used')

  real_connect = socket.socket.connect

  def local_only(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ('localhost', '127.0.0.1', '::1',
                                             '0.0.0.0') and '/' not in host:
      raise AssertionError(f'network connection attempted to {address}')
    return real_connect(sock, address)

  monkeypatch.setattr(prism_runner.PrismRunner, 'run_pipeline', no_prism)
  monkeypatch.setattr(socket.socket, 'connect', local_only)
  images = make_colour_dataset(tmp_path / 'images', per_class=5)
  (images / 'red' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 cut short')
  config = shrunk_config(images, tmp_path / 'out', fake_module,
                         bottleneck_runtime='tf')
  assert not (tmp_path / 'out' / 'bottlenecks').exists()
  result = job.run(config, BEAM_DEFAULTS, ['--runner', 'DirectRunner'])
  assert (result.images, result.computed, result.failures) == (16, 15, 1)
  failures = pathlib.Path(result.failures_path).read_text().splitlines()
  assert failures[0] == 'path\treason'
  assert failures[1].startswith(str(images / 'red' / 'broken.jpg') + '\t')
  assert 'truncated or corrupt JPEG' in failures[1]

  # The same images in-process, into another cache.
  from retrain.bottlenecks import compute
  from retrain.features import modules
  module = modules.load_module(fake_module)
  paths = sorted(str(p) for p in images.rglob('img_*.jpg'))
  store = bottleneck_cache.BottleneckStore(str(tmp_path / 'in_process'),
                                           compute.cache_namespace(module))
  local = compute.compute_bottlenecks(paths, module, store, 4)
  beam_store = bottleneck_cache.BottleneckStore(
      config.cache.bottleneck_dir, compute.cache_namespace(module))
  assert len(beam_store) == 15
  np.testing.assert_allclose(beam_store.get(local.digests), local.vectors,
                             atol=1e-5, rtol=0)

  # A second run finds everything cached.
  again = job.run(config, BEAM_DEFAULTS, ['--runner', 'DirectRunner'])
  assert (again.present, again.computed) == (15, 0)


@pytest.mark.slow
def test_cli_fills_the_cache_then_retrain_computes_nothing(tmp_path,
                                                           fake_module):
  images = make_colour_dataset(tmp_path / 'images', per_class=6)
  bn = tmp_path / 'bottlenecks'
  done = subprocess.run(
      _beam_cli(images, bn, fake_module, tmp_path / 'beam_report',
                '--flip_left_right',
                '--distorted_copies', '2', '--direct_num_workers', '2',
                '--direct_running_mode', 'multi_processing'),
      env=_env(), capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'computed, 0 files failed' in done.stderr

  from retrain import pipeline
  config = shrunk_config(images, tmp_path / 'out', fake_module,
                         bottleneck_dir=str(bn), flip_left_right=True,
                         distorted_copies=2, saved_model_dir='',
                         output_graph='', projector_max_images=0)
  result = pipeline.run(config)
  assert result.bottleneck_stats.computed == 0
  assert result.bottleneck_stats.reused == 18
  assert result.distorted_stats.computed == 0
  assert result.distorted_stats.reused == 2 * result.counts['train']


@pytest.mark.slow
def test_kill_9_then_rerun_leaves_whole_unique_shards(tmp_path, fake_module):
  images = make_colour_dataset(tmp_path / 'images', per_class=40)
  bn = tmp_path / 'bottlenecks'
  command = _beam_cli(images, bn, fake_module, tmp_path / 'report',
                      '--shard_max_vectors', '3', '--nomerge_local_shards',
                      '--beam_min_batch_size', '1',
                      '--beam_max_batch_size', '4')
  process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
  try:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
      if bn.exists() and any(shards.is_shard_name(n) for d in bn.iterdir()
                             for n in os.listdir(d)):
        break
      time.sleep(0.05)
    assert process.poll() is None, 'the job ended before it could be killed'
    os.killpg(process.pid, signal.SIGKILL)
  finally:
    process.wait()
  partial = sum(len(k) for k in _shard_keys(bn).values())
  assert 0 < partial < 120

  done = subprocess.run(command, env=_env(), capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  (keys,) = _shard_keys(bn).values()
  assert len(keys) == len(set(keys)) == 120


def test_ensemble_members_each_fill_their_own_namespace(tmp_path,
                                                        fake_module):
  """An ensemble is computed member by member, into the namespaces that
  retrain's ensemble bottlenecks read."""
  from retrain.beam import job
  from retrain.beam.options import BEAM_DEFAULTS
  from retrain.bottlenecks import compute
  from retrain.features import modules
  from tests.conftest import export_fake_module
  other = export_fake_module(tmp_path / 'pool32_x2', scale=2.0)
  images = make_colour_dataset(tmp_path / 'images', per_class=3)
  config = shrunk_config(images, tmp_path / 'out',
                         f'{fake_module},{other}')
  result = job.run(config, BEAM_DEFAULTS, ['--runner', 'DirectRunner'])
  assert (result.images, result.computed) == (9, 18)
  for path in (fake_module, other):
    store = bottleneck_cache.BottleneckStore(
        config.cache.bottleneck_dir,
        compute.cache_namespace(modules.load_module(path)))
    assert len(store) == 9


def test_crop_to_boxes_is_refused_before_any_work():
  """Beam computes whole images only: with --crop_to_boxes it would fill
  the cache with vectors the crop run never reads, so it says so."""

  from retrain.beam import job
  from retrain.config import DEFAULTS
  from retrain.errors import DatasetError
  with pytest.raises(DatasetError, match='crop_to_boxes is not supported'):
    job._check_supported(DEFAULTS.replace(crop_to_boxes=True))
  job._check_supported(DEFAULTS)  # whole images: fine


@pytest.mark.slow
def test_job_over_a_sparse_giant_and_a_non_utf8_name(tmp_path, fake_module):
  """A 1 GiB sparse x.jpg is refused from its size, a name that is not
  UTF-8 skipped at discovery; the job completes with the rest."""
  from retrain.beam import job
  from retrain.beam.options import BEAM_DEFAULTS
  images = make_colour_dataset(tmp_path / 'images', per_class=5)
  with open(images / 'red' / 'x.jpg', 'wb') as f:
    f.truncate(1 << 30)
  pathlib.Path(os.fsdecode(os.fsencode(str(images / 'blue')) +
                           b'/\xff.jpg')).write_bytes(
                               (images / 'blue' / 'img_0.jpg').read_bytes())
  config = shrunk_config(images, tmp_path / 'out', fake_module,
                         bottleneck_runtime='tf')
  result = job.run(config, BEAM_DEFAULTS, ['--runner', 'DirectRunner'])
  assert (result.computed, result.failures) == (15, 1)
  failures = pathlib.Path(result.failures_path).read_text()
  assert 'x.jpg' in failures and 'over the limit of' in failures
