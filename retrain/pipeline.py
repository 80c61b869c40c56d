"""The whole run: discover -> split -> bottlenecks -> train -> evaluate -> export.

`run(config)` takes a `retrain.config.Config` and returns a `RunResult` that
tests (and other programs) can inspect; it reads no flags. It is the only
sequence of steps: the steps themselves live in retrain/steps/ (prepare,
vectors, head, trust, outputs; streamed and multilabel for the cache's
storage and the multi-label head).
"""

from __future__ import annotations

import dataclasses
import html
import os
from typing import Dict, List, Optional

import bottleneck_cache
from retrain.common import atomic, background, quiet, runs
from retrain.common import phases as phases_lib
from retrain.config import DEFAULTS, Config
from retrain.data import split as split_lib
from retrain.export import from_disk
from retrain.finetune import run as finetune_lib
from retrain.head import auto as head_auto
from retrain.report import trust as trust_report
from retrain.report import writer as explain_lib
from retrain.steps import (
  head,
  multilabel,
  outputs,
  prepare,
  streamed,
  trust,
  vectors,
)

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
      (retrain/report/writer.py).
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
  # With int8 bottlenecks: what the check of the exports measured
  # (retrain.steps.outputs.Exported.export_check), else None.
  export_check: Optional[dict] = None
  # --multi_label: the test set's retrain.report.multilabel.MultiLabelMetrics
  # (test_accuracy is then its exact-match ratio).
  multi_label: Optional[object] = None
  # <report_dir>/report.html (docs/results-page.md), or None.
  results_page: Optional[str] = None
  # The run folder (None when every output was given a path of its own)
  # and the settings as run, every output path filled in.
  run_dir: Optional[str] = None
  config: Optional[Config] = None
  # The plan of the conversions left to retrain.export_job (run's
  # convert_later), or None.
  pending_exports: Optional[str] = None

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
  return config.replace(head_solver=head_auto.resolve(
      config.head.head_solver, head_auto.changed_training_fields(config,
                                                            DEFAULTS)))


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
            or config.outputs.intermediate_store_frequency > 0]
  run_dir = None
  if any(runs.in_run_folder(config.get(f)) for f in fields):
    run_dir = runs.new_run_folder(config.outputs.output_dir, runs.data_set_name(
        config.data.image_dir, config.data.image_labels_csv or config.data.train_csv))
  filled = {f: runs.fill(config.get(f), run_dir) for f in OUTPUT_FIELDS}
  filled['bottleneck_dir'] = runs.fill(config.cache.bottleneck_dir, None)
  return config.replace(**filled), run_dir


def given_outputs(config: Config) -> Dict[str, str]:
  """{setting: path} of the outputs named by the user (not in the run
  folder): the paths another run must not write at the same time."""
  return {f: config.get(f) for f in OUTPUT_FIELDS
          if config.get(f) and not runs.in_run_folder(config.get(f))
          and (f != 'intermediate_output_graphs_dir' or
               config.outputs.intermediate_store_frequency > 0)}


def run(config: Config, convert_later: bool = False) -> RunResult:
  """Runs retraining end to end; see the module docstring.

  Outputs go into a new run folder (see place_outputs) and the paths given
  instead, each locked for the run (retrain/common/runs.py); when the run
  finishes, `latest` points to its run folder, which also keeps the
  native log (retrain/common/quiet.py).

  convert_later: the frozen graph, TFLite and ONNX conversions are left
  to retrain.export_job (RunResult.pending_exports: their plan, which
  takes the locks of the paths given, the run folder and the `latest`
  pointer along; python -m retrain hands over to it); False: all done
  here.

  Raises:
    OutputError: another run is writing one of the given paths.
  """
  config = resolve_head_solver(config)
  with runs.locked(given_outputs(config)) as locks:
    config, run_dir = place_outputs(config)
    try:
      result = run_steps(config, convert_later)
    except BaseException:
      if run_dir and runs.remove_if_empty(run_dir):
        run_dir = None
      if run_dir:
        quiet.keep_log_in(run_dir)
      raise
    if result.pending_exports:
      from_disk.write_plan({**from_disk.read_plan(result.pending_exports),
                            'run_dir': run_dir, 'locks': list(locks)},
                           result.pending_exports)
      locks.clear()  # Released by the export job.
  if run_dir:
    quiet.keep_log_in(run_dir)
    if not result.pending_exports:
      runs.point_latest(run_dir)
  return dataclasses.replace(result, run_dir=run_dir, config=config)


