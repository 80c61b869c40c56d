"""The whole run: discover -> split -> bottlenecks -> train -> evaluate -> export.

`run(config)` takes a `retrain.config.Config` and returns a `RunResult` that
tests (and other programs) can inspect; it reads no flags.
"""

from __future__ import annotations

import dataclasses
import html
import os
import types
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import logging

import bottleneck_cache
from retrain.bottlenecks import compute as bottlenecks_lib
from retrain.bottlenecks import distort as distort_lib
from retrain.bottlenecks import ensemble as ensemble_bottlenecks
from retrain.bottlenecks import precision as precision_lib
from retrain.bottlenecks import usable as usable_lib
from retrain.common import atomic, leftovers, names, runs
from retrain.common import phases as phases_lib
from retrain.common.progress import Progress
from retrain.config import DEFAULTS, Config, subset
from retrain.data import boxes as boxes_lib
from retrain.data import discover as discover_lib
from retrain.data import duplicates, leakage
from retrain.data import sources as layouts
from retrain.data import split as split_lib
from retrain.errors import DatasetError, OutputError
from retrain.export import formats as export_formats
from retrain.export import quantization_check
from retrain.export import saved_model as export_lib
from retrain.features import ensemble as ensemble_lib
from retrain.features import tflite_runtime
from retrain.finetune import run as finetune_lib
from retrain.head import auto as head_auto
from retrain.head import calibration as calibration_lib
from retrain.head import evaluate as evaluate_lib
from retrain.head import novelty as novelty_lib
from retrain.head import options as train_options_lib
from retrain.head import solve as solve_lib
from retrain.head import solver as solver_lib
from retrain.head import summaries as summaries_lib
from retrain.head import train as train_lib
from retrain.report import confidence
from retrain.report import deployment as deployment_report
from retrain.report import heatmap as heatmap_lib
from retrain.report import results as results_lib
from retrain.report import skipped as skipped_report
from retrain.report import trust as trust_report
from retrain.report import writer as explain_lib

RUN_SUMMARY_FILE = 'run_summary.json'


@dataclasses.dataclass
class RunResult:
  """What a run produced.

  Attributes:
    labels: class names, class id i is labels[i].
    counts: images per subset actually used, {'train': n, ...}.
    test_accuracy: in [0, 1], nan when the test set is empty.
    test_count: images evaluated for test_accuracy.
    bottleneck_stats: what the cache did (reused / computed / failed).
    skipped: (path, reason) for each image that could not be used.
    history: the evaluation points of training.
    misclassified: lines describing each wrong test prediction.
    saved_model_dir: the export folder, or None.
    timings: seconds per phase.
    peak_rss_mib: peak resident memory of the process after each phase.
    explained: per-class metrics, report files and projector size
      (retrain/explain.py).
    distorted_stats: what the cache did for distorted copies, or None when
      no distortion was asked for.
    fine_tuned: the retrain.finetune.run.FineTuned of --fine_tune (the
      in-memory network, history, test before/after), else None.
  """
  labels: List[str]
  counts: Dict[str, int]
  test_accuracy: float
  test_count: int
  bottleneck_stats: bottleneck_cache.Stats
  skipped: list
  history: list
  misclassified: List[str]
  saved_model_dir: Optional[str]
  timings: Dict[str, float]
  explained: Optional[explain_lib.Explained] = None
  distorted_stats: Optional[bottleneck_cache.Stats] = None
  peak_rss_mib: Optional[Dict[str, float]] = None
  # <report_dir>/deployment.json: calibration and quantization checks.
  deployment_report: Optional[str] = None
  fine_tuned: Optional[finetune_lib.FineTuned] = None
  # How each validation figure and threshold was obtained (describe_figures).
  figures: Optional[Dict[str, str]] = None
  # Per member, the precision its bottlenecks ran at ('int8' or 'float32').
  bottleneck_precision: Optional[str] = None
  # --multi_label: the test set's retrain.report.multilabel.MultiLabelMetrics
  # (test_accuracy is then its exact-match ratio).
  multi_label: Optional[object] = None
  # <report_dir>/report.html (docs/results-page.md), or None.
  results_page: Optional[str] = None
  # The run folder (None when every output was given a path of its own)
  # and the settings as run, every output path filled in.
  run_dir: Optional[str] = None
  config: Optional[Config] = None

  def __repr__(self) -> str:
    """One line: what a notebook user looks at first (the fields hold the
    details)."""
    return (f'RunResult(test_accuracy={_percent(self.test_accuracy)} '
            f'(N={self.test_count}), classes={len(self.labels)}, '
            f'images={sum(self.counts.values())}, '
            f'run_dir={self.run_dir!r}, '
            f'saved_model_dir={self.saved_model_dir!r})')

  def _repr_html_(self) -> str:
    """A small table for notebooks."""
    rows = [('test accuracy', f'{_percent(self.test_accuracy)} '
             f'(N={self.test_count})'),
            ('classes', ', '.join(self.labels[:12]) +
             (f', ... ({len(self.labels)})' if len(self.labels) > 12 else '')),
            ('images', ', '.join(f'{k} {v}' for k, v in self.counts.items())),
            ('time', f'{self.timings.get("total", 0.0):.0f} s'),
            ('run folder', self.run_dir or '(none: every output given)'),
            ('SavedModel', self.saved_model_dir or '(none)')]
    cells = ''.join(f'<tr><th style="text-align:left">{html.escape(k)}</th>'
                    f'<td style="text-align:left">{html.escape(str(v))}</td>'
                    '</tr>' for k, v in rows)
    return f'<table><caption>retrain run</caption>{cells}</table>'


def _percent(accuracy: float) -> str:
  return 'n/a' if accuracy != accuracy else f'{100 * accuracy:.1f}%'


def resolve_head_solver(config: Config) -> Config:
  """`config` with head_solver 'lbfgs' or 'sgd', decided once for the run:
  'auto' means sgd when a retrain.py training setting differs from its
  default (the CLI decides from the flags given, before this), else lbfgs.

  Raises:
    DatasetError: head_solver is not a known value.
  """
  return dataclasses.replace(config, head_solver=head_auto.resolve(
      config.head_solver, head_auto.changed_training_fields(config,
                                                            DEFAULTS)))


