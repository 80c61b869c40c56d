"""The few lines that end a run: test accuracy, wall time, every output.

  Done in 1 min 05 s: test accuracy 93.3% (N=30).
  Outputs:
    results page        retrain_runs/flowers/20261206-171720/report/report.html
    SavedModel          retrain_runs/flowers/20261206-171720/saved_model
    labels              retrain_runs/flowers/20261206-171720/labels.txt
    reports             retrain_runs/flowers/20261206-171720/report/ (13 files: ...)
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
                ('labels', config.outputs.output_labels)]
  candidates += _model_files('frozen graph', config.outputs.output_graph)
  candidates += _model_files('TFLite model', config.outputs.tflite_output_file)
  candidates.append(('ONNX model', config.outputs.onnx_output_file))
  if config.outputs.checkpoint_path:
    candidates.append(('checkpoint', config.outputs.checkpoint_path + '.index'))
  if config.outputs.intermediate_store_frequency > 0:
    candidates.append(('intermediate graphs',
                       config.outputs.intermediate_output_graphs_dir))
  reports = list(result.explained.report_files) if result.explained else []
  if config.outputs.report_dir and os.path.isdir(config.outputs.report_dir):
    # Every file this run left in the report folder (each report is
    # rewritten on every run, so none describes an earlier one).
    reports += sorted(os.path.join(config.outputs.report_dir, name)
                      for name in os.listdir(config.outputs.report_dir)
                      if os.path.isfile(os.path.join(config.outputs.report_dir, name)))
  candidates += [('report', path) for path in reports]
  candidates += [('TensorBoard logs', config.outputs.summaries_dir),
                 ('bottleneck cache', config.cache.bottleneck_dir)]
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
  multi = getattr(result, 'multi_label', None)
  if multi is not None and result.test_count:
    outcome = (f'test mAP {multi.mean_ap:.3f}, exact match '
               f'{100 * multi.exact_match:.1f}% (N={result.test_count})')
  elif result.test_count and not math.isnan(result.test_accuracy):
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
  lines += [f'  {what:<{width}}  {shown(path)}' for what, path in paths]
  if os.path.isdir(config.outputs.summaries_dir):
    lines.append(f'See training curves with: tensorboard --logdir '
                 f'{shown(config.outputs.summaries_dir)}')
  return lines + mobile_hint(config.outputs.tflite_output_file)


# A TFLite model above this size gets the small-model hint.
LARGE_TFLITE_MB = 10.0
# Measured on the held-out test split of each data set (docs/deploy.md,
# "A small model for phones"): sign_language_digits (N=210) and
# flowers_sample (N=51), default ensemble float TFLite 50.2 MB: 97.6 % and
# 90.2 %; efficientnet_lite0 int8 4.0 MB: 95.2 % and 88.2 %; dynamic
# 3.7 MB: 97.1 % and 88.2 %.
SMALL_MODEL_HINT = (
    'For a small model for phones add --tfhub_module efficientnet_lite0 '
    'and --tflite_quantization int8 (4.0 MB; test accuracy 95.2 % on '
    'sign_language_digits and 88.2 % on flowers_sample, against 97.6 % and '
    '90.2 % for the 50 MB default ensemble) or dynamic (3.7 MB, 97.1 % and '
    '88.2 %, slower on x86 CPUs); see docs/deploy.md.')


def mobile_hint(tflite_path: str) -> List[str]:
  """The small-model hint, when a TFLite model above LARGE_TFLITE_MB was
  written to `tflite_path`."""
  if not tflite_path or not os.path.isfile(tflite_path):
    return []
  size = os.path.getsize(tflite_path) / 1e6
  if size <= LARGE_TFLITE_MB:
    return []
  return [f'The TFLite model is {size:.0f} MB. {SMALL_MODEL_HINT}']


def shown(path: str) -> str:
  """`path` relative to the working folder when it lies inside it (a run
  folder under ./retrain_runs), else as it is."""
  if not os.path.isabs(path):
    return path
  relative = os.path.relpath(path)
  return path if relative.startswith(os.pardir) else relative


def log_summary(config, result) -> None:
  """Logs summary_lines at INFO as one block."""
  logging.info('%s', '\n'.join(summary_lines(config, result)))
