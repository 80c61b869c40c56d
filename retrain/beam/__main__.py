"""Command line: `python -m retrain.beam --image_dir DIR --bottleneck_dir BN
--runner DirectRunner` (or the `retrain-beam` script).

The only module of retrain.beam that reads flags. It accepts every flag of
`python -m retrain` (the input, module, --bottleneck_dir, distortion,
--distorted_copies, --random_seed and --report_dir ones are used; training
and export flags are accepted and ignored, so one command line serves both
tools), the Beam job's own flags below, and passes every other argument to
Beam as pipeline options (--runner, --direct_num_workers,
--direct_running_mode, --project, --region, --temp_location, --num_workers,
--setup_file, ...).
"""

from __future__ import annotations

import dataclasses

from absl import app, flags, logging

from retrain import __main__ as retrain_cli
from retrain.beam.options import BEAM_DEFAULTS, BeamOptions

_B = BEAM_DEFAULTS

flags.DEFINE_integer('beam_min_batch_size', _B.min_batch_size,
                     'Fewest images per module call (RunInference batching).')
flags.DEFINE_integer('beam_max_batch_size', _B.max_batch_size,
                     'Most images per module call (RunInference batching).')
flags.DEFINE_bool('beam_large_model', _B.large_model,
                  'Share one module per machine between worker processes.')
flags.DEFINE_integer('beam_model_copies', _B.model_copies,
                     'With --beam_large_model, module copies per machine (0: '
                     "Beam's default).")
flags.DEFINE_integer('shard_max_vectors', _B.shard_max_vectors,
                     'Most vectors per cache shard a bundle writes.')
flags.DEFINE_bool('merge_local_shards', _B.merge_local,
                  'Merge the shards of a local cache folder into one at the '
                  'end.')

FLAGS = flags.FLAGS


def beam_options_from_flags() -> BeamOptions:
  return BeamOptions(min_batch_size=FLAGS.beam_min_batch_size,
                     max_batch_size=FLAGS.beam_max_batch_size,
                     large_model=FLAGS.beam_large_model,
                     model_copies=FLAGS.beam_model_copies,
                     shard_max_vectors=FLAGS.shard_max_vectors,
                     merge_local=FLAGS.merge_local_shards)


def parse_flags(argv):
  """absl parses its own flags; the rest are Beam's (returned after argv[0])."""
  return FLAGS(argv, known_only=True)


def main(argv):
  logging.set_verbosity(FLAGS.logging_verbosity.lower().replace('warn',
                                                                'warning'))
  try:
    from retrain.beam import job
  except ImportError as e:
    if 'apache_beam' not in str(e):
      raise
    logging.error('Apache Beam is not installed (%s): pip install '
                  '"retrain[beam]" (or ".[beam]" in a checkout).', e)
    return 1
  from retrain.errors import RetrainError
  config = retrain_cli.config_from_flags()
  from retrain.common import runs
  if runs.in_run_folder(config.report_dir):  # The job's own run folder.
    config = dataclasses.replace(config, report_dir=runs.fill(
        config.report_dir, runs.new_run_folder(config.output_dir,
                                               runs.data_set_name(
                                                   config.image_dir,
                                                   config.image_labels_csv))))
  try:
    job.run(config, beam_options_from_flags(), argv[1:])
  except RetrainError as e:
    logging.error('%s', retrain_cli.flag_wording(e))
    return 1
  return 0


def run():
  """Entry point of the `retrain-beam` console script."""
  from retrain.common import cli
  cli.show_flags_in_help([__name__, retrain_cli.__name__])
  # Not cli.run: flags absl does not know are Beam's, so parsing keeps them
  # (known_only) instead of failing.
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