def check_config(config: Config) -> None:
  """Checks values before any slow work starts."""
  layouts.check_layout_options(subset(layouts.LayoutOptions, config))
  split_lib.check_percentages(config.validation_percentage,
                              config.testing_percentage)
  export_lib.check_export_dir(config.saved_model_dir)
  check_output_places(config)
  export_formats.check_options(subset(export_formats.ExportOptions, config))
  train_options_lib.check(subset(train_options_lib.TrainOptions, config))
  calibration_lib.check_options(
      subset(calibration_lib.ConfidenceOptions, config))
  if config.novelty_keep:
    novelty_lib.check_keep(config.novelty_keep)
  if config.unknown_dir and not os.path.isdir(config.unknown_dir):
    raise DatasetError(f'unknown_dir {config.unknown_dir!r} is not a '
                       'folder: give a folder of photos of none of the '
                       'classes, or leave it empty.', fields=('unknown_dir',))
  # The head solver's values (head_solver itself: resolve_head_solver).
  solver_lib.check(solver_lib.SolverOptions.from_config(config))
  distort_lib.check_settings(subset(distort_lib.Distortions, config),
                             config.distorted_copies)
  # Fine-tuning.
  finetune_lib.check_options(subset(finetune_lib.FineTuneOptions, config),
                             default_from=DEFAULTS.fine_tune_from)
  # A mistyped module is reported now, not after hashing.
  ensemble_lib.check_handles(config.tfhub_module, config.image_size,
                             config.trust_module)
  # Every setting's declared choices and bounds (retrain/config.py), after
  # the checks above that say more about the settings they know.
  config.check()


# Outputs written as one file, and as folders.
_FILE_OUTPUTS = ('output_labels', 'output_graph', 'tflite_output_file')
_FOLDER_OUTPUTS = ('saved_model_dir', 'summaries_dir', 'report_dir',
                   'bottleneck_dir')


def check_output_places(config: Config) -> None:
  """Raises OutputError, before any work, for an output file that is a
  folder, an output folder that is a file, or an output inside image_dir
  (the next run would list it as a class)."""
  for name in _FILE_OUTPUTS + _FOLDER_OUTPUTS:
    path = getattr(config, name, '')
    if not path:
      continue
    if name in _FILE_OUTPUTS and os.path.isdir(path):
      raise OutputError(f'{name} {path!r} is a folder: give a file path, '
                        f'e.g. {os.path.join(path, "labels.txt")!r}.',
                        fields=(name,))
    if name in _FOLDER_OUTPUTS and os.path.isfile(path):
      raise OutputError(f'{name} {path!r} is a file: give a folder.',
                        fields=(name,))
    if config.image_dir and os.path.isdir(config.image_dir):
      rel = os.path.relpath(os.path.realpath(path),
                            os.path.realpath(config.image_dir))
      if not rel.startswith('.'):
        raise OutputError(
            f'{name} {path!r} is inside image_dir {config.image_dir!r}: the '
            'next run would take it for a class of images. Give a place '
            'outside the image folder.', fields=(name, 'image_dir'))


def _log_counts(labels, y, split) -> None:
  for i, name in enumerate(labels):
    logging.info('Class %-20s train %5d  validation %4d  test %4d', name,
                 int(np.sum(y[split.train] == i)),
                 int(np.sum(y[split.validation] == i)),
                 int(np.sum(y[split.test] == i)))


# Path settings whose default lies in the run folder (or that a user may
# point at a path of their own, which the run then locks while it runs).
OUTPUT_FIELDS = ('saved_model_dir', 'output_labels', 'summaries_dir',
                 'report_dir', 'output_graph', 'tflite_output_file',
                 'onnx_output_file', 'checkpoint_path',
                 'intermediate_output_graphs_dir')


def place_outputs(config: Config):
  """(config with every output path filled in, the new run folder or None).

  A path setting starting with {run}/ goes into a new folder
  <output_dir>/<data set>/<run id>/ (made only when some output goes
  there); '~' is expanded in the others and in bottleneck_dir.
  """
  fields = [f for f in OUTPUT_FIELDS if f != 'intermediate_output_graphs_dir'
            or config.intermediate_store_frequency > 0]
  run_dir = None
  if any(runs.in_run_folder(getattr(config, f)) for f in fields):
    run_dir = runs.new_run_folder(config.output_dir, runs.data_set_name(
        config.image_dir, config.image_labels_csv or config.train_csv))
  filled = {f: runs.fill(getattr(config, f), run_dir) for f in OUTPUT_FIELDS}
  filled['bottleneck_dir'] = runs.fill(config.bottleneck_dir, None)
  return dataclasses.replace(config, **filled), run_dir


def given_outputs(config: Config) -> Dict[str, str]:
  """{setting: path} of the outputs named by the user (not in the run
  folder): the paths another run must not write at the same time."""
  return {f: getattr(config, f) for f in OUTPUT_FIELDS
          if getattr(config, f) and not runs.in_run_folder(getattr(config, f))
          and (f != 'intermediate_output_graphs_dir' or
               config.intermediate_store_frequency > 0)}


def run(config: Config) -> RunResult:
  """Runs retraining end to end; see the module docstring.

  Outputs go into a new run folder (see place_outputs) and the paths given
  instead, each locked for the run (retrain/common/runs.py); when the run
  finishes, `latest` points to its run folder.

  Raises:
    OutputError: another run is writing one of the given paths.
  """
  config = resolve_head_solver(config)
  with runs.locked(given_outputs(config)):
    config, run_dir = place_outputs(config)
    try:
      result = run_steps(config)
    except BaseException:
      if run_dir and runs.remove_if_empty(run_dir):
        run_dir = None
      raise
  if run_dir:
    runs.point_latest(run_dir)
  return dataclasses.replace(result, run_dir=run_dir, config=config)


