"""The last exports of `python -m retrain`, each in a fresh process.

When a run has written its SavedModel, reports and results page, `python
-m retrain` replaces itself (os.execv: the same process id, standard
output and error) by `python -m retrain.export_job PLAN`, which converts
the frozen graph, TFLite and ONNX exports from the SavedModel on disk
(retrain.export.from_disk), one stage per process: after each, the job
replaces itself again, so no converter's leftovers add to the next one's
and nothing of the training is alive beside them. The last one records
the files in the SavedModel's metadata, the deployment report and the
results page's size line, points `latest` to the run folder, releases
the locks of the paths given and logs the run's closing lines, as the
run itself would have.

Ctrl-C ends it with one line and status 130, as during the run; what is
written stays.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import types

from retrain.common import cli, quiet, runs
from retrain.export import from_disk

USAGE = """retrain.export_job: the exports of a run, converted from its SavedModel.

Started by `python -m retrain` (not by hand) with the plan file it wrote.
"""


def hand_over(plan_path: str, config, result, verbosity: str,
              vectors_cached: int) -> None:
  """Replaces this process by the export job of `plan_path` (never
  returns).

  Args:
    config, result: the run's retrain.config.Config and
      retrain.pipeline.RunResult, for its closing lines.
    verbosity: the --logging_verbosity of the run.
    vectors_cached: the vectors the run stored, for the Ctrl-C line.
  """
  plan = from_disk.read_plan(plan_path)
  explained = getattr(result, 'explained', None)
  plan.update(
      config=config.flat(), verbosity=verbosity,
      vectors_cached=vectors_cached, handed_over_at=time.monotonic(),
      closing={'seconds': result.timings.get('total', 0.0),
               'test_accuracy': result.test_accuracy,
               'test_count': result.test_count,
               'saved_model_dir': result.saved_model_dir,
               'results_page': result.results_page,
               'report_files': (list(explained.report_files)
                                if explained is not None else None)})
  from_disk.write_plan(plan, plan_path)
  _exec(plan_path)


def _exec(plan_path: str) -> None:
  """Replaces this process by `python -m retrain.export_job plan_path`,
  standard error back on the terminal (retrain.common.quiet had moved it
  to the native log)."""
  quiet.release_log()  # A temporary native log; one in the run folder stays.
  sys.stdout.flush()
  sys.stderr.flush()
  if sys.stderr.fileno() != 2:
    os.dup2(sys.stderr.fileno(), 2)
  # Ctrl-C while the next program starts waits (blocked signals stay
  # blocked, and pending, across exec) until its handler is in place.
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  os.execv(sys.executable, [sys.executable, '-m', 'retrain.export_job',
                            plan_path])


def _closing(plan: dict):
  """The (config, result) summary.summary_lines reads, from the plan."""
  from retrain.config import Config
  closing = dict(plan['closing'])
  closing['timings'] = {'total': closing.pop('seconds') + time.monotonic()
                        - plan['handed_over_at']}
  if closing['test_accuracy'] is None:  # NaN in strict JSON
    closing['test_accuracy'] = math.nan
  files = closing.pop('report_files')
  closing['explained'] = (types.SimpleNamespace(report_files=files)
                          if files is not None else None)
  return (Config.from_flat(**plan['config']),
          types.SimpleNamespace(multi_label=None, **closing))


def _end(plan: dict, plan_path: str, finished: bool) -> None:
  """Releases the run's locks and the plan file; points `latest` to the
  run folder when `finished`."""
  if finished and plan.get('run_dir'):
    runs.point_latest(plan['run_dir'])
  runs.release(plan.get('locks') or [])
  from_disk.remove_temporary(plan, every=True)
  if os.path.exists(plan_path):
    os.remove(plan_path)


def main(argv):
  from retrain import command_line
  plan_path = argv[1]
  plan = from_disk.read_plan(plan_path)
  cli.quiet_logging(plan['verbosity'])
  if plan.get('run_dir'):
    quiet.keep_log_in(plan['run_dir'])
  config = _closing(plan)[0]
  _job['plan'], _job['path'] = plan, plan_path
  # Ctrl-C from here on (or one that came while this program started)
  # ends the job with its one line.
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
  finished = False
  try:
    stages = from_disk.pending(plan)
    if stages:
      from_disk.run_stage(plan, stages[0], config.outputs)
      from_disk.write_plan(plan, plan_path)
      if from_disk.pending(plan):
        _exec(plan_path)
    from_disk.finish(plan, config.outputs.report_dir)
    from retrain.steps import outputs
    outputs.refresh_model_sizes(config)
    finished = True
  except Exception as e:  # noqa: BLE001 command_line.failed re-raises bugs
    return command_line.failed(e)
  finally:  # Not reached past os.execv (this program is gone then).
    _end(plan, plan_path, finished)
  from retrain import summary
  summary.log_summary(config, _closing(plan)[1])
  return 0


# The plan being run, for the Ctrl-C line.
_job = {}


def interrupted_line() -> str:
  """What Ctrl-C prints (as `python -m retrain` does); the locks and the
  plan are released first."""
  plan = _job.get('plan') or {}
  if plan:
    _end(plan, _job['path'], finished=False)
  return cli.resume_line(plan.get('vectors_cached', 0))


if __name__ == '__main__':
  cli.run(main, 'retrain', USAGE, [], on_interrupt=interrupted_line)
