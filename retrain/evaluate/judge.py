"""`evaluate`: an export judged on a labelled folder (see
retrain/evaluate/__init__.py)."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Optional

from absl import logging

from retrain.common import settings
from retrain.config import DEFAULTS, EVALUATE_DEFAULTS, Config, EvaluateConfig
from retrain.data import sources
from retrain.errors import DatasetError
from retrain.predict import classify
from retrain.predict import load as load_lib
from retrain.report import heatmap
from retrain.report import results as results_lib


@dataclasses.dataclass
class Evaluated:
  """What `evaluate` wrote.

  Attributes:
    report: the report dict (report.json's contents).
    html_path, json_path: the files written.
    failed: (file, reason) of photos that could not be classified.
  """
  report: dict
  html_path: str
  json_path: str
  failed: List[tuple]

  @property
  def accuracy(self) -> Optional[float]:
    return self.report['accuracy']


def _photos(config: Config, which: str):
  """(files, true class names, layout description) of the folder."""
  options = config.data
  sources.check_layout_options(options)
  layout = sources.load_layout(options)
  images = layout.dataset.images
  if not images:
    raise DatasetError(f'No images found in {config.data.image_dir!r}: pass the '
                       'folder of class folders (or the CSV) to judge the '
                       'model on.', fields=('image_dir',))
  rows = list(range(len(images)))
  if which != 'all':
    import numpy as np
    labels = np.array([image.label for image in images], np.int64)
    split = sources.make_split(layout, np.arange(len(images)), labels,
                               config.data.validation_percentage,
                               config.data.testing_percentage)
    rows = [int(r) for r in split.subset(which)]
  names = layout.dataset.labels
  return ([images[r].path for r in rows],
          [names[images[r].label] for r in rows], layout.description)


def evaluate(model: str = EVALUATE_DEFAULTS.model,
             image_dir: str = DEFAULTS.data.image_dir,
             output_dir: str = EVALUATE_DEFAULTS.output_dir,
             config: Optional[Config] = None,
             options: Optional[EvaluateConfig] = None,
             **overrides) -> Evaluated:
  """Judges the export `model` on the labelled photos of `image_dir`.

  Args:
    model, image_dir, output_dir: see the module docstring.
    config: the data settings (layout, CSVs, label style, percentages) as a
      retrain.Config; default DEFAULTS with image_dir.
    options: the EvaluateConfig (model, output_dir, subset, heat_maps);
      when given it wins over model and output_dir.
    **overrides: fields of Config or EvaluateConfig (e.g. subset='test',
      testing_percentage=10, image_layout='split_folders').

  Raises:
    retrain.errors.RetrainError: the model, the folder or a setting cannot
      be used (the message names it).
  """
  started = time.monotonic()
  ours = {f.name for f in dataclasses.fields(EvaluateConfig)}
  options = options or EvaluateConfig(model=model, output_dir=output_dir)
  options = dataclasses.replace(options, **{k: v for k, v in overrides.items()
                                            if k in ours})
  config = (config or DEFAULTS.replace(image_dir=image_dir)).replace(**{k: v for k, v in overrides.items()
                                         if k not in ours})
  config.check()
  settings.check(options)
  if not options.model:
    raise DatasetError('model is empty: pass the export to judge (a '
                       'SavedModel folder or a .pb, .tflite or .onnx file).',
                       fields=('model',))
  loaded = (load_lib.load_model(saved_model_dir=options.model)
            if os.path.isdir(options.model)
            else load_lib.load_model(graph=options.model))
  files, truth, description = _photos(config, options.subset)
  logging.info('Judging %s (%s, %d classes) on %d photos: %s.',
               options.model, loaded.kind, len(loaded.labels), len(files),
               description)
  records = classify.classify_files(loaded, files, top_k=len(loaded.labels),
                                    min_confidence=0.0)
  return _report(options, config, loaded, files, truth, records, started)


def _report(options, config, loaded, files, truth, records, started):
  """Builds and writes the report of classified records."""
  import numpy as np
  failed = [(r.image, r.error) for r in records if r.error is not None]
  for path, reason in failed:
    logging.warning('Left out %s: %s', path, reason)
  good = [k for k, r in enumerate(records) if r.error is None]
  column = {name: j for j, name in enumerate(loaded.labels)}
  probs = np.zeros([len(good), len(loaded.labels)], np.float32)
  for row, k in enumerate(good):
    for label, p in records[k].top:
      probs[row, column[label]] = p
  report = results_lib.build(
      loaded.labels, [truth[k] for k in good], probs, [files[k] for k in good],
      threshold=loaded.threshold, set=options.subset,
      title=f'{os.path.basename(os.path.normpath(options.model))} on '
      f'{os.path.basename(os.path.normpath(config.data.image_dir or "photos"))}',
      validation=('judged on a labelled folder, no training; photos: '
                  f'{options.subset}'
                  + ('' if options.subset == 'all' else
                     f' set of the hash split (validation '
                     f'{config.data.validation_percentage}%, test '
                     f'{config.data.testing_percentage}%)')),
      model=f'{loaded.kind} {loaded.path} ({len(loaded.labels)} classes, '
      f'input {loaded.input_size[0]}x{loaded.input_size[1]})',
      failed=[{'file': f, 'reason': r} for f, r in failed],
      seconds=time.monotonic() - started,
      settings={'model': options.model, 'image_dir': config.data.image_dir,
                'subset': options.subset, 'heat_maps': options.heat_maps})
  explainer = (heatmap.export_explainer(loaded.predict, loaded.input_size,
                                        loaded.kind)
               if options.heat_maps else None)
  html_path, json_path = results_lib.write(options.output_dir, report, explainer,
                                       extra={})
  logging.info('%s', 'Accuracy ' + (
      f'{100 * report["accuracy"]:.1f}% (N={report["count"]})'
      if report['accuracy'] is not None else 'n/a (no photo of a class the '
      'model knows)') + f'; wrote {html_path} and {json_path}.')
  return Evaluated(report, html_path, json_path, failed)