def run_steps(config: Config) -> RunResult:
  """The steps of `run`, with every output path filled in."""
  if config.multi_label:  # one sigmoid per label: retrain/multilabel.py
    from retrain import multilabel  # pylint: disable=g-import-not-at-top
    return multilabel.run(config)
  phases = phases_lib.Phases()
  prepared = prepare(config, phases)
  layout, crops, module, runner = (prepared.layout, prepared.crops,
                                   prepared.module, prepared.runner)
  # Past the memory budget the vectors stream from the cache
  # (docs/scale.md); crops to boxes keep the in-memory path (the stream
  # reads whole images).
  from retrain import streamed  # pylint: disable=g-import-not-at-top
  if crops is None and streamed.needed(config, len(layout.dataset.images),
                                       module):
    return streamed.run(config, layout, module, runner, phases,
                        prepared.keyed)
  with phases('bottlenecks'):
    computed = bottlenecks(config, layout.dataset, module, runner, crops,
                           keyed=prepared.keyed)
  skipped, reports = report_skipped(config, layout, computed)
  images = usable_lib.usable_images(layout.dataset, computed)
  labels = list(layout.dataset.labels)
  split = make_split(config, layout, images)
  with phases('distorted_copies') as phase:
    train_x, train_y, copies = training_set(config, runner, images, split,
                                            crops)
    if copies is None:
      phase.skip()
  with phases('training'):
    trained, intermediate = train(config, module, labels, images, split,
                                  train_x, train_y, computed.failures,
                                  training_groups(split, copies))
  with phases('evaluation'):
    reported = evaluate(config, labels, trained, images, split)
    # Fine-tuning before calibration, so that the exported (calibrated)
    # head is the fine-tuned one.
    module, trained, reported, validation, tuned = fine_tune(
        config, module, labels, trained, reported, images, split, copies)
    test, misclassified, explained = reported
    confidence = calibrate(config, trained, *validation, test=test)
    confidence = trust_checks(config, module, runner, labels, confidence,
                              images, split, test, tuned, trained)
  page = start_results_page(config, layout, crops, module, labels, trained,
                            test, images, split, tuned)
  with phases('export'):
    saved, deployment = export(config, module, labels, trained, test, images,
                               split, intermediate, confidence,
                               tuned.metadata if tuned else None,
                               prepared.float_module)
  with phases('results_page'):
    page = results_page(config, page, module, labels, computed.stats, phases)
  phases.total()
  warn_skipped(skipped, reports)
  result = RunResult(
      labels=labels,
      counts={name: int(len(split.subset(name))) for name in split_lib.SUBSETS},
      test_accuracy=test.accuracy, test_count=test.count,
      bottleneck_stats=computed.stats, skipped=skipped,
      history=trained.history, misclassified=misclassified,
      saved_model_dir=saved, timings=phases.timings, explained=explained,
      distorted_stats=copies.stats if copies is not None else None,
      peak_rss_mib=phases.peak_rss, deployment_report=deployment,
      fine_tuned=tuned, figures=describe_figures(trained, tuned),
      bottleneck_precision=prepared.precision, results_page=page)
  write_run_summary(config, result)
  return result


@dataclasses.dataclass
class Prepared:
  """What every run needs before its bottlenecks (see `prepare`).

  Attributes:
    layout: the images, their classes and any given split
      (retrain.data.sources.Layout).
    crops: with --crop_to_boxes one example per box and its crop, else None.
    keyed: the cache key of every image (what hash_images returns).
    float_module: the feature module as loaded (one module or an ensemble).
    module: the same at the precision its bottlenecks run at.
    precision: per member, 'int8' or 'float32'.
    runner: the module on its runtime, as the bottlenecks run it.
  """
  layout: layouts.Layout
  crops: Optional[boxes_lib.Crops]
  keyed: tuple
  float_module: object
  module: object
  precision: object
  runner: object


def prepare(config: Config, phases: phases_lib.Phases) -> Prepared:
  """Checks the settings, discovers and hashes the images and loads the
  module, each a phase of `phases`."""
  with phases('startup', since_start=True):
    check_config(config)
    # Temporaries of killed runs beside our outputs go.
    leftovers.heal([config.saved_model_dir, config.output_labels,
                    config.output_graph, config.tflite_output_file,
                    config.report_dir])
    layout, crops = discover(config)  # crops: --crop_to_boxes, else None
  # Hashed before the module is loaded, so that a million files' digests
  # and the module's weights are not both held while hashing
  # (docs/scale.md); check_config has checked the module handle.
  with phases('hashing'):
    keyed = hash_images(config, layout.dataset, crops)
  with phases('module'):
    float_module = load_module(config)
  with phases('precision'):
    module = choose_precision(config, layout.dataset, float_module, keyed,
                              crops)
  return Prepared(layout, crops, keyed, float_module, module,
                  precision_lib.describe(module), module_runner(config, module))


def warn_skipped(skipped: list, reports: Sequence[str]) -> None:
  """The closing warning of a run that skipped images (also streamed's)."""
  if skipped:
    logging.warning('%s skipped because they could not be used; '
                    'see the warnings above and %s.',
                    names.plural(len(skipped), 'image') +
                    (' was' if len(skipped) == 1 else ' were'),
                    reports[0] if reports else 'the log')


# --- The steps, in the order `run` calls them ---------------------------------


def discover(config: Config):
  """(layout, crops): the images and their classes (and a given split, if
  any); with --crop_to_boxes one example per box and their crops, else
  crops is None (retrain/data/boxes.py)."""
  layout, crops = boxes_lib.load_examples(
      subset(layouts.LayoutOptions, config), subset(boxes_lib.BoxOptions,
                                                    config))
  logging.info('Found %s in %s: %s.',
               names.plural(len(layout.dataset.images), 'image'),
               names.plural(len(layout.dataset.labels), 'class'),
               layout.description)
  return layout, crops


def load_module(config: Config):
  """One module, or an ensemble of several (features/ensemble.py)."""
  return ensemble_lib.load(config.tfhub_module, config.image_size,
                           config.module_cache_dir, trust=config.trust_module)


