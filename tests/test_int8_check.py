"""The check of an int8 run's exports: each member's translation checked
once per int8 model (recorded in the module cache), the SavedModel's head
compared with the trained one on every run."""

import json
import logging
import os

import numpy as np
import pytest

from retrain.common import names
from retrain.export import from_disk, int8_check, int8_graph
from retrain.export import saved_model as export_lib
from retrain.features import int8
from retrain.head.model import Head
from retrain.steps import outputs
from tests.conftest import make_colour_dataset
from tests.test_int8_export import conv_module  # noqa: F401 the fixture


@pytest.fixture
def quantized(conv_module):  # noqa: F811 the fixture imported above
  return int8.load(conv_module)


@pytest.fixture
def measured(monkeypatch):
  """Counts the comparisons of a translation with its int8 model."""
  calls = []
  measure = int8_check._measure  # noqa: SLF001 counted, not replaced

  def counting(*args):
    calls.append(args[1])
    return measure(*args)

  monkeypatch.setattr(int8_check, '_measure', counting)
  return calls


def test_translation_is_checked_once_and_the_record_reused(
    conv_module, quantized, measured):  # noqa: F811
  path = int8.int8_file(conv_module)
  exported, served = int8_graph.export_module(quantized, conv_module)
  assert served is None and isinstance(exported.obj, int8_graph.Int8Graph)
  assert measured == [path]
  first = int8_graph.translation_checks(exported)
  assert len(first) == 1 and first[0]['handle'] == conv_module.handle
  assert first[0]['measured'] and first[0]['matches']
  assert first[0]['probe_images'] == int8_check.PROBE_COUNT
  assert first[0]['int8_model'] == os.path.basename(path)
  # A rounding step here and there at most (tests/test_int8_export.py).
  assert 0 <= first[0]['max_output_steps'] <= 1.01
  record = json.loads(open(int8_check.record_path(path),
                           encoding='utf-8').read())
  assert record['model_size'] == os.path.getsize(path)
  assert record['max_output_steps'] == first[0]['max_output_steps']
  # Another run: the record is read, the comparison is not run again.
  again, _ = int8_graph.export_module(quantized, conv_module)
  assert measured == [path]
  second = int8_graph.translation_checks(again)
  assert not second[0]['measured']
  assert ({k: v for k, v in second[0].items() if k != 'measured'} ==
          {k: v for k, v in first[0].items() if k != 'measured'})


@pytest.mark.parametrize('damage', [
    'truncated', 'not json', 'too long', 'other model', 'other translation',
    'negative', 'a list'])
def test_a_damaged_or_foreign_record_is_measured_again(
    conv_module, quantized, measured, damage):  # noqa: F811
  path = int8.int8_file(conv_module)
  int8_graph.export_module(quantized, conv_module)
  record_path = int8_check.record_path(path)
  text = open(record_path, encoding='utf-8').read()
  record = json.loads(text)
  if damage == 'truncated':
    text = text[:len(text) // 2]
  elif damage == 'not json':
    text = '\x00\xff garbage'
  elif damage == 'too long':
    text = text[:-2] + ' ' * int8_check.MAX_RECORD_BYTES + text[-2:]
  elif damage == 'a list':
    text = json.dumps([record])
  else:
    key, value = {'other model': ('model_sha256', '0' * 64),
                  'other translation': ('translation', 'f' * 64),
                  'negative': ('max_output_steps', -1.0)}[damage]
    text = json.dumps({**record, key: value})
  with open(record_path, 'w', encoding='utf-8') as f:
    f.write(text)
  exported, served = int8_graph.export_module(quantized, conv_module)
  assert served is None
  assert measured == [path, path]
  check = int8_graph.translation_checks(exported)[0]
  assert check['measured'] and check['matches']
  # Measured again and recorded anew.
  assert json.loads(open(record_path, encoding='utf-8').read()) == record


def test_a_translation_that_differs_falls_back_to_float_with_one_line(
    conv_module, quantized, measured, monkeypatch, caplog):  # noqa: F811
  # A translation 3 output steps off: the graph's last requantisation
  # (the MEAN before the DEQUANTIZE) shifted.
  mean = int8_graph._TRANSLATORS['MEAN']  # noqa: SLF001

  def shifted(graph, op, values):
    return mean(graph, op, values) + 3.0

  monkeypatch.setitem(int8_graph._TRANSLATORS, 'MEAN', shifted)  # noqa: SLF001
  path = int8.int8_file(conv_module)
  for _ in range(2):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      exported, served = int8_graph.export_module(quantized, conv_module)
    assert exported is conv_module and served is conv_module
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.WARNING]
    assert len(lines) == 1
    assert 'compute float features for' in lines[0]
    assert 'differ by up to 3 output steps' in lines[0]
    assert int8_check.record_path(path) in lines[0]
  # The second time from the record.
  assert measured == [path]
  assert not int8_graph.translation_checks(exported)


