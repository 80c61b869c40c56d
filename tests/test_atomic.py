"""Atomic writes: whole files with one mode, nothing left on failure."""

import json
import os
import stat

import pytest

from retrain.common import atomic


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_whole_files_with_the_mode_open_gives(tmp_path):
  old = os.umask(0o022)
  try:
    text = atomic.write_text(str(tmp_path / 'sub' / 'a.txt'), 'é\r\nb\n')
    data = atomic.write_json(str(tmp_path / 'b.json'), {'x': [1, 2]})
  finally:
    os.umask(old)
  assert open(text, 'rb').read() == 'é\r\nb\n'.encode('utf-8')
  assert json.load(open(data)) == {'x': [1, 2]}
  assert _mode(text) == _mode(data) == 0o644
  assert sorted(os.listdir(tmp_path)) == ['b.json', 'sub']


def test_umask_is_respected(tmp_path):
  old = os.umask(0o077)
  try:
    path = atomic.write_bytes(str(tmp_path / 'c'), b'1')
  finally:
    os.umask(old)
  assert _mode(path) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'report.csv')
  atomic.write_text(path, 'old\n')
  with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
    with open(tmp, 'w') as f:
      f.write('half')
    raise RuntimeError('killed')
  assert open(path).read() == 'old\n'
  assert os.listdir(tmp_path) == ['report.csv']
