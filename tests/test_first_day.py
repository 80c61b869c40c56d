"""The small things a first day meets: plurals, what the cache did, hints,
--help, summaries, the result's repr."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from retrain.common.names import plural
from tests.conftest import make_colour_dataset, shrunk_config, write_image

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_plural():
  assert plural(1, 'image') == '1 image'
  assert plural(0, 'image') == '0 images'
  assert plural(3, 'class') == '3 classes'
  assert plural(1, 'class') == '1 class'
  assert plural(2, 'copy') == '2 copies'


def test_copies_are_named_where_the_counts_differ():
  from retrain.bottlenecks import compute
  assert compute.copies_note(0) == ''
  assert compute.copies_note(3) == ('; 3 images are copies (same bytes) of '
                                    'others, computed once')
  assert compute.copies_note(1).startswith('; 1 image is a copy ')


def test_a_warm_run_says_it_read_the_cache(caplog):
  import bottleneck_cache
  from retrain.steps import vectors
  caplog.set_level(logging.INFO, logger='absl')
  vectors.log_bottlenecks(bottleneck_cache.Stats(requested=1500,
                                                  reused=1500), 0,
                           '/cache', modules=3)
  vectors.log_bottlenecks(bottleneck_cache.Stats(requested=10, reused=4,
                                                  computed=5), 1, '/cache')
  assert caplog.messages == [
      'Bottlenecks of 3 modules: all 1500 vectors read from the cache in '
      '/cache, none computed; 0 images skipped.',
      'Bottlenecks: 4 vectors read from the cache, 5 computed; 1 image '
      'skipped.']


def test_duplicates_are_named_when_bottlenecks_are_computed(tmp_path, caplog,
                                                            fake_module):
  from retrain.steps import prepare, vectors
  images = make_colour_dataset(tmp_path / 'images', per_class=4)
  for k in range(3):  # three byte-identical copies
    (images / 'red' / f'copy_{k}.jpg').write_bytes(
        (images / 'red' / 'img_0.jpg').read_bytes())
  config = shrunk_config(images, tmp_path / 'out', fake_module)
  caplog.set_level(logging.INFO, logger='absl')
  from retrain.features import ensemble as ensemble_lib
  from retrain.features import tflite_runtime
  layout, _ = prepare.discover(config)
  module = ensemble_lib.load(config.module.tfhub_module, None, '')
  runner = tflite_runtime.deferred(module, 'tf', '')
  vectors.bottlenecks(config, layout.dataset, module, runner)
  text = '\n'.join(caplog.messages)
  assert 'Found 15 images in 3 classes' in text
  assert ('Computing bottlenecks for 12 images (0 found in the cache '
          f'{config.cache.bottleneck_dir}') in text
  assert '3 images are copies (same bytes) of others, computed once' in text
  assert 'Bottlenecks: 0 vectors read from the cache, 12 computed' in text


def test_photos_with_voc_boxes_suggest_crop_to_boxes(tmp_path):
  from retrain.data import discover
  from retrain.errors import DatasetError
  for k in range(2):
    write_image(tmp_path / f'p{k}.jpg', (200, 0, 0))
    (tmp_path / f'p{k}.xml').write_text('<annotation></annotation>')
  with pytest.raises(DatasetError) as raised:
    discover.discover_images(str(tmp_path))
  worded = raised.value.worded(lambda f: '--' + f)
  assert worded.startswith('No class folders in ')
  assert 'VOC XML box files' in worded and '--crop_to_boxes' in worded
  # A VOC tree (Annotations/ beside JPEGImages/) says so too.
  voc = tmp_path / 'voc'
  write_image(voc / 'JPEGImages' / 'a.jpg', (0, 0, 200))
  (voc / 'Annotations').mkdir()
  (voc / 'Annotations' / 'a.xml').write_text('<annotation></annotation>')
  with pytest.raises(DatasetError, match='crop_to_boxes'):
    discover.discover_images(str(voc))
  # Plain class folders: no such hint.
  assert discover.boxes_hint(str(tmp_path / 'voc' / 'JPEGImages'), []) == (
      '', ())


def test_label_image_summary_counts_labels_unknown_and_failures():
  from tools import label_image as li
  records = [li.Record('a', [('roses', 0.9)]), li.Record('b', [('daisy', 0.8)]),
             li.Record('c', [('roses', 0.7)]),
             li.Record('d', [('roses', 0.3)], unknown=True),
             li.Record('e', error='not an image')]
  assert li.summarize(records) == ('Predictions for 5 images: roses 2, daisy '
                                   '1, unknown 1; 1 could not be classified.')
  assert li.summarize(records[:1]) == ('Predictions for 1 image: roses 1, '
                                       'unknown 0.')


def test_result_repr_is_short_and_html_is_a_table():
  import bottleneck_cache
  from retrain import pipeline
  result = pipeline.RunResult(
      labels=['daisy', 'roses'], counts={'train': 80, 'validation': 10,
                                         'test': 10},
      test_accuracy=0.9, test_count=10,
      bottleneck_stats=bottleneck_cache.Stats(), skipped=[],
      history=[object()] * 1000, misclassified=['x'] * 1000,
      saved_model_dir='/r/saved_model', timings={'total': 12.0},
      run_dir='/r')
  assert repr(result) == (
      "RunResult(test_accuracy=90.0% (N=10), classes=2, images=100, "
      "run_dir='/r', saved_model_dir='/r/saved_model')")
  page = result._repr_html_()
  assert page.startswith('<table>') and '90.0% (N=10)' in page
  assert len(page) < 1000


def test_a_large_tflite_model_gets_the_small_model_hint(tmp_path):
  from retrain import summary
  big, small = tmp_path / 'big.tflite', tmp_path / 'small.tflite'
  big.write_bytes(b'0' * 12_000_000)
  small.write_bytes(b'0' * 4_000_000)
  hint = summary.mobile_hint(str(big))
  assert len(hint) == 1 and hint[0].startswith('The TFLite model is 12 MB. ')
  assert '--tfhub_module efficientnet_lite0' in hint[0]
  assert '--tflite_quantization int8 (4.0 MB' in hint[0]
  assert summary.mobile_hint(str(small)) == []
  assert summary.mobile_hint('') == []


def _python(args, **kw):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, *args], capture_output=True,
                        text=True, env=env, timeout=600, **kw)


@pytest.mark.slow
def test_help_opens_with_the_flags_most_runs_need():
  shown = _python(['-m', 'retrain', '--help'], cwd=ROOT)
  assert shown.returncode == 0, shown.stderr[-2000:]
  lines = shown.stdout.splitlines()
  first = lines.index('Flags most runs need:')
  assert lines[first + 1].startswith('  --image_dir: ')
  flags = [line.split(':')[0].strip() for line in lines[first + 1:]
           if line.startswith('  --')]
  rest = flags.index('--bottleneck_batch_size')
  assert 10 <= rest <= 15  # about a dozen first, then the rest
  assert 'All other flags' in shown.stdout
  assert str(ROOT) not in shown.stdout  # no absolute module path
  # Every flag is in the help itself: a pip-installed user has no docs/.
  from retrain.common import settings
  from retrain.config import GROUPS
  for group in GROUPS.values():
    for field in settings.declared(group):
      assert f'--{settings.flag_name(field)}:' in shown.stdout or (
          f'--[no]{settings.flag_name(field)}:' in shown.stdout), field.name
  assert 'docs/flags.md' not in shown.stdout


@pytest.mark.slow
def test_notebook_run_prints_tensorflow_lines_once_at_most(tmp_path,
                                                           fake_module):
  images = make_colour_dataset(tmp_path / 'images', per_class=6)
  script = textwrap.dedent(f'''
      import retrain
      r = retrain.run(image_dir={str(images)!r}, tfhub_module={fake_module!r},
                      bottleneck_dir={str(tmp_path / 'bn')!r},
                      projector_max_images=0)
      ''')
  # An interactive interpreter, as a notebook is to TensorFlow.
  proc = subprocess.run([sys.executable, '-i'], input=script,
                        capture_output=True, text=True, cwd=tmp_path,
                        env=dict(os.environ, PYTHONPATH=str(ROOT),
                                 TF_CPP_MIN_LOG_LEVEL='2'), timeout=600)
  assert 'Done in ' in proc.stderr, proc.stderr[-3000:]
  assert 'Assets written' not in proc.stdout + proc.stderr
