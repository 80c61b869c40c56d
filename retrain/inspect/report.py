"""`inspect_dataset(config, options)`: the health report of a data set.

Lists the examples as `retrain` would (any layout, CSVs, --crop_to_boxes),
computes their bottleneck vectors into retrain's own cache (same namespace:
a training run afterwards reads them), then writes
`<output_dir>/report.json` and a self-contained `<output_dir>/report.html`
(charts and thumbnails inline as data: URIs). docs/inspect.md documents
the JSON schema.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Dict, List, Optional

import numpy as np
from absl import logging

from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.common import atomic, strict_json
from retrain.common import phases as phases_lib
from retrain.config import Config, InspectConfig
from retrain.data import boxes as boxes_lib
from retrain.data import sources
from retrain.data import split as split_lib
from retrain.errors import DatasetError
from retrain.head import math as head_math
from retrain.inspect import analysis, charts, files
from retrain.inspect import html as html_lib
from retrain.steps import prepare, vectors

REPORT_JSON = 'report.json'
REPORT_HTML = 'report.html'
SCHEMA_VERSION = 1


@dataclasses.dataclass
class InspectResult:
  """What inspect_dataset found; `report` is the dict written as JSON."""
  report: dict
  json_path: str
  html_path: str


def _summary(values) -> dict:
  values = np.asarray(values, np.float64)
  if not len(values):
    return {'min': None, 'median': None, 'max': None}
  return {'min': float(values.min()), 'median': float(np.median(values)),
          'max': float(values.max())}


def check_options(options: InspectConfig) -> None:
  if not options.output_dir:
    raise DatasetError('output_dir is empty: give the folder for '
                       'report.html and report.json.', fields=('output_dir',))
  if not 0 < options.near_duplicate_cosine < 1:
    raise DatasetError(f'near_duplicate_cosine='
                       f'{options.near_duplicate_cosine} must be between 0 '
                       'and 1.', fields=('near_duplicate_cosine',))
  if options.label_error_folds < 2:
    raise DatasetError(f'label_error_folds={options.label_error_folds} '
                       'must be at least 2.', fields=('label_error_folds',))


@dataclasses.dataclass
class _Examples:
  """The usable examples of a data set, row k = usable example k.

  usable: int64 [m] indices into layout.dataset.images; y: int64 [m] class
  ids; subsets: int64 [m] 0 train, 1 validation, 2 test; vectors: float32
  [m, D]; digests: [m] content keys.
  """
  layout: sources.Layout
  crops: Optional[boxes_lib.Crops]
  computed: bottlenecks_lib.Bottlenecks
  usable: np.ndarray
  y: np.ndarray
  subsets: np.ndarray

  @property
  def vectors(self) -> np.ndarray:
    return self.computed.vectors

  @property
  def digests(self) -> list:
    return [self.computed.digests[i] for i in self.usable]

  def item(self, k: int) -> dict:
    """The JSON of usable example k (ITEM in docs/inspect.md)."""
    image = self.layout.dataset.images[self.usable[k]]
    entry = {'path': image.path, 'rel_path': image.rel_path,
             'label': self.layout.dataset.labels[image.label],
             'set': split_lib.SUBSETS[int(self.subsets[k])]}
    if self.crops is not None:
      entry['box'] = [round(float(v), 5)
                      for v in self.crops.boxes[self.usable[k]]]
    return entry


def _load_examples(config: Config, timings: dict):
  """(_Examples, module): the examples as retrain lists and splits them,
  with their vectors from (or into) retrain's cache."""
  # The first steps of a training run (listing, hashing, the module and
  # its runtime), and its bottleneck step: ensembles, the module check, the
  # pixel limit and the cache namespaces as retrain has them, so a training
  # run afterwards reads every vector.
  phases_lib.freeze_imports()
  phases = phases_lib.Phases()
  prepared = prepare.prepare(config, phases, whole_run=False)
  layout, crops, module = prepared.layout, prepared.crops, prepared.module
  logging.info('Inspecting %d examples in %d classes: %s.',
               len(layout.dataset.images), len(layout.dataset.labels),
               layout.description)
  with phases('bottlenecks'):
    computed = vectors.bottlenecks(config, layout.dataset, module,
                                   prepared.runner, crops,
                                   keyed=prepared.keyed)
  timings['bottlenecks'] = phases.timings['bottlenecks']
  usable = np.flatnonzero(computed.ok)
  if not len(usable):
    raise DatasetError('No example could be decoded; nothing to inspect.')
  y = np.array([layout.dataset.images[i].label for i in usable], np.int64)
  split = sources.make_split(layout, usable, y, config.data.validation_percentage,
                             config.data.testing_percentage)
  subsets = np.zeros(len(usable), np.int64)
  for code, name in enumerate(split_lib.SUBSETS):
    subsets[split.subset(name)] = code
  return _Examples(layout, crops, computed, usable, y, subsets), module


