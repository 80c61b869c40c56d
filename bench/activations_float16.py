"""Does storing activations as float16 lose anything? (retrain/finetune)

  python bench/activations_float16.py DIR [--count 200] [--blocks 11,13,15]

Runs EfficientNet-Lite0's bottom on `count` images of DIR (every other file,
sorted), then the top with its ImageNet classifier on the float32
activations and on the same activations rounded to float16, and prints per
boundary the largest activation, the largest relative error of the pooled
features, the top-1 agreement and the largest logit difference.
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('dir')
  parser.add_argument('--count', type=int, default=200)
  parser.add_argument('--blocks', default='11,13,15')
  args = parser.parse_args()
  import tensorflow as tf

  from retrain import images as images_lib
  from retrain.features import efficientnet_lite
  from retrain.finetune import lite
  weights = efficientnet_lite.load_folded_weights('lite0')
  paths = sorted(p for p in glob.glob(os.path.join(args.dir, '*', '*'))
                 if os.path.isfile(p))[::2][:args.count]
  images = tf.stack([images_lib.load_image(p, (224, 224)) for p in paths])
  print(f'{len(paths)} images of {args.dir}')
  print('| block | max abs activation | feature max rel. error '
        '| top-1 agreement | max logit diff |')
  print('|---|---|---|---|---|')
  for block in map(int, args.blocks.split(',')):
    net = lite.LiteNetwork(weights, block, weights.fc_kernel,
                           weights.fc_bias)
    acts = net.bottom(images)
    f32 = net.top_features(acts).numpy()
    f16 = net.top_features(tf.cast(tf.cast(acts, tf.float16),
                                   tf.float32)).numpy()
    l32 = f32 @ weights.fc_kernel + weights.fc_bias
    l16 = f16 @ weights.fc_kernel + weights.fc_bias
    print(f'| {block} | {float(tf.reduce_max(tf.abs(acts))):.1f} '
          f'| {np.max(np.abs(f32 - f16)) / np.max(np.abs(f32)):.1e} '
          f'| {100 * np.mean(l32.argmax(1) == l16.argmax(1)):.1f}% '
          f'| {np.max(np.abs(l32 - l16)):.1e} |')


if __name__ == '__main__':
  main()
