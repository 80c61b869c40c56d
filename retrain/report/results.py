"""The results page of a classifier on a labelled set: `report.json` and a
self-contained `report.html` (retrain/report/page.py draws it).

`build` turns the predictions on a set (the test set of a run, or any
labelled folder `retrain.evaluate` is pointed at) into the report dict
(docs/results-page.md lists its keys); `write` adds the pictures (the
confusion matrix's photos, heat maps of the worst mistakes and the least
confident right answers, the training curve and any optional figures in
`<report_dir>/extra_figures.json`) and writes both files atomically.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import logging

from retrain.common import atomic
from retrain.common import html as html_lib
from retrain.report import confidence
from retrain.report import metrics as metrics_lib
from retrain.report import page as page_lib

REPORT_HTML = 'report.html'
REPORT_JSON = 'report.json'
# Optional figures another step leaves in report_dir: {"reliability": ...,
# "novelty": ...} (docs/results-page.md); a section shows when its key does.
EXTRA_FIGURES_FILE = 'extra_figures.json'
SCHEMA_VERSION = 1
# Photos with heat maps: up to page_lib.GRID_PHOTOS worst mistakes, then
# the least confident right answers up to HEAT_MAPS in all (at least
# HEAT_MAPS - GRID_PHOTOS of them). The heat maps are most of the page's
# cost (bench/results_page.py).
HEAT_MAPS = 12
THUMB_SIDE = 96
HEAT_SIDE = 176


def _example(files, labels, truth, probs, k) -> dict:
  pred = int(probs[k].argmax())
  return {'file': files[k], 'truth': labels[truth[k]],
          'predicted': labels[pred], 'probability': float(probs[k, pred])}


def build(labels: Sequence[str], truth_labels: Sequence[str],
          probabilities: np.ndarray, files: Sequence[str],
          threshold: float = 0.0, **about) -> dict:
  """The report dict of predictions on a labelled set.

  Args:
    labels: the model's class names; column j of probabilities is labels[j].
    truth_labels: [n] the true class name of each photo; a name not in
      `labels` is a class the model does not know: counted under
      'not_in_model' (with what it was taken for), not in the accuracy.
    probabilities: float32 [n, N].
    files: [n] the photo of each row.
    threshold: the export's rejection threshold in [0, 1] (0: none); with
      one, 'unknown' counts the photos below it.
    **about: added as they are (title, set, validation, model, seconds,
      history, settings, heat_maps).
  """
  probs = np.asarray(probabilities, np.float32).reshape(len(files), -1)
  index = {name: i for i, name in enumerate(labels)}
  known = np.array([name in index for name in truth_labels], bool)
  rows = np.flatnonzero(known)
  truth = np.array([index.get(name, -1) for name in truth_labels], np.int64)
  pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
  m = metrics_lib.compute_metrics(truth[rows], pred[rows], labels)
  correct = int(np.sum(truth[rows] == pred[rows]))
  low, high = confidence.wilson_interval(correct, len(rows))
  strangers: Dict[str, Dict[str, int]] = {}
  for k in np.flatnonzero(~known):
    counts = strangers.setdefault(truth_labels[k], {})
    counts[labels[pred[k]]] = counts.get(labels[pred[k]], 0) + 1
  wrong = [int(k) for k in rows if pred[k] != truth[k]]
  right = [int(k) for k in rows if pred[k] == truth[k]]
  wrong.sort(key=lambda k: -probs[k, pred[k]])
  right.sort(key=lambda k: probs[k, pred[k]])
  report = {
      'schema_version': SCHEMA_VERSION, 'labels': list(labels),
      'count': int(len(rows)), 'correct': correct,
      'accuracy': correct / len(rows) if len(rows) else None,
      'accuracy_interval_95': [low, high] if len(rows) else None,
      'per_class': m.to_json(), 'confusion': m.confusion.tolist(),
      'not_in_model': strangers,
      'unknown': _unknown(probs, known, truth, pred, threshold),
      'mistakes': [_example(files, labels, truth, probs, k) for k in wrong],
      'least_confident_right': [
          _example(files, labels, truth, probs, k)
          for k in right[:HEAT_MAPS - min(len(wrong), page_lib.GRID_PHOTOS)]],
      'cells': {f'{i},{j}': [files[k] for k in _cell(rows, truth, pred,
                                                     probs, i, j)]
                for i in range(len(labels)) for j in range(len(labels))
                if m.confusion[i, j]},
  }
  report.update(about)
  return report


def _cell(rows, truth, pred, probs, i, j) -> List[int]:
  """Rows of cell (true i, predicted j), most confident first."""
  chosen = [int(k) for k in rows if truth[k] == i and pred[k] == j]
  return sorted(chosen, key=lambda k: -probs[k, j])


def _unknown(probs, known, truth, pred, threshold) -> Optional[dict]:
  """Photos below the rejection threshold: of the known classes (and the
  accuracy of the rest) and of the classes the model does not know."""
  if not threshold:
    return None
  below = probs.max(axis=1) < threshold if len(probs) else np.zeros(0, bool)
  kept = known & ~below
  return {'threshold': float(threshold),
          'known_classes': {'count': int(known.sum()),
                            'unknown': int((known & below).sum()),
                            'accuracy_of_the_rest': (
                                float(np.mean(truth[kept] == pred[kept]))
                                if kept.any() else None)},
          'not_in_model': {'count': int((~known).sum()),
                           'unknown': int((~known & below).sum())}}


def read_extra_figures(report_dir: str) -> dict:
  """<report_dir>/extra_figures.json, or {} when absent or unreadable (a
  warning says which)."""
  path = os.path.join(report_dir, EXTRA_FIGURES_FILE)
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding='utf-8') as f:
      extra = json.load(f)
    if not isinstance(extra, dict):
      raise ValueError('not a JSON object')
    return extra
  except (OSError, ValueError) as e:
    logging.warning('Leaving the optional figures out of the results page: '
                    '%s cannot be read (%s).', path, e)
    return {}


def _decode(paths: Sequence[str], size) -> list:
  """float32 [H, W, 3] in [0, 1] of each file, or None where it fails;
  decoded on a thread per core."""
  import concurrent.futures

  from retrain import images as images_lib

  def one(path):
    try:
      return images_lib.load_image(path, tuple(size)).numpy()
    except Exception:  # noqa: BLE001 a photo that cannot be shown is left out of the page
      return None

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
    return list(pool.map(one, paths))


# Photos a heat map pass takes at once: the default ensemble's Grad-CAM
# held about 320 MiB of activations for the page's 12 photos at once and
# 40 MiB for one, and the heat maps are drawn while the SavedModel is
# written (retrain.pipeline), which has its own peak.
HEAT_MAPS_AT_ONCE = 6


def heat_map_uris(explainer, examples: Sequence[dict],
                  labels: Sequence[str]) -> Dict[str, str]:
  """{file: JPEG data: URI of the photo with the heat map of its
  predicted class} for each example (decoded at the model's input size);
  files that cannot be decoded are left out."""
  from retrain.predict import explain
  files = list(dict.fromkeys(e['file'] for e in examples))
  predicted = {e['file']: labels.index(e['predicted']) for e in examples}
  decoded = _decode(files, explainer.input_size)
  good = [i for i, image in enumerate(decoded) if image is not None]
  if not good:
    return {}
  maps = []
  for start in range(0, len(good), HEAT_MAPS_AT_ONCE):
    chunk = good[start:start + HEAT_MAPS_AT_ONCE]
    maps.extend(explainer(np.stack([decoded[i] for i in chunk]),
                          [predicted[files[i]] for i in chunk]))
  uris = {}
  for i, heat in zip(good, maps):
    data = explain.encode(explain.overlay(decoded[i], heat), 'JPEG',
                          HEAT_SIDE)
    uris[files[i]] = html_lib.jpeg_uri(data)
  return uris


def grid_heat_maps(explainer, report: dict) -> Dict[str, str]:
  """heat_map_uris of the photos the page's grid shows ({} without an
  explainer); logs the time they took."""
  shown = report['mistakes'][:page_lib.GRID_PHOTOS] + report['least_confident_right']
  if explainer is None or not shown:
    return {}
  started = time.monotonic()
  heat = heat_map_uris(explainer, shown, report['labels'])
  logging.info('Heat maps for the results page: %d (%s) in %.1f s.', len(heat),
               explainer.method, time.monotonic() - started)
  return heat


def write(report_dir: str, report: dict, explainer=None,
          extra: Optional[dict] = None,
          heat: Optional[Dict[str, str]] = None) -> List[str]:
  """Writes report.json and report.html into report_dir; returns their
  paths.

  Args:
    report: what `build` returned.
    explainer: a retrain.report.heatmap.Explainer, or None for no heat maps.
    extra: optional figures (default: read_extra_figures(report_dir)).
    heat: what grid_heat_maps(explainer, report) returned, when it was
      computed ahead (default: computed here).
  """
  os.makedirs(report_dir, exist_ok=True)
  extra = read_extra_figures(report_dir) if extra is None else extra
  if heat is None:
    heat = grid_heat_maps(explainer, report)
  if heat:
    report['heat_maps'] = {
        'method': explainer.method, 'description': explainer.description,
        'seconds_per_image': explainer.seconds_per_image}
  thumbs = {}
  for files in report['cells'].values():
    for path in files[:page_lib.CELL_PHOTOS]:
      if path not in thumbs:
        thumbs[path] = html_lib.thumbnail_uri(path, side=THUMB_SIDE)
  text = page_lib.page(report, {'heat': heat, 'thumb': thumbs}, extra)
  json_path = atomic.write_json(os.path.join(report_dir, REPORT_JSON),
                                {**report, 'extra_figures': extra})
  html_path = atomic.write_text(os.path.join(report_dir, REPORT_HTML), text)
  return [html_path, json_path]
