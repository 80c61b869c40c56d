"""Outputs appear whole or not at all; leftovers of killed runs heal."""

import os
import subprocess
import sys
import time

import pytest

from bottleneck_cache import temporaries
from retrain.common import leftovers


def _dead_pid():
  out = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                       capture_output=True, text=True, check=True)
  return int(out.stdout)


def test_heal_removes_dead_runs_temporaries_only(tmp_path, caplog):
  caplog.set_level('INFO')
  export = tmp_path / 'saved_model'
  here = temporaries.hostname()
  dead = tmp_path / f'saved_model.tmp-{_dead_pid()}@{here}~a'
  (dead / 'variables').mkdir(parents=True)
  (dead / 'saved_model.pb').write_bytes(b'x' * 1000)
  live = tmp_path / f'saved_model.tmp-{os.getpid()}@{here}~b'
  live.mkdir()
  other_host = tmp_path / 'saved_model.tmp-1@elsewhere~c'
  other_host.mkdir()
  legacy = tmp_path / 'output_graph.pb.tmp-12345'  # the old PID-only name
  legacy.write_bytes(b'x')
  old = time.time() - 2 * temporaries.STALE_AFTER_SECONDS
  os.utime(legacy, (old, old))
  report = tmp_path / 'report'
  report.mkdir()
  half = report / f'metrics.json.tmp-{_dead_pid()}@{here}~d'
  half.write_text('{')
  (report / 'metrics.json').write_text('{}')
  removed = leftovers.heal([str(export), str(tmp_path / 'output_graph.pb'),
                            str(report), ''])
  assert sorted(removed) == sorted([str(dead), str(legacy), str(half)])
  assert not dead.exists() and not legacy.exists()
  assert live.exists() and other_host.exists()
  assert sorted(os.listdir(report)) == ['metrics.json']
  assert 'Removed 1 unfinished output' in caplog.text


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
  target = tmp_path / 'labels.txt'
  target.write_text('old\n')

  class Boom(Exception):
    pass

  with pytest.raises(Boom):
    with leftovers.temporary_for(str(target)) as tmp:
      with open(tmp, 'w') as f:
        f.write('half')
      raise Boom()
  assert os.listdir(tmp_path) == ['labels.txt']
  assert target.read_text() == 'old\n'


def test_failed_saved_model_export_leaves_no_temporary(tmp_path, fake_module,
                                                       monkeypatch):
  import numpy as np
  import tensorflow as tf

  from retrain.export import saved_model
  from retrain.features import modules
  from retrain.head.train import Head
  module = modules.load_module(fake_module)
  head = Head(np.zeros((6, 2), np.float32), np.zeros(2, np.float32))

  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(tf.saved_model, 'save', full)
  with pytest.raises(OSError, match='No space'):
    saved_model.export_saved_model(str(tmp_path / 'sm'), module, head,
                                   ['a', 'b'], 'final_result')
  assert os.listdir(tmp_path) == []
