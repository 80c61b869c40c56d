"""Command line: `python -m retrain.beam --image_dir DIR --bottleneck_dir BN
--runner DirectRunner` (or the `retrain-beam` script).

The only module of retrain.beam that reads flags. It accepts every flag of
`python -m retrain` (the input, module, --bottleneck_dir, distortion,
--distorted_copies, --random_seed and --report_dir ones are used; training
and export flags are accepted and ignored, so one command line serves both
tools), the Beam job's own (retrain/beam/options.py), and passes every other argument to
Beam as pipeline options (--runner, --direct_num_workers,
--direct_running_mode, --project, --region, --temp_location, --num_workers,
--setup_file, ...).
"""

from __future__ import annotations

from absl import app, flags, logging

from retrain import command_line

command_line.define_beam_flags()
FLAGS = flags.FLAGS


def parse_flags(argv):
  """absl parses its own flags; the rest are Beam's (returned after argv[0])."""
  return FLAGS(argv, known_only=True)


def main(argv):
  logging.set_verbosity(command_line.verbosity())
  try:
    from retrain.beam import job
  except ImportError as e:
    if 'apache_beam' not in str(e):
      raise
    logging.error('Apache Beam is not installed (%s): pip install '
                  '"retrain[beam]" (or ".[beam]" in a checkout).', e)
    return 1
  from retrain.errors import RetrainError
  config = command_line.config_from_flags()
  from retrain.common import runs
  if runs.in_run_folder(config.outputs.report_dir):  # The job's own run folder.
    config = config.replace(report_dir=runs.fill(
        config.outputs.report_dir, runs.new_run_folder(config.outputs.output_dir,
                                               runs.data_set_name(
                                                   config.data.image_dir,
                                                   config.data.image_labels_csv))))
  try:
    job.run(config, command_line.beam_options_from_flags(), argv[1:])
  except RetrainError as e:
    logging.error('%s', command_line.flag_wording(e))
    return 1
  return 0


def run():
  """Entry point of the `retrain-beam` console script."""
  from retrain.common import cli
  cli.show_flags_in_help([command_line.BEAM_FLAGS, command_line.RUN_FLAGS])
  # Not cli.run: flags absl does not know are Beam's, so parsing keeps them
  # (known_only) instead of failing.
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
