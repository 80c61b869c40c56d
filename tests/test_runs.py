"""Each run owns its outputs: a run folder of its own, `latest`, locks."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from retrain.common import runs
from retrain.errors import OutputError
from tests.conftest import make_colour_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_runs_started_in_the_same_second_get_two_folders(tmp_path):
  first = runs.new_run_folder(str(tmp_path), 'flowers', now=1e9)
  second = runs.new_run_folder(str(tmp_path), 'flowers', now=1e9)
  assert first != second
  assert os.path.dirname(first) == os.path.dirname(second) == str(
      tmp_path / 'flowers')
  assert second == first + '-2'


def test_latest_points_to_the_last_finished_run(tmp_path):
  first = runs.new_run_folder(str(tmp_path), 'flowers', now=1e9)
  second = runs.new_run_folder(str(tmp_path), 'flowers', now=2e9)
  assert runs.find_latest(str(tmp_path)) is None
  runs.point_latest(second)
  runs.point_latest(first)
  assert runs.find_latest(str(tmp_path / 'flowers')) == first
  assert runs.find_latest(str(tmp_path)) == first
  # No temporary left beside the pointers.
  assert sorted(os.listdir(tmp_path)) == ['flowers', 'latest']


def test_latest_as_a_file_where_links_cannot_be_made(tmp_path, monkeypatch):
  run_dir = runs.new_run_folder(str(tmp_path), 'flowers')

  def no_links(*args, **kwargs):
    raise OSError('symbolic links are not supported here')
  monkeypatch.setattr(os, 'symlink', no_links)
  runs.point_latest(run_dir)
  assert (tmp_path / 'latest').is_file()
  assert runs.find_latest(str(tmp_path)) == run_dir


def test_data_set_name_is_a_safe_folder_name():
  assert runs.data_set_name('/data/flower photos/') == 'flower_photos'
  assert runs.data_set_name('', '/data/labels.csv') == 'labels'
  assert runs.data_set_name('') == 'images'


def test_a_second_run_on_a_given_path_is_refused(tmp_path):
  path = str(tmp_path / 'model')
  with runs.locked({'saved_model_dir': path}) as locks:
    assert locks == [path + '.lock']
    with pytest.raises(OutputError, match=r"saved_model_dir .*model.* is "
                       r'being written by another run \(process '
                       f'{os.getpid()}@'):
      with runs.locked({'output_labels': str(tmp_path / 'l.txt'),
                        'saved_model_dir': path}):
        pass
    # The refused run released what it had taken; the first keeps its own.
    assert sorted(os.listdir(tmp_path)) == ['model.lock']
  assert os.listdir(tmp_path) == []


def test_a_killed_runs_lock_is_taken_over(tmp_path):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  import socket
  (tmp_path / 'labels.txt.lock').write_text(
      f'{dead.stdout.strip()}@{socket.gethostname()}\n')
  with runs.locked({'output_labels': str(tmp_path / 'labels.txt')}):
    assert (tmp_path / 'labels.txt.lock').read_text().startswith(
        f'{os.getpid()}@')


def test_outputs_go_into_a_run_folder_unless_given(tmp_path):
  from retrain import pipeline
  from retrain.config import DEFAULTS
  config = DEFAULTS.replace(image_dir=str(tmp_path / 'roses'),
                               output_dir=str(tmp_path / 'runs'),
                               output_labels=str(tmp_path / 'mine.txt'))
  assert pipeline.given_outputs(config) == {
      'output_labels': str(tmp_path / 'mine.txt')}
  placed, run_dir = pipeline.place_outputs(config)
  assert os.path.dirname(run_dir) == str(tmp_path / 'runs' / 'roses')
  assert placed.outputs.saved_model_dir == os.path.join(run_dir, 'saved_model')
  assert placed.outputs.report_dir == os.path.join(run_dir, 'report')
  assert placed.outputs.summaries_dir == os.path.join(run_dir, 'summaries')
  assert placed.outputs.output_labels == str(tmp_path / 'mine.txt')
  assert placed.outputs.output_graph == ''  # No frozen graph unless asked for.
  assert '~' not in placed.cache.bottleneck_dir
  # Every output given a path: no run folder at all.
  given = config.replace(**{
      f: str(tmp_path / f) for f in pipeline.OUTPUT_FIELDS})
  assert pipeline.place_outputs(given)[1] is None


def test_a_run_that_fails_at_once_leaves_no_run_folder(tmp_path):
  from retrain import pipeline
  from retrain.config import DEFAULTS
  from retrain.errors import RetrainError
  config = DEFAULTS.replace(image_dir=str(tmp_path / 'missing'),
                               output_dir=str(tmp_path / 'runs'))
  with pytest.raises(RetrainError, match='does not exist'):
    pipeline.run(config)
  # Nothing at all: no run folder, no data-set folder, no output folder.
  assert not (tmp_path / 'runs').exists()


def test_label_image_without_a_model_or_a_run_says_what_to_pass(tmp_path):
  from tools import label_image
  with pytest.raises(label_image.LabelImageError,
                     match='No model given and no finished retrain run in '
                     f'{tmp_path}.*--saved_model_dir'):
    label_image.latest_saved_model(str(tmp_path))
  run_dir = runs.new_run_folder(str(tmp_path), 'flowers')
  (pathlib.Path(run_dir) / 'saved_model').mkdir()
  runs.point_latest(run_dir)
  assert label_image.latest_saved_model(str(tmp_path)) == os.path.join(
      run_dir, 'saved_model')


def _start(args, cwd):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
                 'PYTHONPATH', '')]))
  return subprocess.Popen([sys.executable, '-m', 'retrain', *args], cwd=cwd,
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_runs_at_once_in_one_folder_keep_their_own_outputs(
    tmp_path, fake_module):
  images = make_colour_dataset(tmp_path / 'colours')
  work = tmp_path / 'work'
  work.mkdir()
  (work / 'retrain_runs').mkdir()
  precious = work / 'retrain_runs' / 'notes.txt'
  precious.write_text('mine')
  args = ['--image_dir', str(images), '--tfhub_module', fake_module,
          '--bottleneck_dir', str(tmp_path / 'cache'),
          '--projector_max_images', '0']
  procs = [_start(args + ['--random_seed', str(seed)], work)
           for seed in (1, 2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for proc, (_, err) in zip(procs, outs):
    assert proc.returncode == 0, err[-3000:]
  run_dirs = sorted((work / 'retrain_runs' / 'colours').glob('2*'))
  assert len(run_dirs) == 2
  for run_dir, seed in zip(run_dirs, _seeds(run_dirs)):
    assert (run_dir / 'saved_model' / 'saved_model.pb').is_file()
    assert (run_dir / 'labels.txt').read_text() == 'blue\ngreen\nred\n'
    assert not list(run_dir.glob('*.previous-*'))
    assert seed in (1, 2)
  assert sorted(_seeds(run_dirs)) == [1, 2]  # Each run wrote its own only.
  # The pointer names one of the two; nothing else was touched or written
  # outside the run folders (no frozen graph by default).
  latest = runs.find_latest(str(work / 'retrain_runs' / 'colours'))
  assert latest in [str(d) for d in run_dirs]
  assert precious.read_text() == 'mine'
  assert sorted(os.listdir(work)) == ['retrain_runs']
  assert sorted(os.listdir(work / 'retrain_runs')) == [
      'colours', 'latest', 'notes.txt']
  # label_image with no model flag takes the latest run and says which.
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, str(ROOT / 'tools' /
                                             'label_image.py'),
                         str(images / 'red' / 'img_0.jpg')], cwd=work,
                        capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  relative = os.path.relpath(latest, work)
  assert f"Using the latest run's model: {relative}/saved_model" in (
      proc.stderr)
  assert proc.stdout.splitlines()[1].split()[0] == 'red'


def _seeds(run_dirs):
  import json
  return [json.loads((d / 'report' / 'run_summary.json').read_text())[
      'config']['random_seed'] for d in run_dirs]


@pytest.mark.slow
def test_two_runs_given_the_same_path_the_second_refuses(tmp_path,
                                                         fake_module):
  images = make_colour_dataset(tmp_path / 'colours', per_class=40)
  model = tmp_path / 'shared_model'
  args = ['--image_dir', str(images), '--tfhub_module', fake_module,
          '--bottleneck_dir', str(tmp_path / 'cache'),
          '--saved_model_dir', str(model), '--projector_max_images', '0']
  # The first run trains long enough (SGD) to still hold the path when the
  # second one starts.
  first = _start(args + ['--how_many_training_steps', '40000',
                         '--eval_step_interval', '10000'], tmp_path)
  lock = pathlib.Path(str(model) + '.lock')
  import time
  deadline = time.time() + 300
  while not lock.exists() and time.time() < deadline:
    time.sleep(0.05)
  # Held still (alive, holding the path) while the second one starts, so
  # that a fast machine cannot finish the first run before the second
  # reaches the lock.
  first.send_signal(signal.SIGSTOP)
  try:
    second = _start(args, tmp_path)
    _, err = second.communicate(timeout=600)
    assert first.poll() is None, 'the first run ended too soon for this test'
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 1, err[-3000:]
  assert 'is being written by another run' in err
  assert '--saved_model_dir' in err
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  assert (model / 'saved_model.pb').is_file()
  assert not list(tmp_path.glob('shared_model.previous-*'))
  assert not lock.exists()


def test_the_cli_puts_the_bottleneck_cache_in_the_users_cache_folder(
    tmp_path, monkeypatch):
  from retrain import __main__ as cli
  cli.FLAGS.unparse_flags()
  cli.FLAGS(['retrain'])
  try:
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert cli.config_from_flags({}).cache.bottleneck_dir == str(
        tmp_path / 'home' / '.cache' / 'retrain' / 'bottlenecks')
    env = {cli.CACHE_HOME_ENV: str(tmp_path / 'xdg')}
    assert cli.config_from_flags(env).cache.bottleneck_dir == str(
        tmp_path / 'xdg' / 'retrain' / 'bottlenecks')
    cli.FLAGS(['retrain', '--bottleneck_dir', str(tmp_path / 'mine')])
    assert cli.config_from_flags(env).cache.bottleneck_dir == str(tmp_path / 'mine')
  finally:
    cli.FLAGS.unparse_flags()
