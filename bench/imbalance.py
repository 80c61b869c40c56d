"""One class cut to a fraction of its training photos: its recall and the
balanced accuracy with unweighted and class-balanced L-BFGS heads, as
fitted and with their class biases tuned on their out-of-fold predictions.

  python bench/imbalance.py DIR [--bottleneck_dir BN] [--small_class NAME]
      [--keep 0.1] [--folds 5] [--weightings none,balanced,balanced+la]

The vectors are the default ensemble's, read from the bottleneck cache with
the `bottleneck_cache` package (no module is loaded; the photos must have
been through a run with --bottleneck_dir BN). Stratified k-fold over all
photos: each fold is held out once; of the other folds' photos, the small
class keeps `--keep` of its photos (drawn with the seed), the others all,
and the head is fitted on them with the default solver (its L2 chosen by
k-fold on those photos only). Each weighting is fitted on the same photos.

Weightings: `none` (every image 1) or `balanced` (every class the same),
each optionally followed by how its biases change, chosen on the fit's own
out-of-fold predictions of its training photos (never the held-out fold):
`+la` logit adjustment by -tau * log(class share), tau for the best
balanced accuracy (what a run does on a strongly imbalanced set,
retrain/head/imbalance.py); `+la1` the same with tau 1 (Menon et al.'s
choice, nothing tuned); `+bias` a free bias per class for the best balanced
accuracy (coordinate ascent on a grid).

Two held-out scores, pooled over the folds:
- balanced: the held-out fold as it is (every class in its full proportion):
  the small class's recall, the balanced accuracy (mean recall) and the
  accuracy;
- natural: the held-out fold with the small class cut the same way (the
  test set has the training set's proportions): the accuracy.
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
from absl import logging  # noqa: E402

import bottleneck_cache  # noqa: E402
from retrain.config import DEFAULTS  # noqa: E402
from retrain.head import folds as folds_lib  # noqa: E402
from retrain.head import imbalance as imbalance_lib  # noqa: E402
from retrain.head import solver as solver_lib  # noqa: E402
from retrain.report import head_solver as solve_lib  # noqa: E402

_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_MEMBERS = ('efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2')


def class_photos(image_dir: str):
  """(paths, class ids int64 [n], class names) of DIR/<class>/<photo>."""
  names = sorted(d for d in os.listdir(image_dir)
                 if os.path.isdir(os.path.join(image_dir, d)))
  paths, ids = [], []
  for i, name in enumerate(names):
    for path in sorted(glob.glob(os.path.join(image_dir, name, '*'))):
      if path.lower().endswith(_EXTENSIONS):
        paths.append(path)
        ids.append(i)
  return paths, np.array(ids, np.int64), names


def ensemble_vectors(paths, bottleneck_dir: str):
  """(float32 [m, D] default-ensemble vectors, int [m] rows of `paths` they
  belong to): the photos every member has in the cache, members in order."""
  stores = {m: [] for m in _MEMBERS}
  for description in sorted(glob.glob(os.path.join(bottleneck_dir, '*',
                                                   'namespace.json'))):
    with open(description, encoding='utf-8') as f:
      namespace = json.load(f)
    if namespace.get('kind') != 'bottleneck' or namespace.get(
        'quantization'):
      continue
    for member in _MEMBERS:
      if os.path.basename(namespace.get('module', '')).startswith(
          member + '-'):
        stores[member].append((
            'ensemble_input_size' in namespace,
            bottleneck_cache.BottleneckStore(bottleneck_dir, namespace)))
  memo = bottleneck_cache.DigestMemo(bottleneck_dir)
  keys = [memo.digest(p) for p in paths]
  # Of a member's float namespaces, the one holding most of the photos (the
  # default ensemble's, at its shared input size, on a tie).
  stores = {m: max(found, key=lambda s: (sum(k in s[1] for k in keys),
                                         s[0]))[1]
            for m, found in stores.items() if found}
  missing = [m for m in _MEMBERS if m not in stores]
  if missing:
    sys.exit(f'{bottleneck_dir} has no vectors of {", ".join(missing)}: run '
             f'python -m retrain --bottleneck_dir {bottleneck_dir} on the '
             'photos first.')
  rows = np.array([i for i, k in enumerate(keys)
                   if all(k in stores[m] for m in _MEMBERS)], np.int64)
  x = np.concatenate([stores[m].get([keys[i] for i in rows])
                      for m in _MEMBERS], axis=1)
  return x, rows


def fit(x, y, classes, weighting: str):
  """The default solver's fit on x, y (a SolverResult); classes weighted
  or not (the part of `weighting` before '+')."""
  options = solver_lib.SolverOptions.from_config(DEFAULTS)
  weights = solve_lib.lbfgs_class_weights(
      np.bincount(y, minlength=classes),
      'balanced' if weighting.startswith('balanced') else 'none',
      'images')
  return solver_lib.fit_head(x, y, classes, x[:0], y[:0], options,
                             class_weights=weights)


_BIAS_GRID = np.linspace(-4, 4, 33)


def class_biases(z, y, classes, grid=_BIAS_GRID, rounds=3):
  """float [N] per-class biases for the best balanced accuracy on logits
  z [m, N] of y [m], by coordinate ascent (ties: the smaller |bias|)."""
  b = np.zeros(classes)
  for _ in range(rounds):
    for c in range(classes):
      best = None
      for v in grid:
        trial = b.copy()
        trial[c] = v
        score = (-imbalance_lib.balanced_accuracy(z + trial, y), abs(v))
        if best is None or score < best[0]:
          best = (score, v)
      b[c] = best[1]
  return b


def predict(result, x_train, y_train, x_test, classes, variant: str):
  """Class ids [m] the variant predicts for x_test: the head as fitted,
  or +la (tau on the out-of-fold logits), +la1 (tau 1), +bias (per-class
  biases on the out-of-fold logits)."""
  del x_train
  z = result.head.logits(x_test)
  counts = np.bincount(y_train, minlength=classes)
  held = result.held_out.logits
  if variant.endswith('+la'):
    z = z + imbalance_lib.choose(held, y_train, counts).biases
  elif variant.endswith('+la1'):
    z = z + imbalance_lib.log_prior_biases(counts, 1.0)
  elif variant.endswith('+bias'):
    z = z + class_biases(held, y_train, classes)
  return z.argmax(axis=1)


def cut(rows, y, small: int, keep: float, rng) -> np.ndarray:
  """rows with the small class's reduced to `keep` of them (at least 1)."""
  mine = rows[y[rows] == small]
  kept = rng.choice(mine, max(1, round(keep * len(mine))), replace=False)
  return np.sort(np.concatenate([rows[y[rows] != small], kept]))


