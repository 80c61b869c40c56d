"""Where fine-tuning's time goes: one training step, per image, by boundary.

  python bench/fine_tune_step.py [--boundaries 11,13,15,16] [--batches 32,128]
      [--jit] [--images 256]

On random float16 activations of the boundary's shape (what the cache
holds), the step `retrain.finetune.train` compiles (a tf.function: forward
with dropout, cross entropy, gradients of the top's variables, AdamW) is
timed over --images images after one warm-up pass, and so is inference
(the validation and test passes). With --jit the same step is also
compiled by XLA (jit_compile=True) for comparison. All rows run in this
one process, one after another, so their ratios are what counts on a
shared machine; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from retrain.features import efficientnet_lite  # noqa: E402
from retrain.finetune import lite as lite_lib  # noqa: E402
from retrain.finetune import train as train_lib  # noqa: E402


def time_step(weights, block, batch, jit, images) -> tuple:
  """(train ms per image, inference ms per image) from `block` on."""
  network = lite_lib.LiteNetwork(weights, block,
                                 np.zeros((1280, 5), np.float32),
                                 np.zeros(5, np.float32), dropout=0.2)
  rng = np.random.default_rng(0)
  x = rng.random((images, *network.activation_shape)).astype(np.float16)
  y = rng.integers(0, 5, images).astype(np.int64)
  variables = network.top_variables
  optimizer = train_lib.AdamW(variables, 1e-4)

  def step(xb, yb, learning_rate):
    with tf.GradientTape() as tape:
      logits = network.logits(xb, True)
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))
    optimizer.apply(tape.gradient(loss, variables), variables, learning_rate)
    return loss

  train = tf.function(step, jit_compile=jit, reduce_retracing=True)
  infer = tf.function(lambda xb: network.logits(xb, False), jit_compile=jit,
                      reduce_retracing=True)

  def seconds(fn, size, *extra):
    for _ in range(2):  # the first pass traces and compiles
      started = time.monotonic()
      for s in range(0, images, size):
        fn(tf.constant(x[s:s + size]), *[e[s:s + size] for e in extra])
    return time.monotonic() - started

  lr = tf.constant(1e-4)
  train_s = seconds(lambda xb, yb: train(xb, tf.constant(yb), lr), batch, y)
  infer_s = seconds(infer, 4 * batch)
  return 1000 * train_s / images, 1000 * infer_s / images


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--boundaries', default='11,13,15,16')
  parser.add_argument('--batches', default='32')
  parser.add_argument('--jit', action='store_true')
  parser.add_argument('--images', type=int, default=256)
  args = parser.parse_args()
  weights = efficientnet_lite.load_folded_weights('efficientnet_lite0')
  print(f'{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} '
        'at the start')
  print('| from block | entering | batch | XLA | train ms/image | '
        'inference ms/image |')
  print('|---|---|---|---|---|---|')
  for block in (int(b) for b in args.boundaries.split(',')):
    shape = lite_lib.boundary_shape(weights, block)
    for batch in (int(b) for b in args.batches.split(',')):
      for jit in (False, True) if args.jit else (False,):
        train_ms, infer_ms = time_step(weights, block, batch, jit,
                                       args.images)
        print(f'| {block} | {"x".join(map(str, shape))} | {batch} | '
              f'{"yes" if jit else "no"} | {train_ms:.2f} | {infer_ms:.2f} |',
              flush=True)
  print(f'load average {os.getloadavg()[0]:.1f} at the end')


if __name__ == '__main__':
  main()