def module_runner(config: Config, module):
  """`module` as the bottlenecks (plain and distorted) run it: on TFLite
  when --bottleneck_runtime allows, converted on first use."""
  return tflite_runtime.deferred(module, config.bottleneck_runtime,
                                 config.module_cache_dir)


def hash_images(config: Config, dataset, crops=None) -> tuple:
  """The cache key of every discovered image (its content hash, through
  the digest memo in bottleneck_dir): what bottlenecks_lib.cache_keys
  returns, for `bottlenecks(..., keyed=)`. Needs no module."""
  return bottlenecks_lib.content_keys(
      discover_lib.image_paths(dataset.images), config.bottleneck_dir,
      boxes_lib.Crops.bottleneck_args(crops).get('key_suffixes'))


def choose_precision(config: Config, dataset, module, keyed: tuple,
                     crops=None):
  """`module` with each member at the precision --bottleneck_precision
  and the guard choose (retrain/bottlenecks/precision.py); float with
  --crop_to_boxes (the guard and the export check read whole images)."""
  if crops is not None:
    if config.bottleneck_precision == 'int8':
      logging.warning('Using float bottlenecks: int8 bottlenecks do not '
                      'support crop_to_boxes yet.')
    return module
  probe = precision_lib.Probe(
      paths=discover_lib.image_paths(dataset.images), keyed=keyed,
      bottleneck_dir=config.bottleneck_dir,
      batch_size=config.bottleneck_batch_size,
      max_pixels=config.max_image_pixels)
  chosen = precision_lib.choose(module, config.bottleneck_precision,
                                config.bottleneck_runtime,
                                config.module_cache_dir, probe,
                                fine_tune=config.fine_tune)
  logging.info('Bottleneck precision: %s.', precision_lib.describe(chosen))
  return chosen


def bottlenecks(config: Config, dataset, module, runner, crops=None,
                load_vectors: bool = True,
                keyed: Optional[tuple] = None) -> bottlenecks_lib.Bottlenecks:
  """The bottleneck vector of every discovered image, cached under the
  module's identity and computed by `runner` (the module on its runtime);
  load_vectors False: computed into the cache only (retrain/streamed.py);
  keyed: what hash_images returned (None: the files are hashed here)."""
  paths = [image.path for image in dataset.images]
  try:
    # An ensemble computes each member in its own namespace.
    if getattr(module, 'members', None):
      computed = ensemble_bottlenecks.compute_bottlenecks(
          paths, module, runner, config.bottleneck_dir,
          config.bottleneck_runtime, config.bottleneck_batch_size,
          config.module_cache_dir, max_pixels=config.max_image_pixels,
          keyed=keyed, **boxes_lib.Crops.bottleneck_args(crops))
      log_bottlenecks(computed.stats, len(computed.failures),
                      config.bottleneck_dir, len(module.members))
      return computed
    store = bottleneck_cache.BottleneckStore(
        config.bottleneck_dir, bottlenecks_lib.cache_namespace(module))
  except bottleneck_cache.CacheError as e:
    raise OutputError(f'bottleneck_dir: {e}', fields=('bottleneck_dir',)
                      ) from e
  computed = bottlenecks_lib.compute_bottlenecks(
      paths, runner, store,
      config.bottleneck_batch_size, max_pixels=config.max_image_pixels,
      load_vectors=load_vectors, keyed=keyed,
      **boxes_lib.Crops.bottleneck_args(crops))
  log_bottlenecks(computed.stats, len(computed.failures),
                  config.bottleneck_dir)
  return computed


def log_bottlenecks(stats: bottleneck_cache.Stats, skipped: int,
                    cache_dir: str, modules: int = 1) -> None:
  """One line: how many vectors the cache gave and how many were computed
  (all from the cache: said so), and how many images were skipped."""
  what = 'Bottlenecks' if modules == 1 else f'Bottlenecks of {modules} modules'
  unit = 'vector'
  if not stats.computed and stats.reused:
    read = (f'all {names.plural(stats.reused, unit)} read from the cache in '
            f'{cache_dir}, none computed')
  else:
    read = (f'{names.plural(stats.reused, unit)} read from the cache, '
            f'{stats.computed} computed')
  logging.info('%s: %s; %s skipped.', what, read,
               names.plural(skipped, 'image'))


def report_skipped(config: Config, layout: layouts.Layout,
                   computed: bottlenecks_lib.Bottlenecks):
  """Writes the skipped-files report and warns of duplicate files in two
  classes; returns (skipped (path, reason) pairs, report files)."""
  dataset = layout.dataset
  skipped = list(layout.skipped) + list(computed.failures)
  reports = skipped_report.write_skipped_report(config.report_dir, skipped)
  if skipped and reports:
    logging.info('The %d skipped files and why are listed in %s.',
                 len(skipped), ' and '.join(reports))
  # Only usable images: two empty files in two classes are no conflict.
  duplicates.warn_conflicting_duplicates(duplicates.conflicting_duplicates(
      [d if ok else None for d, ok in zip(computed.digests, computed.ok)],
      [image.label for image in dataset.images],
      [image.path for image in dataset.images]))
  return skipped, reports


def make_split(config: Config, layout: layouts.Layout,
               images: usable_lib.UsableImages) -> split_lib.Split:
  """Train / validation / test rows of `images`."""
  split = layouts.make_split(layout, images.index, images.labels,
                             config.validation_percentage,
                             config.testing_percentage)
  _log_counts(layout.dataset.labels, images.labels, split)
  # The same bytes in two of train/validation/test is leakage.
  leakage.report_leakage(
      leakage.find_leakage(images.digests, split, images.paths),
      config.report_dir)
  return split


def training_set(config: Config, runner, images: usable_lib.UsableImages,
                 split: split_lib.Split, crops=None):
  """(vectors float32 [m, D], class ids int64 [m], distorted copies or None).

  Distorted copies of the training images only (validation and test stay
  as they are); training samples originals and copies alike.
  """
  train_x = images.vectors[split.train]
  train_y = images.labels[split.train]
  copies = distort_lib.training_copies(
      subset(distort_lib.Distortions, config), config.distorted_copies,
      config.random_seed, config.bottleneck_dir, config.bottleneck_batch_size,
      runner, images.paths_of(split.train), images.digests_of(split.train),
      boxes=None if crops is None else crops.boxes[images.index[split.train]])
  if copies is not None:
    train_x = np.concatenate([train_x, copies.vectors])
    train_y = np.concatenate([train_y, train_y[copies.source]])
  return train_x, train_y, copies