def run_steps(config: Config, convert_later: bool = False) -> RunResult:
  """The steps of `run`, with every output path filled in: prepare ->
  vectors -> split -> train -> evaluate -> export. The bottleneck step
  chooses where the vectors live (memory or the cache), the head kind
  (softmax or one sigmoid per label) comes from the settings; the trainer
  and evaluator follow from both."""
  phases_lib.freeze_imports()
  # From the process's start on, for a command-line run (its `launch`).
  phases = phases_lib.Phases(launched=phases_lib.take_launch())
  # Figures that need nothing more of the run are drawn while it goes on.
  with background.deferred():
    prepared = prepare.prepare(config, phases)
    with phases('bottlenecks'):
      found = vectors.compute(config, prepared)
    if config.data.multi_label:
      result = _multi_label(config, prepared, found, phases)
    elif found.storage == 'cache':
      result = _streamed(config, prepared, found, phases, convert_later)
    else:
      result = _in_memory(config, prepared, found, phases, convert_later)
  vectors.warn_skipped(found.skipped, found.reports)
  write_run_summary(config, result)
  return result


def _result(found: vectors.Vectors, split: split_lib.Split, phases,
            copies_stats, **fields) -> RunResult:
  """The RunResult of a run, the fields every run has filled in."""
  return RunResult(
      labels=found.labels,
      counts={name: int(len(split.subset(name))) for name in split_lib.SUBSETS},
      bottleneck_stats=found.computed.stats, skipped=found.skipped,
      timings=phases.timings, distorted_stats=copies_stats,
      peak_rss_mib=phases.peak_rss, **fields)


def _in_memory(config: Config, prepared: prepare.Prepared,
               found: vectors.Vectors, phases, convert_later: bool = False
               ) -> RunResult:
  """The softmax head on vectors in memory: the converging solver or SGD,
  fine-tuning, calibration, the trust checks and the results page."""
  images, labels = found.images, found.labels
  split = vectors.make_split(config, prepared.layout, images)
  with phases('distorted_copies') as phase:
    training = vectors.training_set(config, prepared.runner, images, split,
                                    prepared.crops)
    if training.copies is None:
      phase.skip()
  near = vectors.near_duplicates(images, split)
  background.run(trust_report.load_matplotlib)
  with phases('training'):
    trained = head.train(config, prepared.module, found, split, training,
                         vectors.training_groups(split, training.copies,
                                                 near))
  with phases('evaluation'):
    reported = head.evaluate(config, labels, trained.result, images, split)
    # Fine-tuning before calibration, so that the exported (calibrated)
    # head is the fine-tuned one.
    tuned = head.fine_tune(config, prepared.module, labels, trained.result,
                           reported, images, split, training.copies)
    confidence = head.calibrate(config, tuned.trained, *tuned.validation,
                                test=tuned.reported.test)
    confidence = trust.trust_checks(config, prepared, found, split, tuned,
                                    confidence, groups=near)
  # The heat maps are drawn while the SavedModel is written: its tracing
  # keeps one core busy and leaves the other mostly idle (on the default
  # ensemble, 3,670 photos: 1.4 s less of a warm run, and the peak stays
  # that of the training and evaluation of a cold one).
  page = outputs.start_results_page(config, prepared, found, split, tuned)
  with phases('export'):
    exported = outputs.export(config, prepared, found, split, tuned,
                              confidence, trained.intermediate, convert_later)
  with phases('results_page'):
    # The figures first: the page draws with matplotlib too.
    background.wait()
    page = outputs.results_page(config, page, tuned.module, labels,
                                found.computed.stats, phases)
  phases.total()
  test = tuned.reported.test
  return _result(
      found, split, phases,
      training.copies.stats if training.copies is not None else None,
      test_accuracy=test.accuracy, test_count=test.count,
      history=tuned.trained.history,
      misclassified=tuned.reported.misclassified,
      saved_model_dir=exported.saved_model_dir,
      pending_exports=exported.pending_exports,
      explained=tuned.reported.explained,
      deployment_report=exported.deployment_report,
      export_check=exported.export_check,
      fine_tuned=tuned.fine_tuned,
      figures=head.describe_figures(tuned.trained, tuned.fine_tuned,
                                    confidence.head.novelty),
      bottleneck_precision=prepared.precision, results_page=page)


