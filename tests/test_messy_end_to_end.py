"""A run over a messy real-world folder, and over CSV / split layouts: every
usable image used, every unusable one reported, same pixels at training and
at inference."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import bottleneck_cache
from retrain import images, pipeline
from retrain.bottlenecks import compute as bottlenecks
from retrain.features import modules as features
from tests.conftest import RUN_PLACES, flags_of, make_colour_dataset
from tests.messy_corpus import IGNORED, USABLE, make_messy_corpus

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def messy(small_config):
  expected = make_messy_corpus(small_config.data.image_dir)
  root = pathlib.Path(small_config.data.image_dir)
  usable = {str(root / rel) for rel, o in expected.items() if o == USABLE}
  unusable = {str(root / rel): o for rel, o in expected.items()
              if o not in (USABLE, IGNORED)}
  return usable, unusable


@pytest.mark.slow
def test_run_over_messy_folder(small_config, messy, caplog):
  usable, unusable = messy
  result = pipeline.run(small_config)

  assert result.labels == ['blue', 'red']
  # Every usable image is used (the duplicate pair counts twice) ...
  assert sum(result.counts.values()) == len(usable)
  assert result.bottleneck_stats.computed == len(usable) - 1  # same bytes once
  # ... and every unusable one is reported once, with its reason.
  got = dict(result.skipped)
  assert len(result.skipped) == len(got) == len(unusable)
  assert set(got) == set(unusable)
  for path, fragment in unusable.items():
    assert fragment in got[path], (path, got[path])
    assert caplog.text.count(f'Skipping {path}: ') == 1
  report = json.loads(pathlib.Path(small_config.outputs.report_dir,
                                   'skipped_files.json').read_text())
  assert report['count'] == len(unusable)
  assert {f['path']: f['reason'] for f in report['files']} == got
  csv_text = pathlib.Path(small_config.outputs.report_dir,
                          'skipped_files.csv').read_text(encoding='utf-8')
  assert csv_text.splitlines()[0] == 'path,reason'
  assert len(csv_text.splitlines()) == len(unusable) + 1
  # The same bytes under two classes: a warning naming both files.
  assert '1 image has the same content under two different classes' in \
      caplog.text
  assert 'dup.jpg' in caplog.text and 'dup copy.jpg' in caplog.text
  # Clutter is never mentioned.
  assert 'Thumbs.db' not in caplog.text and '.DS_Store' not in caplog.text


@pytest.mark.slow
def test_training_and_inference_see_the_same_pixels(small_config, messy):
  """Bottlenecks (tf.data pass plus Pillow fallback) equal the module run on
  `images.load_image`, the inference tools' decoder, for every odd file."""
  usable, unusable = messy
  paths = sorted(usable) + sorted(unusable)
  module = features.load_module(small_config.module.tfhub_module)
  store = bottleneck_cache.BottleneckStore(
      small_config.cache.bottleneck_dir, bottlenecks.cache_namespace(module))
  computed = bottlenecks.compute_bottlenecks(paths, module, store, 4)
  assert computed.ok.tolist() == [True] * len(usable) + [False] * len(unusable)
  for row, path in enumerate(sorted(usable)):
    at_inference = module.call(images.load_image(path, module.input_size)[None])
    np.testing.assert_allclose(computed.vectors[row], at_inference.numpy()[0],
                               atol=1e-5, err_msg=path)


@pytest.mark.slow
def test_cli_over_messy_folder_exits_zero(small_config, messy):
  usable, unusable = messy
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run(
      [sys.executable, '-m', 'retrain',
       *flags_of(small_config, *RUN_PLACES, 'report_dir'),
       '--how_many_training_steps', '50', '--label_style', 'retrain'],
      capture_output=True, text=True, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'{len(unusable)} images were skipped' in proc.stderr
  assert 'skipped_files.json' in proc.stderr
  report = json.loads(pathlib.Path(small_config.outputs.report_dir,
                                   'skipped_files.json').read_text())
  assert report['count'] == len(unusable)
  assert os.path.exists(os.path.join(small_config.outputs.saved_model_dir,
                                     'saved_model.pb'))


@pytest.mark.slow
def test_run_with_train_validation_test_csvs(small_config, tmp_path):
  data = tmp_path / 'kaggle'
  for subset, start in (('train', 0), ('validation', 20), ('test', 30)):
    make_colour_dataset(data / subset, per_class=10 if subset == 'train' else 4,
                        start=start)
    rows = ['filename,class'] + [
        f'{p.relative_to(data)},{p.parent.name}'
        for p in sorted((data / subset).rglob('*.jpg'))]
    (data / f'{subset}_labels.csv').write_text('\n'.join(rows) + '\n')
  with open(data / 'test_labels.csv', 'a') as f:
    f.write('test/red/missing.jpg,red\n')
  config = small_config.replace(image_dir='', train_csv=str(data / 'train_labels.csv'),
      validation_csv=str(data / 'validation_labels.csv'),
      test_csv=str(data / 'test_labels.csv'))
  result = pipeline.run(config)
  assert result.labels == ['blue', 'green', 'red']
  assert result.counts == {'train': 30, 'validation': 12, 'test': 12}
  assert result.test_accuracy == 1.0
  assert result.skipped == [(str(data / 'test' / 'red' / 'missing.jpg'),
                             'listed in test_labels.csv:14 but the file does '
                             'not exist')]


@pytest.mark.slow
def test_run_with_split_folders(small_config):
  root = pathlib.Path(small_config.data.image_dir)
  make_colour_dataset(root / 'train', per_class=8)
  make_colour_dataset(root / 'val', per_class=3, start=50)
  result = pipeline.run(small_config)
  assert result.labels == ['blue', 'green', 'red']
  # val/ is the validation set as given; test is carved out of train.
  assert result.counts['validation'] == 9
  assert result.counts['train'] + result.counts['test'] == 24
  assert result.counts['test'] >= 3