def training_groups(split: split_lib.Split, copies) -> np.ndarray:
  """int64 [m] group of each row training_set returned: row i of the
  training images is group i, and each distorted copy joins its source's
  (so held-out predictions hold an image and its copies out together)."""
  own = np.arange(len(split.train), dtype=np.int64)
  return own if copies is None else np.concatenate(
      [own, np.asarray(copies.source, np.int64)])


def held_out_validation(trained: train_lib.TrainResult,
                        images: usable_lib.UsableImages,
                        split: split_lib.Split) -> tuple:
  """What calibration and the validation reports read, never predictions of
  a head on images it trained on: (vectors float32 [n, D] or None, class
  ids int64 [n], logits float32 [n, N] or None, how they were held out).

  Without trained.held_out: the validation vectors (the head did not train
  on them) and no logits. With it (the head trained on validation): the
  out-of-fold logits of the training images (copies left out) and of the
  validation images.
  """
  val_y = images.labels[split.validation]
  held = trained.held_out
  if held is None:
    return (images.vectors[split.validation], val_y, None,
            calibration_lib.VALIDATION_HELD_OUT)
  rows = np.concatenate([np.arange(len(split.train)),
                         held.n_train + np.arange(len(val_y))])
  return (None, np.concatenate([images.labels[split.train], val_y]),
          held.logits[rows], held.method)


def describe_figures(trained: train_lib.TrainResult, tuned=None) -> dict:
  """How each figure called validation, and each threshold, was obtained
  (for the log and run_summary.json)."""
  held = trained.held_out
  if tuned is not None and tuned.metadata['fine_tuned'].get(
      'kept_frozen_head'):
    tuned = None
  if tuned is not None:
    source = ('the fine-tuned network on the validation images (it trained '
              'on the training images only; the epoch was chosen on them)')
  elif held is None:
    source = calibration_lib.VALIDATION_HELD_OUT
  else:
    source = held.method
  return {
      'validation_metrics': source if held is None or tuned else (
          f'the validation images\' {held.method}'),
      'temperature_and_threshold': source if held is None or tuned else (
          f'the training and validation images\' {held.method}'),
      'test_metrics': 'the exported head on the test images, which nothing '
                      'was fitted or chosen on',
  }


def train_settings(config: Config) -> train_lib.Settings:
  """What to train, from the config (also the streaming path's)."""
  return train_lib.Settings(
      steps=config.how_many_training_steps,
      learning_rate=config.learning_rate,
      batch_size=config.train_batch_size,
      eval_step_interval=config.eval_step_interval,
      validation_batch_size=config.validation_batch_size,
      seed=config.random_seed,
      options=subset(train_options_lib.TrainOptions, config))


def train(config: Config, module, labels: Sequence[str],
          images: usable_lib.UsableImages, split: split_lib.Split,
          train_x: np.ndarray, train_y: np.ndarray, failures,
          groups: Optional[np.ndarray] = None):
  """Trains the head, writing TensorBoard summaries; returns (TrainResult,
  the intermediate-graph hook or None). groups: training_groups."""
  precision_lib.close(module)  # every vector is computed: fewer MiB below
  writers = summaries_lib.Writers(config.summaries_dir)
  intermediate = export_formats.intermediate_hook(
      subset(export_formats.ExportOptions, config), module, labels)
  explain_lib.write_run_config(writers.train, dataclasses.asdict(config),
                               module, labels, images.labels, split, failures)
  val_x = images.vectors[split.validation]
  val_y = images.labels[split.validation]
  points = train_lib.eval_steps(config.how_many_training_steps,
                                config.eval_step_interval)
  log = train_lib.EvalLog(points)
  settings = train_settings(config)
  progress = None  # SGD's bar (steps, rate, time left), made when SGD runs

  def on_eval(point):
    log(point)
    progress.update_to(point.step + 1)

  hooks = train_lib.Hooks(
      writers=writers, on_eval=on_eval,
      head_every=config.intermediate_store_frequency, on_head=intermediate,
      on_eval_head=explain_lib.ValidationImages(writers.validation, val_x,
                                                val_y, labels, points))
  try:
    # The converging solver (None: this run trains with SGD).
    trained = solve_lib.maybe_solve(config, train_x, train_y, len(labels),
                                    val_x, val_y, writers,
                                    train_groups=groups, labels=labels)
    if trained is None:
      progress = Progress('Training', config.how_many_training_steps,
                          unit='steps')
      trained = train_lib.train_head(train_x, train_y, len(labels), val_x,
                                     val_y, settings, hooks)
  finally:
    writers.close()
    if progress is not None:
      progress.finish()
  log.finish()
  return trained, intermediate


def report_test(config: Config, labels: Sequence[str],
                test: evaluate_lib.Evaluation,
                images: usable_lib.UsableImages, split: split_lib.Split,
                test_paths: Optional[Sequence[str]] = None,
                after: str = '') -> List[str]:
  """Logs the test accuracy (and each mistake when asked); returns the
  misclassified lines. Also the streaming path's (retrain/streamed.py).
  test_paths: the file of each row test was evaluated on (default: the
  split's test images); after: ' after fine-tuning' or ''."""
  # Retrain.py's line plus the Wilson 95% interval.
  logging.info('%s', confidence.format_accuracy(
      test.accuracy, test.count, prefix=f'Final test accuracy{after} ='))
  hint = confidence.narrowing_hint(test.accuracy, test.count)
  if hint:
    logging.info('%s', hint)
  misclassified = evaluate_lib.format_misclassified(
      test, images.paths_of(split.test) if test_paths is None else test_paths,
      labels)
  if config.print_misclassified_test_images:
    logging.info('=== MISCLASSIFIED TEST IMAGES%s ===', after.upper())
    for line in misclassified:
      logging.info(line)
  return misclassified


