"""The results page's heat maps of an int8 run: int8 against float Grad-CAM.

An int8 run's heat maps read what each member's int8 model averages into
its features (retrain/report/heatmap.py); a float run's rebuild the
bundled float networks. This prints, for photos of a labelled folder, how
alike the two maps of each photo are (Pearson correlation of the maps,
and whether their hottest points lie within a tenth of the image's side) and each method's
seconds per photo, measured in one process, one after the other:

  python bench/heat_maps.py --image_dir ../shared/datasets/flowers_sample --photos 40

The head is fitted on the int8 vectors of the photos not drawn, so the
maps are of a real head's classes; each map is of the class that head
predicts for the photo.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_dir', required=True)
  parser.add_argument('--photos', type=int, default=40,
                      help='photos drawn (spread over the classes)')
  parser.add_argument('--module', default=None,
                      help='--tfhub_module (default: the default ensemble)')
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from retrain.common import cli
  cli.import_tensorflow()
  from retrain import images as images_lib
  from retrain.config import DEFAULTS
  from retrain.data import discover
  from retrain.features import ensemble as ensemble_lib
  from retrain.features import int8 as int8_lib
  from retrain.head import lbfgs, solver
  from retrain.predict import explain
  from retrain.report import heatmap

  cache = os.environ.get('RETRAIN_MODULE_CACHE',
                         DEFAULTS.module.module_cache_dir)
  float_module = ensemble_lib.load(args.module or DEFAULTS.module.tfhub_module,
                                   cache_dir=cache)
  int8_members = [int8_lib.load(m, cache)
                  for m in ensemble_lib.members(float_module)]
  if not all(int8_members):
    raise SystemExit('a member has no int8 copy on this machine')
  int8_module = (int8_members[0] if len(int8_members) == 1 else
                 ensemble_lib.with_members(float_module, int8_members))
  found = discover.discover_images(args.image_dir)
  paths = [image.path for image in found.images]
  labels = np.asarray([image.label for image in found.images])
  classes = int(labels.max()) + 1
  size = tuple(float_module.input_size)
  rng = np.random.default_rng(0)
  drawn = np.sort(rng.choice(len(paths), min(args.photos, len(paths)),
                             replace=False))
  pixels = np.stack([images_lib.load_image(paths[i], size).numpy()
                     for i in range(len(paths))])
  vectors = np.concatenate([np.asarray(int8_module.call(pixels[i:i + 32]))
                            for i in range(0, len(pixels), 32)])
  rest = np.setdiff1d(np.arange(len(paths)), drawn)
  head = lbfgs.SoftmaxLbfgs.of(0.1, 0.0, solver.SolverOptions.from_config(
      DEFAULTS)).fit(vectors[rest], labels[rest], classes).head()
  predicted = head.logits(vectors[drawn]).argmax(1)
  float_maps = heatmap.explainer(float_module, head)
  int8_maps = heatmap.explainer(int8_module, head)
  if (float_maps.method, int8_maps.method) != (explain.GRAD_CAM,) * 2:
    raise SystemExit(f'not Grad-CAM: {float_maps.method}, {int8_maps.method}')
  timed = {}
  maps = {}
  for name, explainer in (('float', float_maps), ('int8', int8_maps)):
    started = time.monotonic()
    maps[name] = np.concatenate([
        explainer(pixels[drawn[i:i + 6]], predicted[i:i + 6])
        for i in range(0, len(drawn), 6)])
    timed[name] = (time.monotonic() - started) / len(drawn)
  a = maps['float'].reshape(len(drawn), -1)
  b = maps['int8'].reshape(len(drawn), -1)
  a = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-12)
  b = (b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-12)
  correlation = (a * b).mean(1)
  hottest = [np.unravel_index(m.argmax(), m.shape) for m in maps['float']]
  near = np.mean([np.hypot(*(np.subtract(np.unravel_index(m.argmax(),
                                                          m.shape), h)))
                  <= 0.1 * size[0] for m, h in zip(maps['int8'], hottest,
                                                   strict=True)])
  print(f'photos drawn                 {len(drawn)} of {len(paths)} '
        f'({classes} classes)')
  print(f'map correlation, int8/float  median {np.median(correlation):.3f}, '
        f'lowest {correlation.min():.3f}')
  print(f'hottest point within 10 %    {100 * near:.0f} % of photos')
  print(f'seconds per photo            float {timed["float"]:.3f}, int8 '
        f'{timed["int8"]:.3f} ({timed["float"] / timed["int8"]:.1f}x)')


if __name__ == '__main__':
  main()