def _class_sections(labels, ex: _Examples, options: InspectConfig) -> dict:
  counts = analysis.class_counts(ex.y, ex.subsets, len(labels))
  ratio = analysis.imbalance_ratio(counts)
  warning = None
  if ratio > options.imbalance_warning:
    totals = counts.sum(axis=1)
    warning = (f'The largest class ({labels[int(totals.argmax())]}, '
               f'{int(totals.max())}) has {ratio:.1f} times the examples of '
               f'the smallest ({labels[int(totals.argmin())]}, '
               f'{int(totals.min())}): consider more images of the small '
               'classes, or --sampling classes (the default) / '
               '--class_weighting balanced.')
  return {
      'classes': [{'label': label, 'train': int(c[0]),
                   'validation': int(c[1]), 'test': int(c[2]),
                   'total': int(c.sum())}
                  for label, c in zip(labels, counts, strict=True)],
      'imbalance': {'ratio': None if np.isinf(ratio) else ratio,
                    'warning_above': options.imbalance_warning,
                    'warning': warning}}


def _duplicate_sections(ex: _Examples, options: InspectConfig) -> dict:
  failed = {path for path, _ in ex.computed.failures}
  exact = analysis.exact_duplicates(ex.digests, ex.y, ex.subsets)
  pairs = analysis.near_duplicate_pairs(ex.vectors,
                                        options.near_duplicate_cosine,
                                        options.near_duplicate_block)
  near = analysis.group_pairs(pairs, ex.digests, ex.y, ex.subsets)
  near_json = {'threshold': options.near_duplicate_cosine}
  near_json.update({kind: [{'a': ex.item(i), 'b': ex.item(j),
                            'cosine': round(c, 5)} for i, j, c in found]
                    for kind, found in near.items()})
  return {
      'unreadable': [{'path': p, 'reason': r}
                     for p, r in sorted(set(ex.computed.failures))],
      'skipped': [{'path': p, 'reason': r} for p, r in ex.layout.skipped
                  if p not in failed],
      'exact_duplicates': {kind: [[ex.item(k) for k in group]
                                  for group in groups]
                           for kind, groups in exact.items()},
      'near_duplicates': near_json}


def _model_sections(labels, ex: _Examples, options: InspectConfig) -> dict:
  folds = min(options.label_error_folds, len(ex.usable))
  probs = analysis.out_of_fold_probabilities(ex.vectors, ex.y, len(labels),
                                             folds)
  suspects = analysis.label_errors(probs, ex.y, options.label_error_given,
                                   options.label_error_other)
  far = analysis.outliers(ex.vectors, ex.y, len(labels), options.outlier_mad)
  return {
      'label_errors': {
          'folds': folds,
          'out_of_fold_accuracy': head_math.accuracy(probs, ex.y),
          'given_below': options.label_error_given,
          'other_above': options.label_error_other,
          'suspects': [dict(ex.item(s.index),
                            given_probability=round(s.given_probability, 4),
                            predicted=labels[s.predicted],
                            predicted_probability=round(
                                s.predicted_probability, 4))
                       for s in suspects]},
      'outliers': {'mad_limit': options.outlier_mad, 'images': [
          dict(ex.item(k), distance=round(d, 5), robust_z=round(z, 2))
          for k, d, z in far]}}


def inspect_dataset(config: Config, options: InspectConfig) -> InspectResult:
  """Builds and writes the report (see module doc)."""
  check_options(options)
  config.check()
  sources.check_layout_options(config.data)
  timings = {}
  started = time.monotonic()
  ex, module = _load_examples(config, timings)
  labels = list(ex.layout.dataset.labels)
  paths = [image.path for image in ex.layout.dataset.images]
  report = {'schema_version': SCHEMA_VERSION, 'data': {
      'description': ex.layout.description, 'labels': labels,
      'crop_to_boxes': bool(config.crop.crop_to_boxes),
      'examples': len(paths), 'usable_examples': int(len(ex.usable)),
      'files': len(set(paths)), 'module': config.module.tfhub_module,
      'input_size': list(module.input_size),
      'bottleneck_dir': config.cache.bottleneck_dir}}
  for name, make in (
      ('classes_and_files', lambda: _class_sections(labels, ex, options)),
      ('duplicates', lambda: _duplicate_sections(ex, options)),
      ('label_errors_and_outliers',
       lambda: _model_sections(labels, ex, options))):
    phase = time.monotonic()
    report.update(make())
    if name == 'classes_and_files':
      report['images'] = _image_stats(paths, ex.usable, ex.crops,
                                      module.input_size)
    timings[name] = time.monotonic() - phase
  phase = time.monotonic()
  counts = analysis.class_counts(ex.y, ex.subsets, len(labels))
  page = _render(report, labels, counts, ex.y, ex.usable, paths, ex.crops,
                 options)
  timings['charts_and_thumbnails'] = time.monotonic() - phase
  timings['total'] = time.monotonic() - started
  report['timings_seconds'] = {k: round(v, 2) for k, v in timings.items()}
  os.makedirs(options.output_dir, exist_ok=True)
  json_path = os.path.join(options.output_dir, REPORT_JSON)
  html_path = os.path.join(options.output_dir, REPORT_HTML)
  atomic.write_text(json_path, strict_json.dumps(report, indent=1,
                                            ensure_ascii=False))
  atomic.write_text(html_path, html_lib.page(report, page))
  _log_summary(report, html_path)
  return InspectResult(report, json_path, html_path)


