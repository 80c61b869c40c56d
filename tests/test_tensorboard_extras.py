"""The TensorBoard views: the confusion image, and a whole run's event files
read back with TensorBoard's own loader (every tag present, with the right
plugin), the projector's files, and the report in --report_dir."""

import csv
import io
import json
import pathlib

import numpy as np
import pytest

from retrain import pipeline
from retrain.report import tensorboard as tb
from tests.conftest import make_colour_dataset, write_image


def _load(run_dir):
  from tensorboard.backend.event_processing import event_accumulator as ea
  acc = ea.EventAccumulator(str(run_dir), size_guidance={
      ea.TENSORS: 0, ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0})
  acc.Reload()
  return acc


def _plugin(acc, tag):
  return acc.SummaryMetadata(tag).plugin_data.plugin_name


def test_confusion_image_is_a_heat_map_of_the_rows():
  cm = np.array([[9, 1], [0, 10]])
  img = tb.confusion_image(cm, ['cat', 'dog'], 'Test')
  assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
  assert img.shape[0] > 60 and img.shape[1] > 60
  # Full rows are drawn dark blue, empty cells white: both colours appear.
  colours = {tuple(c) for c in img.reshape(-1, 3)}
  assert (8, 48, 107) in colours and (255, 255, 255) in colours
  # An all-zero matrix (e.g. an empty class) draws without dividing by zero.
  tb.confusion_image(np.zeros((3, 3), np.int64), ['a', 'b', 'c'])


def test_sample_rows_is_capped_spread_and_repeatable():
  assert tb.sample_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
  rows = tb.sample_rows(1000, 10)
  assert len(rows) == 10 and rows[0] == 0 and rows[-1] == 999
  assert rows.tolist() == tb.sample_rows(1000, 10).tolist()
  assert len(tb.sample_rows(1000, 0)) == 0


@pytest.mark.slow
def test_sprite_keeps_within_tensorboard_limit(tmp_path):
  paths = [str(write_image(tmp_path / f'{k}.png', (200, 0, 0)))
           for k in range(3)] + [str(tmp_path / 'missing.jpg')]
  sheet, size = tb.sprite(paths, size=16)
  assert sheet.shape == (32, 32, 3) and size == 16
  assert tuple(sheet[0, 0]) [0] > 150  # a red thumbnail
  assert tuple(sheet[20, 20]) == (128, 128, 128)  # unreadable: grey
  assert tb.sprite(['x'] * 40000, size=64)[1] == 8192 // 200


