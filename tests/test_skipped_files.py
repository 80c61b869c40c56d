"""Reasons for unusable files, the skipped-files report, duplicates."""

import csv
import json
import os

from retrain import images
from retrain.data import duplicates
from retrain.report import skipped as skipped_report


def test_reasons_name_what_the_file_is():
  err = OSError('cannot identify image file')
  assert images.decode_failure_reason(b'', err) == 'empty file (0 bytes)'
  assert images.decode_failure_reason(b'  <html><body>', err).startswith(
      'HTML, not an image')
  assert images.decode_failure_reason('café menu\n'.encode(), err) \
      .startswith('text, not an image')
  assert images.decode_failure_reason(
      b'\xff\xd8\xff\xe0garbage', OSError('image file is truncated')) == \
      'truncated or corrupt JPEG: image file is truncated'
  reason = images.decode_failure_reason(b'\x00\x9f\x10\xee' * 4, err)
  assert reason.startswith('not an image in any known format (first bytes '
                           '00 9f 10 ee')
  assert 'TIFF' in reason


def test_tensorflow_prefix_is_cut_from_reasons():
  err = ValueError('{{function_node __wrapped__DecodeImage}} Unknown image '
                   'file format.\nmore')
  assert images.decode_failure_reason(b'\x89PNG\r\n\x1a\nxx', err) == \
      'truncated or corrupt PNG: Unknown image file format.'


def test_broken_link_and_missing_file(tmp_path):
  link = tmp_path / 'link.jpg'
  os.symlink(tmp_path / 'nowhere.jpg', link)
  try:
    open(link, 'rb')
  except OSError as e:
    assert images.os_error_reason(str(link), e).startswith(
        'broken symbolic link (points to ')
  assert images.os_error_reason(
      str(tmp_path / 'x.jpg'),
      FileNotFoundError(2, 'No such file or directory')) == \
      'cannot be read: No such file or directory'


def test_report_json_and_csv(tmp_path):
  skipped = [('/d/b, "odd".jpg', 'empty file (0 bytes)'),
             ('/d/a é.jpg', 'text, not an image')]
  paths = skipped_report.write_skipped_report(str(tmp_path / 'reports'), skipped)
  assert [os.path.basename(p) for p in paths] == ['skipped_files.json',
                                                  'skipped_files.csv']
  data = json.loads((tmp_path / 'reports' / 'skipped_files.json').read_text(
      encoding='utf-8'))
  assert data == {'count': 2, 'files': [
      {'path': '/d/a é.jpg', 'reason': 'text, not an image'},
      {'path': '/d/b, "odd".jpg', 'reason': 'empty file (0 bytes)'}]}
  with open(paths[1], newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  assert rows == [['path', 'reason'], ['/d/a é.jpg', 'text, not an image'],
                  ['/d/b, "odd".jpg', 'empty file (0 bytes)']]
  # A later clean run rewrites the report, so it never shows stale files.
  skipped_report.write_skipped_report(str(tmp_path / 'reports'), [])
  assert json.loads(open(paths[0]).read()) == {'count': 0, 'files': []}
  assert skipped_report.write_skipped_report('', skipped) == []


def test_conflicting_duplicates_and_warning(caplog):
  digests = ['h1', 'h1', 'h2', 'h2', 'h3', None, None]
  labels = [0, 1, 0, 0, 2, 0, 1]
  paths = ['a/x', 'b/x', 'a/y', 'a/z', 'c/w', 'a/bad', 'b/bad']
  pairs = duplicates.conflicting_duplicates(digests, labels, paths)
  # Same class twice (h2) and unreadable files (None) are not conflicts.
  assert pairs == [('a/x', 'b/x')]
  duplicates.warn_conflicting_duplicates(pairs)
  assert '1 image has the same content under two different classes' in \
      caplog.text
  assert 'a/x  ==  b/x' in caplog.text
