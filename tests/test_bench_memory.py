"""bench/memory.py's per-phase peaks from a timeline and a run's log."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _memory_bench():
  spec = importlib.util.spec_from_file_location(
      'bench_memory', os.path.join(ROOT, 'bench', 'memory.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_phase_peaks_split_the_timeline_at_the_export_lines(tmp_path):
  timeline = tmp_path / 'tl.txt'
  timeline.write_text(''.join(f'10:00:{s:02d}.0 {mb} ({mb})\n' for s, mb in [
      (1, 900), (2, 1000), (3, 1800), (4, 1200), (5, 2500), (6, 1500),
      (7, 1600), (8, 1100)]))
  log = tmp_path / 'run.log'
  log.write_text(
      'I1206 10:00:02.500000 1 run.py:1] Fine-tuning: test accuracy 90%\n'
      'W1206 10:00:03.000000 1 x.py:1] a warning\n'
      'I1206 10:00:04.000000 1 formats.py:1] Wrote the frozen graph g.pb\n'
      'I1206 10:00:06.000000 1 formats.py:2] Wrote the TFLite model m\n'
      'I1206 10:00:08.000000 1 outputs.py:3] Exported the classifier to s\n')
  peaks = _memory_bench().phase_peaks(str(timeline), str(log))
  assert peaks == [('before the exports', 1000.0), ('frozen graph', 1800.0),
                   ('TFLite', 2500.0), ('SavedModel', 1600.0)]
