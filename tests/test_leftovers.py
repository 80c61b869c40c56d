"""Outputs appear whole or not at all; leftovers of killed runs heal."""

import os
import subprocess
import sys
import time

import pytest

from bottleneck_cache import temporaries
from retrain.common import atomic, leftovers


def _dead_pid():
  out = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                       capture_output=True, text=True, check=True)
  return int(out.stdout)


def test_temporary_names_say_who_owns_them(tmp_path):
  name = os.path.basename(atomic.temporary_name(str(tmp_path / 'x.txt')))
  pid, host = temporaries.parse_owner(name[len(atomic.TMP_PREFIX):])
  assert (pid, host) == (os.getpid(), temporaries.hostname())
  assert name.endswith('-x.txt')


def test_heal_removes_dead_runs_temporaries_only(tmp_path, caplog):
  caplog.set_level('INFO', logger='absl')
  here = temporaries.hostname()
  dead = tmp_path / f'.tmp-{_dead_pid()}@{here}~a-saved_model'
  (dead / 'variables').mkdir(parents=True)
  (dead / 'saved_model.pb').write_bytes(b'x' * 1000)
  live = tmp_path / f'.tmp-{os.getpid()}@{here}~b-saved_model'
  live.mkdir()
  other_host = tmp_path / '.tmp-1@elsewhere~c-output_graph.pb'
  other_host.write_bytes(b'x')
  old_other_host = tmp_path / '.tmp-1@elsewhere~d-output_graph.pb'
  old_other_host.write_bytes(b'x')
  # Not ours (no owner tag): left alone however old, as in a shared /tmp.
  foreign = tmp_path / '.tmp-something-else'
  foreign.write_bytes(b'x')
  old = time.time() - 2 * temporaries.STALE_AFTER_SECONDS
  for path in (old_other_host, foreign):
    os.utime(path, (old, old))
  report = tmp_path / 'report'
  report.mkdir()
  half = report / f'.tmp-{_dead_pid()}@{here}~e-test_metrics.json'
  half.write_text('{')
  (report / 'test_metrics.json').write_text('{}')
  removed = leftovers.heal([str(tmp_path / 'saved_model'),
                            str(tmp_path / 'output_graph.pb'), str(report),
                            ''])
  assert sorted(removed) == sorted([str(dead), str(old_other_host),
                                    str(half)])
  assert live.exists() and other_host.exists() and foreign.exists()
  assert sorted(os.listdir(report)) == ['test_metrics.json']
  assert 'unfinished output' in caplog.text


def test_failed_folder_output_leaves_no_temporary(tmp_path):
  target = tmp_path / 'export'

  class Boom(Exception):
    pass

  with pytest.raises(Boom):
    with leftovers.temporary_for(str(target)) as tmp:
      os.makedirs(os.path.join(tmp, 'variables'))
      raise Boom()
  assert os.listdir(tmp_path) == []


def test_failed_saved_model_export_leaves_no_temporary(tmp_path, fake_module,
                                                       monkeypatch):
  import numpy as np
  import tensorflow as tf

  from retrain.export import saved_model
  from retrain.features import modules
  from retrain.head.model import Head
  module = modules.load_module(fake_module)
  head = Head(np.zeros((6, 2), np.float32), np.zeros(2, np.float32))

  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(tf.saved_model, 'save', full)
  with pytest.raises(OSError, match='No space'):
    saved_model.export_saved_model(str(tmp_path / 'sm'), module, head,
                                   ['a', 'b'], 'final_result')
  assert os.listdir(tmp_path) == []
