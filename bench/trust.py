"""Are the run's own figures true? Validation vs test, calibration, novelty.

  python bench/trust.py [--folds 5] [--novelty_components 64] [--novelty_keep K]
      [--bottleneck_dir DIR ...] [--bottleneck_precision int8|float32]
      [--flowers DIR] [--digits DIR] [--bccd DIR]

On the default ensemble's cached bottleneck vectors (read with
bottleneck_cache from the namespaces of the modules in the run's module
cache, RETRAIN_MODULE_CACHE, at --bottleneck_precision, int8 by default;
photos missing from every --bottleneck_dir are computed into the last
one with the default ensemble), for each of k stratified folds of a data
set (the fold is the test set, never used to fit or choose anything; the
rest is split 8:1 into training and validation, the pipeline's 80/10/10):

1. the default head solver (L-BFGS, refitted on training + validation);
   the validation accuracy the run reports (the out-of-fold predictions
   of every training and validation photo), beside the out-of-fold
   accuracy of the validation photos alone (~1/9 as many, so noisier) and
   the refitted head's own validation accuracy, against the test accuracy;
2. the temperature fitted on the held-out logits the run fits it on (every
   training and validation photo's), and the test ECE before and after it
   (and after the temperature fitted on the validation photos' out-of-fold
   logits alone, and on the refitted head's own validation logits);
3. for flowers_sample models, the novelty score (--novelty_keep, the run's
   default unless given):
   the fraction of the fold's own test photos flagged, of every
   sign_language_digits photo and of every bccd photo, and the AUROC of
   each unknown set against the test photos.

Targets (docs/deploy.md): reported validation accuracy within 2 points of
test (averaged over folds), test ECE after calibration <= 0.05 (a fold's
and over every fold's test predictions pooled: each photo once, the
calibrated probabilities of the model that did not see it; an ECE of 100
photos in 15 bins is biased upwards by its noise), >= 95 % of the unknown
sets flagged, <= 5 % of the own test photos flagged. Beside each test ECE:
the ECE a perfectly calibrated model with the same confidences would show
on as many photos (outcomes drawn from the confidences; the estimator's
noise floor), and, as a bound rather than a result, the ECE of the one
temperature fitted on the test fold itself.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# The folds bench/accuracy.py measures on: each fold the test set once, the
# rest split 8:1 into training and validation.
from accuracy import folds_of  # noqa: E402

import bottleneck_cache  # noqa: E402
from retrain.config import DEFAULTS, MODULE_CACHE_ENV  # noqa: E402
from retrain.features import ensemble_presets  # noqa: E402
from retrain.head import calibration, novelty, solver  # noqa: E402
from retrain.report import trust  # noqa: E402

# The shared data sit beside the checkout (../shared), or beside the folder
# of worktrees (../../shared) when run from a worktree.
SHARED = next((p / 'shared' / 'datasets'
               for p in pathlib.Path(__file__).resolve().parents[2:4]
               if (p / 'shared' / 'datasets').is_dir()),
              pathlib.Path('shared') / 'datasets')
EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


def module_cache() -> str:
  """The run's module cache folder (RETRAIN_MODULE_CACHE, else the
  default), as a real path."""
  return os.path.realpath(os.path.expanduser(os.environ.get(
      MODULE_CACHE_ENV, DEFAULTS.module.module_cache_dir)))


def _is_default_member(data: dict, cache: str, precision: str) -> bool:
  """Whether a bottleneck namespace's description `data` is one of the
  default ensemble's members as the run computes them: a module of the
  run's module cache `cache` at `precision` ('int8': its int8 copy)."""
  return (data.get('kind') == 'bottleneck' and
          os.path.dirname(os.path.realpath(data['module'])) == cache and
          bool(data.get('quantization')) == (precision == 'int8'))