def evaluate(config: Config, labels: Sequence[str],
             trained: train_lib.TrainResult, images: usable_lib.UsableImages,
             split: split_lib.Split):
  """The test accuracy and the reports; returns (Evaluation, misclassified
  lines, Explained)."""
  test = evaluate_lib.evaluate(trained.head, images.vectors[split.test],
                               images.labels[split.test],
                               config.test_batch_size, seed=config.random_seed)
  misclassified = report_test(config, labels, test, images, split)
  held = trained.held_out
  explained = explain_lib.finish(
      subset(explain_lib.ReportOptions, config), labels, trained.head, images.vectors, images.labels, split,
      images.paths, images.rel_paths, test,
      trained.history[-1].step if trained.history else 0, trained.best_step,
      validation_probabilities=None if held is None else
      calibration_lib.softmax(held.validation_logits).astype(np.float32))
  for name, how in describe_figures(trained).items():
    logging.info('How the run measured %s: %s.', name.replace('_', ' '), how)
  return test, misclassified, explained


def fine_tune(config: Config, module, labels: Sequence[str],
              trained: train_lib.TrainResult, reported: tuple,
              images: usable_lib.UsableImages, split: split_lib.Split,
              copies=None):
  """Fine-tunes the top of the module with the head.

  Args:
    reported: what `evaluate` returned for the head alone.
    copies: the training images' distorted copies (what ensemble members
      left out by fine_tune_members train on), or None.

  Returns:
    (module, trained, reported, validation, FineTuned): the fine-tuned
    feature extractor and head; the test Evaluation, misclassified lines
    and Explained of the fine-tuned network (its reports written over the
    head's); the validation set calibration reads: (vectors float32 [n, D]
    from the fine-tuned network, their class ids int64 [n]). Without
    config.fine_tune: its arguments, the validation set's vectors and
    class ids, and None (an earlier run's fine_tune report is moved
    aside).
  """
  if not config.fine_tune:
    finetune_lib.retire_report(config.report_dir)
    return module, trained, reported, held_out_validation(
        trained, images, split), None
  # Fine-tuning chooses its epoch on validation, so it starts from a head
  # that did not train on validation (the frozen head may have).
  start = trained.train_only_head or trained.head
  if trained.train_only_head is not None:
    logging.info('Fine-tuning starts from the head fitted on the training '
                 'images alone, so that its validation set stays held out.')
  tuned = finetune_lib.fine_tune(
      subset(finetune_lib.FineTuneOptions, config),
      subset(distort_lib.Distortions, config), module, start, labels,
      images.paths, images.digests, images.labels, split,
      fixed=finetune_lib.FixedFeatures(images.vectors, copies))
  if tuned.fit.best_epoch == 0:
    logging.info('Fine-tuning did not beat its starting head on held-out '
                 'validation (it kept epoch 0), so the run keeps the frozen '
                 'head%s.', ' (trained on training + validation)' if
                 trained.train_only_head is not None else '')
    tuned.metadata['fine_tuned']['kept_frozen_head'] = True
    finetune_lib.write_report(config.report_dir, tuned)
    return module, trained, reported, held_out_validation(
        trained, images, split), tuned
  trained = dataclasses.replace(trained, head=tuned.head, held_out=None,
                                train_only_head=None)
  return (tuned.module, trained, report_fine_tuned(
      config, labels, trained, reported[2], images, split, tuned),
          (tuned.validation_features, tuned.validation_labels), tuned)


def report_fine_tuned(config: Config, labels: Sequence[str],
                      trained: train_lib.TrainResult, explained,
                      images: usable_lib.UsableImages, split: split_lib.Split,
                      tuned: finetune_lib.FineTuned) -> tuple:
  """(test Evaluation, misclassified lines, Explained) of the fine-tuned
  network: the test accuracy line and the validation and test reports
  again, as `evaluate` gave them for the head alone."""
  test = evaluate_lib.evaluate(trained.head, tuned.test_features,
                               tuned.test_labels, config.test_batch_size,
                               seed=config.random_seed)
  test_paths = [images.paths[i] for i in tuned.test_rows]
  misclassified = report_test(config, labels, test, images, split,
                              test_paths, after=' after fine-tuning')
  sets = {'validation': (tuned.validation_labels, trained.head.probabilities(
      tuned.validation_features), [images.paths[i]
                                   for i in tuned.validation_rows]),
          'test': (test.labels, test.probabilities,
                   [test_paths[r] for r in test.rows])}
  metrics, wrong, files = explain_lib.set_reports(
      subset(explain_lib.ReportOptions, config), labels, sets,
      trained.history[-1].step if trained.history else 0, note=', fine-tuned')
  return test, misclassified, dataclasses.replace(
      explained, metrics=metrics, misclassified=wrong, report_files=files)


def calibrate(config: Config, trained: train_lib.TrainResult,
              validation_x: Optional[np.ndarray], validation_y: np.ndarray,
              logits: Optional[np.ndarray] = None,
              held_out: str = calibration_lib.VALIDATION_HELD_OUT,
              test: Optional[evaluate_lib.Evaluation] = None
              ) -> calibration_lib.Confidence:
  """The temperature and the rejection threshold, chosen on
  held-out images: validation vectors float32 [n, D] the head did not train
  on, or out-of-fold `logits` float32 [n, N] (held_out_validation), with
  class ids [n]; the test ECE before and after from `test`. Logged and
  written to TensorBoard."""
  options = subset(calibration_lib.ConfidenceOptions, config)
  confidence = calibration_lib.calibrate(
      trained.head, validation_x, validation_y, options.target_precision,
      options.calibration_min_images, options.calibrate_confidence,
      logits=logits, held_out=held_out)
  if test is not None and test.count:
    confidence = confidence.with_test(
        np.log(np.maximum(test.probabilities.astype(np.float64), 1e-300)),
        test.labels)
  deployment_report.log_confidence(confidence)
  deployment_report.write_tensorboard(
      config.summaries_dir, confidence,
      trained.history[-1].step if trained.history else 0)
  return confidence


