"""A run over a folder of everything that once broke a run: exit 0, no hang,
every good photo used, every bad file reported once with its reason."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import shrunk_config
from tests.hostile_corpus import make_hostile_folder

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_hostile_folder_run_completes(tmp_path, fake_module):
  good, bad = make_hostile_folder(tmp_path / 'images')
  config = shrunk_config(tmp_path / 'images', tmp_path / 'out', fake_module,
                         how_many_training_steps=50)
  args = ['--image_dir', config.data.image_dir, '--tfhub_module',
          config.module.tfhub_module, '--bottleneck_dir', config.cache.bottleneck_dir,
          '--summaries_dir', config.outputs.summaries_dir, '--report_dir',
          config.outputs.report_dir, '--output_labels', config.outputs.output_labels,
          '--saved_model_dir', config.outputs.saved_model_dir, '--output_graph', '',
          '--how_many_training_steps', '50', '--learning_rate', '0.5',
          '--projector_max_images', '0']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-m', 'retrain', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / 'out' / 'report' /
                        'run_summary.json').read_text())
  assert sum(summary['counts'].values()) == len(good)
  assert summary['labels'] == ['blue', 'green', 'red']
  skipped = json.loads((tmp_path / 'out' / 'report' /
                        'skipped_files.json').read_text())['files']
  paths = [f['path'] for f in skipped]
  assert sorted(paths) == sorted(bad), 'each bad file exactly once'
  for entry in skipped:
    assert bad[entry['path']] in entry['reason'], entry
  leakage = json.loads((tmp_path / 'out' / 'report' /
                        'leakage.json').read_text())
  assert leakage['count'] == 0