def _stores(roots, cache, precision):
  """{module path: [BottleneckStore in each root]} of the default
  ensemble's members (see _is_default_member); a member smaller than the
  ensemble's input counts in the namespace of the ensemble's decode
  (`ensemble_input_size`), not in one of the member alone."""
  found = {}
  for root in roots:
    for description in sorted(glob.glob(os.path.join(root, '*',
                                                     'namespace.json'))):
      with open(description, encoding='utf-8') as f:
        data = json.load(f)
      if _is_default_member(data, cache, precision):
        found.setdefault(data['module'], []).append(data)
  side = max((d['input_size'] for ds in found.values() for d in ds),
             default=None)
  return {module: [bottleneck_cache.BottleneckStore(root, d) for root in roots
                   for d in ds
                   if d.get('ensemble_input_size', d['input_size']) == side]
          for module, ds in found.items()}


def _compute_missing(paths, root, precision):
  """The default ensemble's vectors of `paths` into the cache at root,
  each member at `precision` ('int8': its int8 copy where it has one)."""
  import dataclasses

  from retrain.bottlenecks import ensemble as ensemble_bottlenecks
  from retrain.features import ensemble, int8, tflite_runtime
  cache = module_cache()
  module = ensemble.load(DEFAULTS.module.tfhub_module, DEFAULTS.module.image_size, cache)
  if precision == 'int8':
    members = tuple(int8.load(m, cache) or m for m in module.members)
    module = dataclasses.replace(module, members=members)
  runner = tflite_runtime.deferred(module, DEFAULTS.cache.bottleneck_runtime,
                                   cache)
  ensemble_bottlenecks.compute_bottlenecks(
      paths, module, runner, root, DEFAULTS.cache.bottleneck_runtime,
      DEFAULTS.cache.bottleneck_batch_size, cache)


def vectors(paths, roots, precision='int8'):
  """float32 [n, D]: the members' vectors side by side (members sorted by
  module path: lite0, lite1, lite2, the default ensemble's order), from
  the namespaces of the run's module cache at `precision` (a cache may
  also hold the same modules under another module cache's paths, and
  each member alone or at the other precision)."""
  keys = [bottleneck_cache.file_digest(p) for p in paths]
  cache = module_cache()
  members = len(ensemble_presets.member_handles(DEFAULTS.module.tfhub_module))

  def lookup():
    stores = _stores(roots, cache, precision)
    if len(stores) != members:
      return None
    found = []
    for module in sorted(stores):
      rows = []
      for key in keys:
        store = next((s for s in stores[module] if key in s), None)
        if store is None:
          return None
        rows.append(store.get([key])[0])
      found.append(np.stack(rows))
    return np.concatenate(found, 1)

  found = lookup()
  if found is None:
    print(f'computing missing vectors of {len(paths)} photos into '
          f'{roots[-1]}', flush=True)
    _compute_missing(paths, roots[-1], precision)
    found = lookup()
  if found is None:
    sys.exit(f'No {precision} vectors of the {members} members of '
             f'{DEFAULTS.module.tfhub_module} (module cache {cache}) for '
             f'every one of {len(paths)} photos in {", ".join(roots)}; '
             'set RETRAIN_MODULE_CACHE to the module cache the vectors '
             'were computed with, or --bottleneck_precision.')
  return found


def classed(root):
  """(labels, paths, class ids) of root/<class>/<image>."""
  labels = sorted(d for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)))
  paths, y = [], []
  for i, label in enumerate(labels):
    for path in sorted(glob.glob(os.path.join(root, label, '**', '*'),
                                 recursive=True)):
      if path.lower().endswith(EXTENSIONS):
        paths.append(path)
        y.append(i)
  return labels, paths, np.array(y)


