"""Fine-tuning against the best frozen-feature head, on the same k folds.

  python bench/fine_tune_kfold.py DIR [--folds 5] [--boundaries 11,15]
      [--frozen efficientnet_lite0+lite1+lite2] [--ensemble_boundaries -1]
      [--epochs 10] [--set NAME=VALUE ...]

Every image is tested exactly once (stratified k-fold; each fold's
training part split 8:1 into training and validation, the pipeline's
80/10 ratio: bench/accuracy.py's folds). On each fold:
  frozen: the default --tfhub_module (an ensemble) with the default head
    solver (L-BFGS), trained on training, chosen on validation;
  block K: the Lite0 head (same solver), then --fine_tune from block K with
    the default settings (early stopping on that fold's validation);
  ensemble -K: as the pipeline does, --fine_tune of the --frozen
    ensemble from each member's K-th last block (--fine_tune_from -K),
    starting from the frozen head fitted on the training part alone (so
    that validation stays held out), for each --ensemble_members value
    (--fine_tune_members: "all" every member, "" the first, the others on
    their frozen vectors); a fold whose fine-tuned network does not beat
    the frozen head's held-out validation accuracy by the pipeline's
    margin (or that keeps epoch 0) counts the frozen head's predictions
    (the run exports the frozen head then).
Lite0's activations are computed once per image and shared by the folds
(the bottleneck cache); the seconds per fold are the fine-tuning's own
(training + validation passes). Prints accuracy with its Wilson 95%
interval for each, and how many folds fine-tuning won, tied and lost
against the frozen head.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import accuracy as accuracy_bench  # noqa: E402  (bench/accuracy.py)
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from retrain.bottlenecks import ensemble as ensemble_bottlenecks  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.data import sources as layouts  # noqa: E402
from retrain.data.split import Split  # noqa: E402
from retrain.features import ensemble as ensemble_lib  # noqa: E402
from retrain.features import modules as features  # noqa: E402
from retrain.finetune import plans as finetune_plans  # noqa: E402
from retrain.finetune import run as finetune_lib  # noqa: E402
from retrain.head import solver as solver_lib  # noqa: E402
from retrain.report import confidence  # noqa: E402

LITE0 = 'efficientnet_lite0'  # the single module compared


def fine_tune_fold(args, work, block, module, head, labels, paths, digests, y,
                   rows, members='', fixed=None):
  """(test predictions int64 [n_test], seconds, the FineTuned) of
  fine-tuning one fold (of the ensemble members named by `members`, '' all,
  the others on their frozen vectors `fixed`)."""
  train_rows, val_rows, test_rows = rows
  config = DEFAULTS.replace(tfhub_module=module.handle, fine_tune=True,
      fine_tune_from=block, fine_tune_epochs=args.epochs,
      bottleneck_dir=os.path.join(work, 'bn'),
      summaries_dir=os.path.join(work, 'logs'), report_dir='',
      checkpoint_path='', module_cache_dir=args.module_cache_dir,
      fine_tune_members=members)
  config = config.replace(**settings(args.set))
  started = time.monotonic()
  tuned = finetune_lib.fine_tune(
      config, module, head, labels,
      finetune_plans.Images(paths, digests, y,
                            Split(train_rows, val_rows, test_rows)),
      fixed=None if fixed is None else finetune_lib.FixedFeatures(fixed))
  return tuned.test_predictions, time.monotonic() - started, tuned


def keeps_fine_tuned(tuned, frozen_fit, x_frozen, y, val_rows) -> dict:
  """As the pipeline: the fine-tuned network is kept ('keep') only when it
  beats the frozen head's held-out validation predictions (out of fold
  when the head trained on validation) by more than
  finetune_lib.versus_frozen's margin, and never when it kept epoch 0."""
  held = frozen_fit.held_out
  logits = (frozen_fit.head.logits(x_frozen[val_rows]) if held is None else
            held.validation_logits)
  frozen_right = logits.argmax(1) == y[val_rows]
  position = {int(row): i for i, row in enumerate(val_rows)}
  at = np.array([position[int(r)] for r in tuned.validation_rows], np.int64)
  tuned_right = (tuned.head.logits(tuned.validation_features).argmax(1) ==
                 tuned.validation_labels)
  versus = finetune_lib.versus_frozen(tuned_right, frozen_right[at])
  versus['keep'] = versus['keep'] and tuned.fit.best_epoch > 0
  return versus