def fit_novelty(config: Config, images: usable_lib.UsableImages,
                split: split_lib.Split, num_classes: int, tuned=None):
  """The novelty score on the frozen vectors of the training and
  validation images, its threshold from out-of-fold scores; None when
  switched off (novelty_keep 0), after fine-tuning (the exported features
  are no longer the cached ones) or with fewer than two images a class."""
  if not config.novelty_keep:
    return None
  if tuned is not None and not tuned.metadata['fine_tuned'].get(
      'kept_frozen_head'):
    logging.info('No novelty score in the exports: it is fitted on the '
                 'frozen module\'s vectors and the fine-tuned network '
                 'computes other ones.')
    return None
  rows = np.concatenate([split.train, split.validation])
  y = images.labels[rows]
  counts = np.bincount(y, minlength=num_classes)
  folds = min(config.solver_folds, int(counts[counts > 0].min()))
  if folds < 2:
    logging.info('No novelty score: a class has fewer than two training '
                 'and validation images to hold out.')
    return None
  return novelty_lib.fit_on_split(
      images.vectors[rows], y, num_classes, config.novelty_components,
      config.novelty_keep, folds, config.random_seed)


def unknown_vectors(config: Config, module, runner) -> Optional[np.ndarray]:
  """float32 [n, D] vectors of the --unknown_dir photos (any layout;
  unreadable files skipped), through the bottleneck cache; None when it
  holds no image."""
  from retrain.common import walk as walk_lib  # pylint: disable=g-import-not-at-top
  from retrain.images import IMAGE_EXTENSIONS  # pylint: disable=g-import-not-at-top
  paths = sorted(os.path.join(folder, name)
                 for folder, _, names in os.walk(config.unknown_dir)
                 for name in names
                 if walk_lib.is_image_file(name, IMAGE_EXTENSIONS))
  logging.info('Scoring %d photos of --unknown_dir %s (never trained on).',
               len(paths), config.unknown_dir)
  if not paths:
    return None
  dataset = types.SimpleNamespace(images=[types.SimpleNamespace(path=p)
                                          for p in paths])
  return bottlenecks(config, dataset, module, runner).vectors


def trust_checks(config: Config, module, runner, labels: Sequence[str],
                 confidence: calibration_lib.Confidence,
                 images: usable_lib.UsableImages, split: split_lib.Split,
                 test: evaluate_lib.Evaluation, tuned,
                 trained: train_lib.TrainResult
                 ) -> calibration_lib.Confidence:
  """Fits the novelty score (into confidence.head, so every export
  computes it), scores the test and --unknown_dir photos, writes
  <report_dir>/trust.json with the reliability diagram and the novelty
  histogram; returns the confidence with the novelty in its head."""
  novelty = fit_novelty(config, images, split, len(labels), tuned)
  sets = {}
  if novelty is not None:
    confidence = dataclasses.replace(confidence, head=dataclasses.replace(
        confidence.head, novelty=novelty))
    sets = {'held_out': novelty.held_out_scores,
            'test': novelty.scores(images.vectors[split.test])}
    unknown = (unknown_vectors(config, module, runner)
               if config.unknown_dir else None)
    if unknown is not None:
      sets['unknown'] = novelty.scores(unknown)
    for name, scores in sets.items():
      counts = trust_report.flagged(scores, novelty.threshold)
      logging.info('Novelty threshold %.3f (keeps %.0f %% of held-out '
                   'images of the classes): %s: %d of %d flagged "not like '
                   'any class".', novelty.threshold, 100 * novelty.keep,
                   name.replace('_', '-'), counts['flagged'],
                   counts['count'])
  trust_report.write(
      config.report_dir, config.summaries_dir,
      trained.history[-1].step if trained.history else 0,
      describe_figures(trained, tuned), confidence,
      test.probabilities if test.count else None, test.labels, novelty,
      sets)
  return confidence


def export(config: Config, module, labels: Sequence[str],
           trained: train_lib.TrainResult, test: evaluate_lib.Evaluation,
           images: usable_lib.UsableImages, split: split_lib.Split,
           intermediate, confidence: calibration_lib.Confidence,
           fine_tune_metadata: Optional[dict] = None, float_module=None):
  """Writes the labels file and every export asked for; returns (the
  SavedModel folder or None, <report_dir>/deployment.json).

  With int8 bottlenecks (module quantised, float_module the float one the
  exports hold), the exports' held-out accuracy on float features is
  measured and reported beside the training figure
  (precision_lib.check_float_exports).

  Every export carries the calibrated head (confidence.head: the same
  predictions as trained.head) and the confidence metadata; a quantized TFLite model is
  first checked on the test set (the validation set when there is none).
  """
  export_lib.write_labels(config.output_labels, labels)
  deploy_metadata = {'confidence': confidence.metadata()}
  if confidence.head.novelty is not None:
    deploy_metadata['novelty'] = confidence.head.novelty.metadata()
  held_out = 'test' if len(split.test) else 'validation'
  rows = split.subset(held_out)
  gate = quantization_check.Gate(
      images.paths_of(rows), images.labels[rows], held_out,
      config.max_quantization_loss, config.keep_lossy_quantization,
      config.tflite_calibration_images)
  float_check = None
  if float_module is not None and precision_lib.is_quantized(module):
    float_check = check_float_exports(
        config, float_module, confidence.head, images, rows, held_out,
        test.accuracy if held_out == 'test' else None)
    phases_lib.release_memory()  # its float interpreters, before the exports
  other_formats = export_formats.export_other_formats(
      subset(export_formats.ExportOptions, config), module, confidence.head,
      labels, images.paths_of(split.train), gate, deploy_metadata)
  if float_check is not None:
    other_formats['float_export_check'] = float_check
  if intermediate is not None:
    other_formats['intermediate_graphs'] = intermediate.written
  phases_lib.release_memory()  # the frozen graph's copies of the weights
  saved = None
  if config.saved_model_dir:
    saved = export_lib.export_saved_model(
        config.saved_model_dir, module, confidence.head, labels,
        config.final_tensor_name,
        extra_metadata={'modules': ensemble_lib.describe_modules(module),
                        'test_accuracy': test.accuracy,
                        'test_count': test.count,
                        'other_exports': other_formats,
                        'quantization_checks': [c.metadata()
                                                for c in gate.results],
                        **deploy_metadata, **(fine_tune_metadata or {})})
    logging.info('Exported the classifier to %s (labels in %s).', saved,
                 config.output_labels)
  deployment = deployment_report.write_report(
      config.report_dir, confidence, gate.results, other_formats)
  return saved, deployment