def _streamed(config: Config, prepared: prepare.Prepared,
              found: vectors.Vectors, phases, convert_later: bool = False
              ) -> RunResult:
  """The softmax head past the memory budget: streaming SGD and evaluation
  from the cache in chunks (retrain/steps/streamed.py)."""
  images, labels = found.images, found.labels
  split = vectors.make_split(config, prepared.layout, images)
  with phases('distorted_copies') as phase:
    copies = streamed.copy_keys(config, prepared.module, prepared.runner,
                                images, split)
    if copies is None:
      phase.skip()
  with phases('training'):
    stream = streamed.open_stream(config, prepared.module, images, split,
                                  copies)
    trained = streamed.train(config, stream, len(labels))
  with phases('evaluation'):
    test = streamed.evaluate(config, trained, stream)
    misclassified = head.report_test(config, labels, test, images, split)
    confidence = streamed.calibrate(config, trained, stream, test)
    tuned = head.Tuned(prepared.module, trained,
                       head.Reported(test, misclassified, None), (), None)
    confidence = trust.trust_checks(config, prepared, found, split, tuned,
                                    confidence,
                                    streamed.sampler(config, stream))
  with phases('export'):
    exported = outputs.export(config, prepared, found, split, tuned,
                              confidence, convert_later=convert_later)
    background.wait()
  phases.total()
  return _result(
      found, split, phases, copies.stats if copies is not None else None,
      test_accuracy=test.accuracy, test_count=test.count,
      history=trained.history, misclassified=misclassified,
      saved_model_dir=exported.saved_model_dir,
      pending_exports=exported.pending_exports,
      deployment_report=exported.deployment_report)


def _multi_label(config: Config, prepared: prepare.Prepared,
                 found: vectors.Vectors, phases) -> RunResult:
  """One sigmoid per label, fitted with L-BFGS on vectors in memory, or
  read from the cache in chunks past the memory budget
  (retrain/steps/multilabel.py)."""
  images, labels = found.images, found.labels
  targets = prepared.targets[images.index]
  split = multilabel.make_split(config, prepared.layout, images, targets)
  with phases('distorted_copies') as phase:
    if found.storage == 'cache':
      copies = streamed.copy_keys(config, prepared.module, prepared.runner,
                                  images, split)
      fit_x, test_x = multilabel.cached_rows(config, prepared.module, images,
                                             split, copies)
    else:
      training = vectors.training_set(config, prepared.runner, images, split)
      copies, fit_x, test_x = training.copies, training.x, None
    if copies is None:
      phase.skip()
  with phases('training'):
    fitted = multilabel.train(config, labels, images, split, targets,
                              fit_x, copies)
  with phases('evaluation'):
    test = multilabel.evaluate(config, labels, fitted, images, split,
                               targets, test_x)
  with phases('export'):
    saved = multilabel.export(config, prepared.module, labels, fitted, test,
                              images, split)
  with phases('results_page'):
    page = multilabel.results_page(config, test, fitted)
  phases.total()
  return _result(
      found, split, phases, copies.stats if copies is not None else None,
      test_accuracy=test.exact_match, test_count=test.count, history=[],
      misclassified=[], saved_model_dir=saved, multi_label=test,
      bottleneck_precision=prepared.precision, results_page=page)


def _validation_figures(result: RunResult) -> dict:
  """validation_accuracy in [0, 1] and validation_count as the run reports
  them (how_measured says how they were obtained), when there are any."""
  metrics = getattr(result.explained, 'metrics', None) or {}
  if 'validation' not in metrics:
    return {}
  return {'validation_accuracy': metrics['validation'].accuracy,
          'validation_count': metrics['validation'].count}


def write_run_summary(config: Config, result: RunResult) -> str:
  """Writes <report_dir>/run_summary.json (config, counts, accuracy, timings)."""
  os.makedirs(config.outputs.report_dir, exist_ok=True)
  path = os.path.join(config.outputs.report_dir, RUN_SUMMARY_FILE)
  summary = {
      'config': config.flat(),
      'labels': result.labels,
      'counts': result.counts,
      'test_accuracy': result.test_accuracy,
      'test_count': result.test_count,
      'export_check': result.export_check,
      **_validation_figures(result),
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