def ece_noise_floor(probabilities, draws=2000, seed=0):
  """The mean ECE of a perfectly calibrated model with these top
  probabilities (float [n, N]): each image's outcome drawn right with
  probability its confidence, `draws` times. The ECE of n images is
  biased upwards by this much even when nothing is miscalibrated."""
  confidence = np.asarray(probabilities).max(axis=1)
  rng = np.random.default_rng(seed)
  n = len(confidence)
  # A one-hot stand-in whose top probability is the confidence and whose
  # arg max is class 0; y = 0 where the drawn outcome is right.
  fake = np.zeros((n, 2))
  fake[:, 0] = confidence
  fake[:, 1] = 1 - confidence
  fake[confidence < 0.5, 1] = 0  # keep class 0 the arg max
  return float(np.mean([calibration.expected_calibration_error(
      fake, np.where(rng.random(n) < confidence, 0, 1))
                        for _ in range(draws)]))


def one_fold(x, y, classes, train, val, test, unknown_sets,
             components=DEFAULTS.deploy.novelty_components,
             keep=DEFAULTS.deploy.novelty_keep):
  """The figures of one fold (see the module docstring)."""
  options = solver.SolverOptions.from_config(DEFAULTS)
  fit = solver.fit_head(x[train], y[train], classes, x[val], y[val], options)
  head, held = fit.head, fit.held_out
  test_logits = head.logits(x[test])
  summary = held.summary()
  row = {
      'test': float(np.mean(test_logits.argmax(1) == y[test])),
      'reported_validation': summary['validation_accuracy'],
      'validation_split_only': summary['validation_split_only']['accuracy'],
      'own_validation': float(np.mean(head.logits(x[val]).argmax(1) ==
                                      y[val])),
  }
  rows = held.photo_rows
  confidence = calibration.calibrate(
      head, None, held.y[rows], DEFAULTS.deploy.target_precision,
      DEFAULTS.deploy.calibration_min_images, logits=held.logits[rows],
      held_out=held.method).with_test(test_logits, y[test])
  split_only = calibration.fit_temperature(held.validation_logits, y[val])
  own = calibration.calibrate(head, x[val], y[val], DEFAULTS.deploy.target_precision,
                              DEFAULTS.deploy.calibration_min_images)
  row.update(temperature=confidence.temperature,
             threshold=confidence.threshold,
             ece_before=confidence.test_ece_before,
             ece_after=confidence.test_ece_after,
             split_only_temperature=split_only,
             split_only_ece_after=calibration.expected_calibration_error(
                 calibration.softmax(test_logits / split_only), y[test]),
             own_temperature=own.temperature,
             own_ece_after=own.with_test(test_logits, y[test]).test_ece_after)
  calibrated = calibration.softmax(test_logits / confidence.temperature)
  row['ece_floor'] = ece_noise_floor(calibrated)
  # Not a result (fitted on the test fold): the ECE the best single
  # temperature could reach here, to tell whether a better fit of T on
  # the held-out logits has anything left to gain.
  row['oracle_ece'] = calibration.expected_calibration_error(
      calibration.softmax(test_logits / calibration.fit_temperature(
          test_logits, y[test])), y[test])
  if unknown_sets:
    fitted = np.concatenate([train, val])
    folds = min(DEFAULTS.head.solver_folds, int(np.bincount(y[fitted]).min()))
    score = novelty.fit_on_split(x[fitted], y[fitted], classes, components,
                                 keep, folds,
                                 DEFAULTS.head.random_seed)
    own_scores = score.scores(x[test])
    row['flagged_own_test'] = float(np.mean(own_scores > score.threshold))
    for name, u in unknown_sets.items():
      scores = score.scores(u)
      row[f'flagged_{name}'] = float(np.mean(scores > score.threshold))
      row[f'auroc_{name}'] = trust.auroc(scores, own_scores)
  return row, (calibrated, calibration.softmax(test_logits / split_only))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--folds', type=int, default=5)
  parser.add_argument('--novelty_components', type=int,
                      default=DEFAULTS.deploy.novelty_components)
  parser.add_argument('--novelty_keep', type=float,
                      default=DEFAULTS.deploy.novelty_keep)
  parser.add_argument('--bottleneck_dir', action='append')
  parser.add_argument('--bottleneck_precision', choices=('int8', 'float32'),
                      default='int8',
                      help='the vectors read: the members\' int8 copies '
                      '(what the default run chose on this CPU) or float')
  parser.add_argument('--flowers', default=str(SHARED / 'flowers_sample'))
  parser.add_argument('--digits', default=str(
      SHARED / 'sign_language_digits' / 'Dataset'))
  parser.add_argument('--bccd', default=str(SHARED / 'bccd' / 'BCCD' /
                                            'JPEGImages'))
  args = parser.parse_args()
  roots = args.bottleneck_dir or ['/tmp/bench_trust_bn']
  data = {}
  for name, root in (('flowers_sample', args.flowers),
                     ('sign_language_digits', args.digits)):
    labels, paths, y = classed(root)
    data[name] = (vectors(paths, roots, args.bottleneck_precision), y,
                  len(labels))
  bccd = sorted(p for p in glob.glob(os.path.join(args.bccd, '*'))
                if p.lower().endswith(EXTENSIONS))
  unknown = {'sign_language_digits': data['sign_language_digits'][0],
             'bccd': vectors(bccd, roots, args.bottleneck_precision)}
  for name, (x, y, classes) in data.items():
    print(f'\n{name}: {len(y)} photos, {classes} classes, {args.folds} '
          'folds (each fold the test set once)')
    results, pooled, pooled_split_only, truth = [], [], [], []
    for k, (train, val, test) in enumerate(folds_of(y, None, args.folds, 0)):
      row, calibrated = one_fold(x, y, classes, train, val, test,
                                 unknown if name == 'flowers_sample' else {},
                                 args.novelty_components, args.novelty_keep)
      results.append(row)
      pooled.append(calibrated[0])
      pooled_split_only.append(calibrated[1])
      truth.append(y[test])
      print(f'fold {k}: ' + ', '.join(f'{key} {value:.4f}'
                                       for key, value in row.items()),
            flush=True)
    mean = {key: float(np.mean([r[key] for r in results]))
            for key in results[0]}
    gap = abs(mean['reported_validation'] - mean['test'])
    pooled_probabilities = np.concatenate(pooled)
    pooled_ece = calibration.expected_calibration_error(
        pooled_probabilities, np.concatenate(truth))
    pooled_split_only_ece = calibration.expected_calibration_error(
        np.concatenate(pooled_split_only), np.concatenate(truth))
    print(f'MEAN {name}: ' + ', '.join(f'{key} {value:.4f}'
                                       for key, value in mean.items()))
    split_gap = abs(mean['validation_split_only'] - mean['test'])
    print(f'  reported validation (out of fold, every training and '
          f'validation photo) - test: {100 * gap:.2f} points (target <= 2; '
          f'the validation photos alone - test: {100 * split_gap:.2f}; the '
          f'refitted head\'s own validation: '
          f'{100 * abs(mean["own_validation"] - mean["test"]):.2f}); test '
          f'ECE after calibration {mean["ece_after"]:.4f} a fold (a '
          f'perfectly calibrated model\'s {mean["ece_floor"]:.4f}; the best '
          f'temperature chosen on the test fold itself '
          f'{mean["oracle_ece"]:.4f}; the temperature of the validation '
          f'photos alone {mean["split_only_ece_after"]:.4f}), '
          f'{pooled_ece:.4f} over the {len(y)} test predictions pooled '
          f'(perfectly calibrated: '
          f'{ece_noise_floor(pooled_probabilities):.4f}; the validation '
          f'photos\' temperature {pooled_split_only_ece:.4f}; target <= '
          f'0.05)')
    if 'flagged_own_test' in mean:
      print(f'  flagged unknown: own test {100 * mean["flagged_own_test"]:.1f}'
            f' % (target <= 5), sign_language_digits '
            f'{100 * mean["flagged_sign_language_digits"]:.1f} %, bccd '
            f'{100 * mean["flagged_bccd"]:.1f} % (targets >= 95); AUROC '
            f'{mean["auroc_sign_language_digits"]:.4f} / '
            f'{mean["auroc_bccd"]:.4f}')


if __name__ == '__main__':
  main()