def check_float_exports(config: Config, float_module, head,
                        images: usable_lib.UsableImages, rows, held_out: str,
                        int8_accuracy: Optional[float]) -> Optional[dict]:
  """precision_lib.check_float_exports on the held-out `rows` of `images`
  (int8_accuracy None: measured here on their int8 vectors)."""
  if int8_accuracy is None:
    int8_accuracy = float(np.mean(
        head.logits(images.vectors[rows]).argmax(axis=1) ==
        images.labels[rows])) if len(rows) else float('nan')
  digests = images.digests_of(rows)
  probe = precision_lib.Probe(
      paths=images.paths_of(rows),
      keyed=(digests, np.arange(len(rows), dtype=np.int64), []),
      bottleneck_dir=config.bottleneck_dir,
      batch_size=config.bottleneck_batch_size,
      max_pixels=config.max_image_pixels)
  return precision_lib.check_float_exports(
      float_module, head, probe, images.labels[rows], int8_accuracy,
      held_out, config.bottleneck_runtime, config.module_cache_dir)


def _model_lines(config: Config, module, labels, stats, timings) -> dict:
  """The headline's model, size and speed lines of the results page."""
  members = ensemble_lib.describe_modules(module)
  model = (f'{" + ".join(m["handle"] for m in members)} '
           f'({module.output_dim}-d features) and a softmax head over '
           f'{len(labels)} classes ({config.head_solver})')
  sizes = []
  for what, path in (('SavedModel', config.saved_model_dir),
                     ('frozen graph', config.output_graph),
                     ('TFLite', config.tflite_output_file),
                     ('ONNX', config.onnx_output_file)):
    if path and os.path.exists(path):
      size = (sum(os.path.getsize(os.path.join(d, f))
                  for d, _, files in os.walk(path) for f in files)
              if os.path.isdir(path) else os.path.getsize(path))
      sizes.append(f'{what} {size / 2 ** 20:.1f} MB')
  speed = ''
  if stats.computed and timings.get('bottlenecks'):
    speed = (f'{stats.computed / timings["bottlenecks"]:.1f} photos/s '
             'decoded and through the feature module (this run, this '
             'machine)')
  return {'model': model, 'model_size': ', '.join(sizes), 'speed': speed}


def start_results_page(config: Config, layout, crops, module, labels,
                       trained, test: evaluate_lib.Evaluation,
                       images: usable_lib.UsableImages,
                       split: split_lib.Split, tuned) -> tuple:
  """The results page's report dict of the test set (the validation set
  when there is no test set) and its heat maps, started on a thread so
  that they are drawn while the export runs: (report, explainer or None,
  future of results_lib.grid_heat_maps).
  Heat maps: retrain/report/heatmap.py (none for box crops)."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  rows = (np.asarray(tuned.test_rows) if tuned is not None else split.test)
  name, truth, probs = 'test', test.labels, test.probabilities
  files = [images.paths[rows[r]] for r in test.rows]
  if not test.count and len(split.validation):
    name, rows = 'validation', split.validation
    truth = images.labels[rows]
    probs = trained.head.probabilities(images.vectors[rows])
    files = images.paths_of(rows)
  report = results_lib.build(
      labels, [labels[y] for y in truth], probs, files, set=name,
      title=f'Results: {os.path.basename(os.path.normpath(config.image_dir))}',
      validation=(f'{len(split.validation)} validation and '
                  f'{len(split.test)} test photos held out of training; '
                  f'split: {layout.description}, validation '
                  f'{config.validation_percentage}%, test '
                  f'{config.testing_percentage}% of each class by a stable '
                  'hash of the file name unless the layout gives the split'),
      history=[dataclasses.asdict(p) for p in trained.history],
      settings={k: str(v) for k, v in dataclasses.asdict(config).items()})
  explainer = None if crops is not None else heatmap_lib.explainer(
      module, trained.head, fine_tuned=tuned is not None)
  pool = concurrent.futures.ThreadPoolExecutor(1)
  future = pool.submit(results_lib.grid_heat_maps, explainer, report)
  pool.shutdown(wait=False)
  return report, explainer, future


def results_page(config: Config, started: tuple, module, labels, stats,
                 phases) -> Optional[str]:
  """Writes <report_dir>/report.html and report.json from what
  start_results_page began; returns the page's path."""
  import time  # pylint: disable=g-import-not-at-top
  report, explainer, future = started
  heat = future.result()
  report.update(seconds=time.monotonic() - phases.started,
                **_model_lines(config, module, labels, stats, phases.timings))
  written = results_lib.write(config.report_dir, report, explainer,
                              heat=heat)
  logging.info('Results page: %s', written[0])
  return written[0]


def write_run_summary(config: Config, result: RunResult) -> str:
  """Writes <report_dir>/run_summary.json (config, counts, accuracy, timings)."""
  os.makedirs(config.report_dir, exist_ok=True)
  path = os.path.join(config.report_dir, RUN_SUMMARY_FILE)
  summary = {
      'config': dataclasses.asdict(config),
      'labels': result.labels,
      'counts': result.counts,
      'test_accuracy': result.test_accuracy,
      'test_count': result.test_count,
      'bottlenecks': dataclasses.asdict(result.bottleneck_stats),
      'skipped': len(result.skipped),
      'timings_seconds': result.timings,
      'peak_rss_mib_after_phase': result.peak_rss_mib,
      'saved_model_dir': result.saved_model_dir,
      'how_measured': result.figures,
      'bottleneck_precision': result.bottleneck_precision,
  }
  if result.multi_label is not None:
    summary['multi_label_test'] = result.multi_label.to_json()
  return atomic.write_json(path, summary)