@pytest.mark.slow
def test_run_writes_every_tag_report_and_projector(small_config):
  root = make_colour_dataset(small_config.data.image_dir, per_class=12)
  (root / 'red' / 'broken.jpg').write_bytes(b'not an image')
  config = small_config.replace(projector_max_images=20,
                               how_many_training_steps=100,
                               eval_step_interval=10)
  logs = pathlib.Path(config.outputs.summaries_dir)
  report = pathlib.Path(config.outputs.report_dir)
  assert not logs.exists() and not report.exists()

  result = pipeline.run(config)

  train = _load(logs / 'train')
  assert {'accuracy', 'cross_entropy', 'run_config'} <= set(
      train.Tags()['tensors'])
  assert {'final_layer/weights', 'final_layer/biases',
          'final_layer/activations'} <= set(train.Tags()['tensors'])
  assert _plugin(train, 'run_config') == 'text'
  text = train.Tensors('run_config')[0].tensor_proto.string_val[0].decode()
  assert '| how_many_training_steps | 100 |' in text
  assert '| red | ' in text and 'Skipped files: 1' in text
  assert 'broken.jpg' in text

  labels = ['blue', 'green', 'red']
  for run in ('validation', 'test'):
    acc = _load(logs / run)
    tags = set(acc.Tags()['tensors'])
    assert 'confusion_matrix' in tags, run
    assert _plugin(acc, 'confusion_matrix') == 'images'
    for name in labels:
      assert _plugin(acc, f'pr_curve/{name}') == 'pr_curves', (run, name)
  val_images = _load(logs / 'validation').Tensors('confusion_matrix')
  # At most 10 evaluation images, evenly spread, the last one the final head.
  steps = [e.step for e in val_images]
  assert len(steps) == 10 and steps == sorted(set(steps))
  assert steps[0] == 0 and steps[-1] == 99 and 40 <= steps[5] <= 60
  test_acc = _load(logs / 'test')
  assert {'accuracy', 'f1_macro', 'precision_macro', 'recall_macro'} <= set(
      test_acc.Tags()['tensors'])
  assert float(np.asarray(tf_value(test_acc, 'accuracy'))) == 1.0
  # The image decodes to a picture.
  from PIL import Image
  png = test_acc.Tensors('confusion_matrix')[0].tensor_proto.string_val[2]
  assert Image.open(io.BytesIO(png)).size[0] > 100

  proj = logs / 'projector'
  cfg = (proj / 'projector_config.pbtxt').read_text()
  assert 'bottlenecks/.ATTRIBUTES/VARIABLE_VALUE' in cfg
  assert 'sprite.png' in cfg and 'metadata.tsv' in cfg
  meta = (proj / 'metadata.tsv').read_text().splitlines()
  assert meta[0].split('\t') == ['label', 'predicted', 'subset', 'correct',
                                 'file']
  assert len(meta) == 1 + 20 == 1 + result.explained.projector_images
  assert {line.split('\t')[0] for line in meta[1:]} == set(labels)
  import tensorflow as tf
  reader = tf.train.load_checkpoint(str(proj))
  vectors = reader.get_tensor('bottlenecks/.ATTRIBUTES/VARIABLE_VALUE')
  assert vectors.shape == (20, 6)
  assert Image.open(proj / 'sprite.png').size == (5 * 64, 5 * 64)
  # The projector plugin finds the embedding the way TensorBoard does.
  from tensorboard.plugins.projector import projector_plugin
  assert projector_plugin._find_latest_checkpoint(str(proj))

  names = sorted(p.name for p in report.iterdir())
  for subset in ('validation', 'test'):
    for suffix in ('metrics.csv', 'metrics.json', 'confusion_matrix.csv',
                   'confusion_matrix.json'):
      assert f'{subset}_{suffix}' in names
  assert 'misclassified_test.csv' in names
  cm = json.loads((report / 'test_confusion_matrix.json').read_text())
  assert cm['labels'] == labels
  assert np.trace(cm['matrix']) == sum(map(sum, cm['matrix'])) \
      == result.test_count
  assert result.explained.metrics['test'].accuracy == 1.0


def tf_value(acc, tag):
  from tensorboard.util import tensor_util
  return tensor_util.make_ndarray(acc.Tensors(tag)[-1].tensor_proto)


@pytest.mark.slow
def test_misclassified_file_lists_each_wrong_test_image(small_config):
  """Labels that colour cannot predict: every wrong test image is listed,
  and the count matches the test accuracy."""
  rng = np.random.default_rng(1)
  root = pathlib.Path(small_config.data.image_dir)
  for k in range(90):
    label = ['a', 'b', 'c'][k % 3]
    write_image(root / label / f'x{k}.png', tuple(rng.integers(0, 255, 3)),
                fmt='PNG', seed=k)
  config = small_config.replace(testing_percentage=40,
                               projector_max_images=0)
  result = pipeline.run(config)
  rows = list(csv.DictReader(open(pathlib.Path(config.outputs.report_dir)
                                  / 'misclassified_test.csv')))
  wrong = round((1 - result.test_accuracy) * result.test_count)
  assert len(rows) == wrong > 0
  for row in rows:
    assert pathlib.Path(row['path']).exists()
    assert row['true_label'] != row['predicted_label']
    assert pathlib.Path(row['path']).parent.name == row['true_label']
  assert not (pathlib.Path(config.outputs.summaries_dir) / 'projector').exists()


def test_bad_projector_cap_is_refused_before_work(small_config):
  from retrain.errors import DatasetError
  with pytest.raises(DatasetError, match='projector_max_images=-1'):
    pipeline.run(small_config.replace(projector_max_images=-1))
  assert not pathlib.Path(small_config.cache.bottleneck_dir).exists()
