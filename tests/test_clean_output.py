"""Finite numbers and clean text in what retrain and label_image write:
strict JSON, CSV cells a spreadsheet will not run, names that cannot
drive the terminal."""

import csv
import io
import json
import math

from retrain.common import atomic, safe_text, strict_json
from retrain.report import skipped as skipped_lib
from tools import label_image


def test_json_is_strict_nan_written_as_null(tmp_path):
  value = {'a': float('nan'), 'b': [1.0, float('inf')], 'c': (2, 'x')}
  text = strict_json.dumps(value)
  assert json.loads(text, parse_constant=lambda c: 1 / 0) == {
      'a': None, 'b': [1.0, None], 'c': [2, 'x']}
  atomic.write_json(str(tmp_path / 'm.json'), {'test_accuracy': math.nan})
  assert 'NaN' not in (tmp_path / 'm.json').read_text()


def test_label_image_json_has_no_nan():
  records = [label_image.Record('a.jpg', [('x', float('nan'))])]
  text = label_image.format_records(records, 'json')
  assert 'NaN' not in text and json.loads(text)[0]['predictions'][0][
      'probability'] is None


def test_csv_cells_that_a_spreadsheet_would_run_are_text(tmp_path):
  assert safe_text.csv_cell('=HYPERLINK("http://x","y")') == (
      '\'=HYPERLINK("http://x","y")')
  for start in '+-@\t\r':
    assert safe_text.csv_cell(start + 'cmd').startswith("'")
  assert safe_text.csv_cell('roses') == 'roses' and safe_text.csv_cell(-1) == -1
  skipped_lib.write_skipped_report(str(tmp_path), [('=cmd|calc.jpg', '@SUM(1)')])
  rows = list(csv.reader(io.StringIO(
      (tmp_path / skipped_lib.SKIPPED_CSV).read_text())))
  assert rows[1] == ["'=cmd|calc.jpg", "'@SUM(1)"]
  records = [label_image.Record('-x.jpg', [('=HYPERLINK(1)', 0.9)])]
  row = list(csv.reader(io.StringIO(label_image.format_records(records,
                                                               'csv'))))[1]
  assert row[0] == "'-x.jpg" and row[2] == "'=HYPERLINK(1)"


def test_label_image_table_escapes_control_characters():
  records = [label_image.Record('\x1b]0;pwned\x07a.jpg',
                                [('\u202eroses', 0.9)]),
             label_image.Record('b\x1b[2J.jpg', error='bad \x1b[31m')]
  table = label_image.format_records(records, 'table')
  assert '\x1b' not in table and '\u202e' not in table
  assert '\\x1b]0;pwned\\x07a.jpg' in table and '\\u202eroses' in table


def test_output_places_are_checked_before_any_work(tmp_path):
  """Late errors made early: --output_labels naming a folder, an output
  folder that is a file, outputs inside the image folder."""
  import pytest

  from retrain.errors import OutputError
  from retrain.steps import prepare
  from tests.conftest import shrunk_config
  images = tmp_path / 'images'
  (images / 'a').mkdir(parents=True)
  (tmp_path / 'out').mkdir()
  (tmp_path / 'folder').mkdir()
  (tmp_path / 'file').write_text('x')
  for overrides, words in (
      (dict(output_labels=str(tmp_path / 'folder')), 'is a folder'),
      (dict(report_dir=str(tmp_path / 'file')), 'is a file'),
      (dict(summaries_dir=str(images / 'logs')), 'inside image_dir')):
    config = shrunk_config(images, tmp_path / 'out', 'fake', **overrides)
    with pytest.raises(OutputError, match=words):
      prepare.check_output_places(config)
  prepare.check_output_places(shrunk_config(
      images, tmp_path / 'out', 'fake', bottleneck_dir=str(images / '.cache')))


def test_earlier_tensorboard_runs_are_bounded(tmp_path):
  from retrain.common import earlier_outputs
  from retrain.report import summaries
  logs = tmp_path / 'logs'
  for _ in range(earlier_outputs.KEEP_PREVIOUS + 3):
    (logs / 'train').mkdir(parents=True)
    summaries.keep_previous_runs(str(logs))
  kept = list(tmp_path.glob('logs.previous-*'))
  assert len(kept) == earlier_outputs.KEEP_PREVIOUS


def test_class_names_with_math_text_draw_as_text():
  """A class folder named like matplotlib math ('$\\foo$ math') is drawn,
  not parsed (it failed the whole inspect report)."""
  import numpy as np

  from retrain.inspect import charts
  uri = charts.class_counts_chart(['$\\foo$ math', 'b$'],
                                  np.ones((2, 3), int))
  assert uri.startswith('data:image/png;base64,')


def test_a_failed_fine_tuning_checkpoint_leaves_nothing_behind(tmp_path):
  """A full disk during a checkpoint: an OutputError naming the folder,
  TensorFlow's temporaries removed (they made the next run fail), the
  checkpoint before it kept."""
  import pytest
  import tensorflow as tf

  from retrain.errors import OutputError
  from retrain.finetune import train as finetune_train

  (tmp_path / 'ckpt-1.index').write_text('whole')

  class FullDisk:
    directory = str(tmp_path)

    def save(self, checkpoint_number):
      (tmp_path / f'ckpt-{checkpoint_number}_temp').mkdir()
      (tmp_path / f'ckpt-{checkpoint_number}_temp' / 'part-0').write_text('x')
      (tmp_path / 'checkpoint.tmp1234').write_text('x')
      raise tf.errors.ResourceExhaustedError(None, None,
                                             'No space left on device')

  with pytest.raises(OutputError, match='No space left on device.*run again'):
    finetune_train.save_checkpoint(FullDisk(), 2)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt-1.index']


def test_a_full_disk_while_caching_activations_leaves_nothing(tmp_path,
                                                               monkeypatch):
  """Activation shards are built in memory and written with one write: a
  full disk removes the temporary (no .tmp-* file, no raw HDF5 left) and
  the next write with space works."""
  import errno

  import numpy as np
  import pytest

  import bottleneck_cache
  from bottleneck_cache import store as store_lib
  from retrain.finetune import activations
  store = activations.Float16Store(str(tmp_path), {'kind': 'activations'})
  real_write = store_lib._write_bytes

  def full(path, data):
    with open(path, 'wb') as f:
      f.write(data[:10])
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(store_lib, '_write_bytes', full)
  with pytest.raises(bottleneck_cache.CacheFullError):
    store.put(['a'], np.ones((1, 4), np.float32))
  assert sorted(p.name for p in tmp_path.rglob('*') if p.is_file()) == [
      'namespace.json']
  monkeypatch.setattr(store_lib, '_write_bytes', real_write)
  store.put(['a'], np.ones((1, 4), np.float32))
  assert store.get(['a']).tolist() == [[1.0] * 4]