def _novelty_arrays(rng, dim, classes):
  return {'centre': rng.normal(0, 1, dim).astype(np.float32),
          'basis': rng.normal(0, 1, (dim, 2)).astype(np.float32),
          'rest': np.float32(0.5), 'scale': np.float32(2.0),
          'cross': rng.normal(0, 1, (dim, classes)).astype(np.float32),
          'offset': rng.normal(0, 1, classes).astype(np.float32)}


def test_each_run_checks_the_saved_head_without_loading_the_model(
    tmp_path, conv_module, quantized, monkeypatch, caplog):  # noqa: F811
  import tensorflow as tf
  exported, _ = int8_graph.export_module(quantized, conv_module)
  rng = np.random.default_rng(0)
  arrays = _novelty_arrays(rng, 8, 3)
  head = Head(rng.normal(0, 3, (8, 3)).astype(np.float32),
              rng.normal(0, 1, 3).astype(np.float32),
              novelty=from_disk.SavedNovelty({'kind': 'test'}, arrays))
  saved = export_lib.export_saved_model(
      str(tmp_path / 'saved'), exported, head, ['a', 'b', 'c'],
      'final_result', extra_metadata={names.META_NOVELTY: {'kind': 'test'}})
  # The SavedModel computes the head on the int8 model's vectors.
  images = make_colour_dataset(tmp_path / 'photos', per_class=2)
  paths = sorted(str(p) for p in images.rglob('*.jpg'))
  from retrain import images as images_lib
  decoded = np.stack([images_lib.load_image(p, (16, 16)).numpy()
                      for p in paths])
  served = tf.saved_model.load(saved).signatures['serving_default'](
      images=tf.constant(decoded))['probabilities'].numpy()
  want = head.probabilities(quantized.call(decoded).numpy())
  assert np.abs(served - want).max() <= 1e-3

  def no_load(*args, **kwargs):
    raise AssertionError('the check loaded the SavedModel')

  monkeypatch.setattr(tf.saved_model, 'load', no_load)
  checks = int8_graph.translation_checks(exported)
  check = outputs.check_int8_exports(saved, checks, head)
  assert check['head_in_saved_model'] and check['max_head_difference'] == 0
  assert check['members'] == int8_graph.translation_checks(exported)
  json.dumps(check)  # fit for run_summary.json
  # A head other than the one written is reported, with a warning.
  other = Head(head.weights + 0.25, head.biases, novelty=head.novelty)
  with caplog.at_level(logging.WARNING):
    check = outputs.check_int8_exports(saved, checks, other)
  assert not check['head_in_saved_model']
  assert check['max_head_difference'] == pytest.approx(0.25)
  assert any('does not hold the trained head' in r.getMessage()
             for r in caplog.records)
  moved = {**arrays, 'offset': arrays['offset'] + 1}
  check = outputs.check_int8_exports(saved, checks, Head(
      head.weights, head.biases, novelty=from_disk.SavedNovelty({}, moved)))
  assert check['max_head_difference'] == pytest.approx(1)
  # The written export's Head, as the int8 TFLite export reads it.
  module, saved_head, _ = from_disk.open_export(saved)
  read = module.saved_head(saved_head)
  np.testing.assert_array_equal(read.weights, head.weights)
  np.testing.assert_array_equal(read.biases, head.biases)
  assert read.novelty.metadata() == {'kind': 'test'}
  assert set(read.novelty.graph_arrays()) == set(arrays)
  for name, value in arrays.items():
    np.testing.assert_array_equal(read.novelty.graph_arrays()[name], value)
