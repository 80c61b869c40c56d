"""The few lines that end a run: test accuracy, wall time, every output.

  Done in 1 min 05 s: test accuracy 93.3% (N=30).
  Outputs:
    results page        /tmp/retrain_report/report.html
    SavedModel          /tmp/retrain_saved_model
    labels              /tmp/output_labels.txt
    frozen graph        /tmp/output_graph.pb
    reports             /tmp/retrain_report/ (15 files: misclassified_test.csv, ...)
    ...

Printed once by each entry point (`python -m retrain`, `retrain.run`) after
`pipeline.run` returns, so the last thing a user reads says where to look.
It sits beside the pipeline, after every step, because it names the outputs
of all of them (it loads TensorFlow with the export formats).
"""

from __future__ import annotations

import math
import os
from typing import List, Tuple

from absl import logging

from retrain.common.progress import format_duration
from retrain.export.formats import sidecar_paths


def _model_files(what: str, path: str) -> List[Tuple[str, str]]:
  """The model file and the side files named after it."""
  if not path:
    return []
  return [(what, path)] + [(f'{what} {kind}', side)
                           for kind, side in sidecar_paths(path).items()]


def output_paths(config, result) -> List[Tuple[str, str]]:
  """(what, path) of every output of the run that exists, in a fixed order.

  Args:
    config: the run's retrain.config.Config.
    result: the retrain.pipeline.RunResult it returned.
  """
  candidates = [('SavedModel', result.saved_model_dir or ''),
                ('labels', config.output_labels)]
  candidates += _model_files('frozen graph', config.output_graph)
  candidates += _model_files('TFLite model', config.tflite_output_file)
  candidates.append(('ONNX model', config.onnx_output_file))  # Issue 19.
  if config.checkpoint_path:
    candidates.append(('checkpoint', config.checkpoint_path + '.index'))
  if config.intermediate_store_frequency > 0:
    candidates.append(('intermediate graphs',
                       config.intermediate_output_graphs_dir))
  reports = list(result.explained.report_files) if result.explained else []
  if config.report_dir and os.path.isdir(config.report_dir):
    # Every file this run left in the report folder (each report is
    # rewritten on every run, so none describes an earlier one).
    reports += sorted(os.path.join(config.report_dir, name)
                      for name in os.listdir(config.report_dir)
                      if os.path.isfile(os.path.join(config.report_dir, name)))
  candidates += [('report', path) for path in reports]
  candidates += [('TensorBoard logs', config.summaries_dir),
                 ('bottleneck cache', config.bottleneck_dir)]
  seen, found = set(), []
  for what, path in candidates:
    if path and os.path.exists(path) and os.path.abspath(path) not in seen:
      seen.add(os.path.abspath(path))
      found.append((what, path))
  return found


def _group_reports(paths: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
  """The report files as one line per folder: 'dir/ (n files: a, b)'."""
  folders = {}
  for what, path in paths:
    if what == 'report':
      folders.setdefault(os.path.dirname(path), []).append(
          os.path.basename(path))
  grouped, shown = [], set()
  for what, path in paths:
    if what != 'report':
      grouped.append((what, path))
      continue
    folder = os.path.dirname(path)
    if folder not in shown:
      shown.add(folder)
      names = sorted(folders[folder])
      grouped.append(('reports', f'{os.path.join(folder, "")} '
                      f'({len(names)} files: {", ".join(names)})'))
  return grouped


def summary_lines(config, result) -> List[str]:
  """The closing lines of a run; see the module docstring."""
  seconds = result.timings.get('total', 0.0)
  if result.test_count and not math.isnan(result.test_accuracy):
    outcome = (f'test accuracy {100 * result.test_accuracy:.1f}% '
               f'(N={result.test_count})')
  else:
    outcome = 'no test images, so no test accuracy'
  lines = [f'Done in {format_duration(seconds)}: {outcome}.', 'Outputs:']
  paths = _group_reports(output_paths(config, result))
  page = getattr(result, 'results_page', None)
  if page and os.path.isfile(page):  # The one file to open first.
    paths.insert(0, ('results page', page))
  width = max([len(what) for what, _ in paths] + [0])
  lines += [f'  {what:<{width}}  {path}' for what, path in paths]
  if os.path.isdir(config.summaries_dir):
    lines.append(f'See training curves with: tensorboard --logdir '
                 f'{config.summaries_dir}')
  return lines


def log_summary(config, result) -> None:
  """Logs summary_lines at INFO as one block."""
  logging.info('%s', '\n'.join(summary_lines(config, result)))