def run(x, y, classes, small, keep, folds, seed, weightings):
  """{weighting: (predictions on every photo, natural-test rows)}."""
  fold = folds_lib.stratified_folds(y, folds, seed)
  out = {w: np.full(len(y), -1, np.int64) for w in weightings}
  natural = []
  for f in range(folds):
    rng = np.random.default_rng(seed + 1 + f)
    train_rows = cut(np.flatnonzero(fold != f), y, small, keep, rng)
    held = np.flatnonzero(fold == f)
    natural.append(cut(held, y, small, keep, rng))
    results = {}
    for w in weightings:
      base = w.split('+')[0]
      if base not in results:
        results[base] = fit(x[train_rows], y[train_rows], classes, base)
      out[w][held] = predict(results[base], x[train_rows], y[train_rows],
                             x[held], classes, w)
    print(f'  fold {f + 1}/{folds}: {len(train_rows)} training photos, '
          f'{int(np.sum(y[train_rows] == small))} of the small class',
          flush=True)
  return out, np.concatenate(natural)


def table(names, small, y, predictions, natural) -> None:
  """Prints one row per weighting (see the module docstring)."""
  for w, pred in predictions.items():
    recalls = [float(np.mean(pred[y == c] == c)) for c in range(len(names))]
    mine = y == small
    print(f'| {names[small]} | {w} | {100 * recalls[small]:.1f}% '
          f'({int(np.sum(pred[mine] == small))}/{int(mine.sum())}) | '
          f'{100 * np.mean(recalls):.1f}% | '
          f'{100 * np.mean(pred == y):.1f}% | '
          f'{100 * np.mean(pred[natural] == y[natural]):.1f}% '
          f'(N={len(natural)}) |', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('image_dir')
  parser.add_argument('--bottleneck_dir', default='/tmp/bench_imbalance/bn')
  parser.add_argument('--small_class', default=None,
                      help='the class to cut (default: the first; all: each '
                      'in turn)')
  parser.add_argument('--keep', type=float, default=0.1)
  parser.add_argument('--folds', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--weightings', default='none,balanced,balanced+la')
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  paths, y, names = class_photos(args.image_dir)
  x, rows = ensemble_vectors(paths, args.bottleneck_dir)
  y = y[rows]
  smalls = (range(len(names)) if args.small_class == 'all' else
            [names.index(args.small_class) if args.small_class else 0])
  print(f'{args.image_dir}: {len(rows)} of {len(paths)} photos cached, '
        f'{len(names)} classes, each small class cut to {args.keep:g} of its '
        f'training photos; {args.folds}-fold, dimension {x.shape[1]}')
  results = []
  for small in smalls:
    predictions, natural = run(x, y, len(names), small, args.keep,
                               args.folds, args.seed,
                               args.weightings.split(','))
    results.append((small, predictions, natural))
  print('\n| Small class | Weighting | its recall (balanced test) | balanced '
        'accuracy | accuracy (balanced test) | accuracy (natural test) |')
  print('|---|---|---|---|---|---|')
  for small, predictions, natural in results:
    table(names, small, y, predictions, natural)


if __name__ == '__main__':
  main()