def _image_stats(paths: List[str], usable: np.ndarray, crops,
                 input_size) -> dict:
  """Sizes, aspect ratios, modes, formats, EXIF and upscaling."""
  info: Dict[str, Optional[files.FileInfo]] = {}
  for path in dict.fromkeys(paths):
    try:
      info[path] = files.file_info(path)
    except Exception:  # noqa: BLE001 unreadable files are listed by the bottleneck step
      info[path] = None  # listed as unreadable by the bottleneck step
  known = [i for i in info.values() if i is not None]
  h, w = input_size
  sides, factors = [], []
  for k in usable:
    i = info.get(paths[k])
    if i is None:
      continue
    width, height = float(i.width), float(i.height)
    if crops is not None:
      top, left, bottom, right = crops.boxes[k]
      width, height = (right - left) * width, (bottom - top) * height
    sides.append((width, height))
    factors.append(max(h / max(height, 1e-9), w / max(width, 1e-9)))
  factors = np.asarray(factors, np.float64)
  upscaled = factors > 1.0
  sides = np.asarray(sides, np.float64).reshape(-1, 2)
  return {
      'width': _summary([i.width for i in known]),
      'height': _summary([i.height for i in known]),
      'aspect_ratio': _summary([i.width / max(i.height, 1) for i in known]),
      'modes': dict(collections.Counter(i.mode for i in known)),
      'formats': dict(collections.Counter(i.format for i in known)),
      'exif_rotated': sorted(p for p, i in info.items()
                             if i is not None and i.orientation != 1),
      'input_size': [int(h), int(w)],
      'example_width': _summary(sides[:, 0]),
      'example_height': _summary(sides[:, 1]),
      'upscaled': {
          'count': int(upscaled.sum()),
          'fraction': float(upscaled.mean()) if len(upscaled) else 0.0,
          'median_factor': (float(np.median(factors[upscaled]))
                            if upscaled.any() else None),
          'max_factor': (float(factors[upscaled].max())
                         if upscaled.any() else None)},
      # Not in the JSON: the raw values for the histograms.
      '_sides': sides, '_aspect': [i.width / max(i.height, 1)
                                   for i in known]}


def _render(report, labels, counts, y, usable, paths, crops,
            options: InspectConfig) -> dict:
  """Charts and thumbnails for the page (data: URIs), keyed by name."""
  images = report['images']
  sides = images.pop('_sides')
  aspect = images.pop('_aspect')
  cache = {}

  def thumb(entry: dict) -> str:
    key = (entry['path'], tuple(entry.get('box', ())))
    if key not in cache:
      cache[key] = files.thumbnail_uri(entry['path'], entry.get('box'))
    return cache[key]

  page = {'thumb': thumb, 'charts': {
      'class_counts': charts.class_counts_chart(labels, counts),
      'widths': charts.histogram_chart(sides[:, 0], 'Example width',
                                       'pixels'),
      'heights': charts.histogram_chart(sides[:, 1], 'Example height',
                                        'pixels'),
      'aspect': charts.histogram_chart(aspect, 'Aspect ratio of the files',
                                       'width / height')}}
  sheets = {}
  for c, label in enumerate(labels):
    members = np.flatnonzero(y == c)
    # Spread over the class, not only its first files.
    pick = members[np.linspace(0, len(members) - 1,
                               min(len(members), options.contact_sheet_images)
                               ).astype(int)] if len(members) else members
    sheets[label] = [
        (paths[usable[k]].rsplit('/', 1)[-1],
         files.thumbnail_uri(paths[usable[k]],
                             None if crops is None
                             else crops.boxes[usable[k]].tolist()))
        for k in pick]
  page['sheets'] = sheets
  return page


def _log_summary(report: dict, html_path: str) -> None:
  exact = report['exact_duplicates']
  near = report['near_duplicates']
  logging.info(
      'Report: %d unreadable, exact duplicates %d within a class / %d across '
      'classes / %d across sets, near-duplicates %d / %d / %d, %d suspected '
      'label errors, %d outliers. Open %s', len(report['unreadable']),
      *(len(exact[k]) for k in ('within_class', 'across_classes',
                                'across_sets')),
      *(len(near[k]) for k in ('within_class', 'across_classes',
                               'across_sets')),
      len(report['label_errors']['suspects']),
      len(report['outliers']['images']), html_path)
  if report['imbalance']['warning']:
    logging.warning('%s', report['imbalance']['warning'])