def trace_test_by_epoch(curves: dict):
  """Makes every fine-tuning record, after each epoch, how many test images
  its weights of that epoch get right (curves[name][epoch] summed over
  folds; epoch 0 is the head alone). Not what fine-tuning keeps (it
  chooses on validation): it shows whether the epochs help on held-out
  images at all when validation cannot tell them apart."""
  from retrain.finetune import train as train_lib
  original = finetune_lib._train_and_test

  def correct(plan):
    _, accuracy, predictions = train_lib.evaluate(
        lambda x: plan.network.logits(x, False), plan.test_batches())
    return round(accuracy * len(predictions))

  def traced(o, plan, identity, on_epoch):
    curve = curves.setdefault(trace_test_by_epoch.name, {})
    curve[0] = curve.get(0, 0) + correct(plan)

    def each(point):
      curve[point.epoch] = curve.get(point.epoch, 0) + correct(plan)
      if on_epoch is not None:
        on_epoch(point)

    return original(o, plan, identity, each)

  finetune_lib._train_and_test = traced


def settings(pairs) -> dict:
  """--set NAME=VALUE pairs -> Config fields, typed as their defaults."""
  out = {}
  for pair in pairs:
    name, value = pair.split('=', 1)
    default = DEFAULTS.get(name)
    out[name] = (value.lower() in ('1', 'true') if isinstance(default, bool)
                 else type(default)(value))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('image_dir')
  parser.add_argument('--folds', type=int, default=5)
  parser.add_argument('--boundaries', default='11,15')
  parser.add_argument('--frozen', default=DEFAULTS.module.tfhub_module)
  parser.add_argument('--ensemble_boundaries', default='-1',
                      help='fine_tune_from values for the --frozen ensemble '
                      '(negative: counted from each member\'s end); empty: '
                      'none')
  parser.add_argument('--ensemble_members', default='all',
                      help='fine_tune_members values for the ensemble rows, '
                      'separated by ";" (all: every member; empty: the '
                      'first), e.g. "all;"')
  parser.add_argument('--epochs', type=int, default=DEFAULTS.finetune.fine_tune_epochs)
  parser.add_argument('--work', default='')
  parser.add_argument('--by_epoch', action='store_true',
                      help='also print the test accuracy of every epoch\'s '
                      'weights (summed over folds), not only of the kept one')
  parser.add_argument('--set', action='append', default=[],
                      help='NAME=VALUE: a Config field for every fine-tuning '
                      'run, e.g. fine_tune_label_smoothing=0.1 or '
                      'flip_left_right=true')
  parser.add_argument('--module_cache_dir',
                      default=os.environ.get('RETRAIN_MODULE_CACHE'))
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  work = args.work or tempfile.mkdtemp(prefix='bench_fine_tune_kfold_')

  layout = layouts.load_layout(DEFAULTS.replace(image_dir=args.image_dir).data)
  paths = [image.path for image in layout.dataset.images]
  y_all = np.array([image.label for image in layout.dataset.images])
  labels = list(layout.dataset.labels)
  members = ensemble_lib.member_handles(args.frozen)
  vectors = {name: accuracy_bench.module_vectors(
      paths, name, os.path.join(work, 'bn'), args.module_cache_dir)[0]
             for name in dict.fromkeys(members + [LITE0])}
  frozen = ensemble_bottlenecks.combine([vectors[m] for m in members])
  lite0 = vectors[LITE0]
  ok = frozen.ok & lite0.ok
  keep = np.flatnonzero(ok)
  paths = [paths[i] for i in keep]
  digests = [lite0.digests[i] for i in keep]
  y = y_all[keep]
  x_frozen = frozen.vectors[np.flatnonzero(ok[frozen.ok])]
  x_lite0 = lite0.vectors[np.flatnonzero(ok[lite0.ok])]
  plans = accuracy_bench.folds_of(y, None, args.folds, args.seed)
  module = features.load_module(LITE0, None, args.module_cache_dir)
  ensemble = (ensemble_lib.load(args.frozen, None, args.module_cache_dir)
              if args.ensemble_boundaries else None)
  print(f'{args.image_dir}: {len(paths)} images, {len(labels)} classes, '
        f'{args.folds}-fold, load average {os.getloadavg()[0]:.1f}',
        flush=True)

  correct = {}
  seconds = {}
  kept_frozen = {}
  curves = {}
  if args.by_epoch:
    trace_test_by_epoch(curves)
  for f, rows in enumerate(plans):
    test_rows = rows[2]
    frozen_fit = solver_lib.fit_head(
        x_frozen[rows[0]], y[rows[0]], len(labels), x_frozen[rows[1]],
        y[rows[1]], solver_lib.SolverOptions.from_config(
            DEFAULTS.replace(fine_tune=True)))
    head = frozen_fit.head
    frozen_pred = head.logits(x_frozen[test_rows]).argmax(axis=1)
    correct.setdefault('frozen', []).append(
        int(np.sum(frozen_pred == y[test_rows])))
    lite0_head = accuracy_bench.train('lbfgs', x_lite0, y, len(labels),
                                      rows[0], rows[1], args.seed)
    pred = lite0_head.logits(x_lite0[test_rows]).argmax(axis=1)
    correct.setdefault('lite0', []).append(int(np.sum(pred == y[test_rows])))
    for block in (int(b) for b in filter(None, args.boundaries.split(','))):
      trace_test_by_epoch.name = f'{LITE0} from block {block}'
      pred, took, _ = fine_tune_fold(args, work, block, module, lite0_head,
                                     labels, paths, digests, y, rows)
      correct.setdefault(block, []).append(int(np.sum(pred == y[test_rows])))
      seconds.setdefault(block, []).append(took)
    for block, members in ((int(b), m) for b in filter(
        None, args.ensemble_boundaries.split(','))
                           for m in args.ensemble_members.split(';')):
      name = f'ensemble {block}' + (f' ({members or "the first"} tuned)'
                                    if members != 'all' else '')
      trace_test_by_epoch.name = f'{args.frozen} from {block}' + (
          f', {members or "the first member"} fine-tuned, the others fixed'
          if members != 'all' else '')
      # As the pipeline: fine-tuning starts from the head fitted on the
      # training part alone (its validation stays held out), and a run
      # whose fine-tuning keeps epoch 0 exports the frozen head.
      pred, took, tuned = fine_tune_fold(
          args, work, block, ensemble,
          frozen_fit.train_only_head or head, labels, paths, digests, y,
          rows, members, x_frozen)
      versus = keeps_fine_tuned(tuned, frozen_fit, x_frozen, y, rows[1])
      print(f'fold {f}, {name}: epoch {tuned.fit.best_epoch}, validation '
            f'{100 * versus["fine_tuned_validation_accuracy"]:.1f}% '
            f'against the frozen head\'s held-out '
            f'{100 * versus["frozen_validation_accuracy"]:.1f}% (gained '
            f'{versus["gained"]}, lost {versus["lost"]} of '
            f'{versus["validation_count"]}): '
            + ('kept' if versus['keep'] else 'the frozen head kept'),
            flush=True)
      if not versus['keep']:
        pred = frozen_pred
        kept_frozen[name] = kept_frozen.get(name, 0) + 1
      correct.setdefault(name, []).append(int(np.sum(pred == y[test_rows])))
      seconds.setdefault(name, []).append(took)
    print(f'fold {f}: ' + ', '.join(f'{k} {v[-1]}/{len(test_rows)}'
                                    for k, v in correct.items()), flush=True)

  total = len(y)
  print(f'\n| configuration | accuracy ({args.folds}-fold, N={total}) | 95% '
        'CI | folds won/tied/lost vs frozen | fine-tuning s per fold |')
  print('|---|---|---|---|---|')
  for name, per_fold in correct.items():
    low, high = confidence.wilson_interval(sum(per_fold), total)
    base = correct['frozen']
    record = (f'{sum(a > b for a, b in zip(per_fold, base))}/'
              f'{sum(a == b for a, b in zip(per_fold, base))}/'
              f'{sum(a < b for a, b in zip(per_fold, base))}')
    title = {'frozen': f'{args.frozen} (frozen, L-BFGS head)',
             'lite0': f'{LITE0} (frozen, L-BFGS head)'}.get(
                 name, f'{LITE0} fine-tuned from block {name}')
    if str(name).startswith('ensemble '):
      tuned = name.split('(')[1].split(' tuned')[0] if '(' in name else ''
      title = (f'{args.frozen} fine-tuned, '
               + (f'{tuned} from fine_tune_from {name.split()[1]}, the other '
                  'members fixed' if tuned else
                  f'every member from fine_tune_from {name.split()[1]}'))
    took = (f'{np.mean(seconds[name]):.0f}' if name in seconds else '-')
    if name in kept_frozen:
      took += f' (kept the frozen head in {kept_frozen[name]} folds)'
    print(f'| {title} | {100 * sum(per_fold) / total:.1f}% '
          f'({sum(per_fold)}/{total}) | {100 * low:.1f}-{100 * high:.1f}% '
          f'| {record if name != "frozen" else "-"} | {took} |')
  if curves:
    print(f'\nTest images right with each epoch\'s weights, all {args.folds} '
          f'folds (N={total}; epoch 0 = the head alone):\n')
    print('| fine-tuning | ' + ' | '.join(
        f'epoch {e}' for e in sorted(next(iter(curves.values())))) + ' |')
    print('|---|' + '---|' * len(next(iter(curves.values()))))
    for name, curve in curves.items():
      print(f'| {name} | ' + ' | '.join(
          f'{100 * curve[e] / total:.1f}%' for e in sorted(curve)) + ' |')


if __name__ == '__main__':
  main()
