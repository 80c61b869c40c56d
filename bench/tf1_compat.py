"""Runs a TensorFlow 1 script, such as retrain.py, under TensorFlow 2.

retrain.py calls TF1 names (`tf.placeholder`, `tf.gfile`, `tf.app.run`...)
and `hub.Module`. This launcher turns off TF2 behaviour and hands the script
`tf.compat.v1` as its `tensorflow`, so it runs unchanged in an environment
with TensorFlow <= 2.15 and tensorflow-hub <= 0.15 (the last versions with
`hub.Module`); this project's own environment has neither.

Usage:
  python bench/tf1_compat.py path/to/retrain.py --image_dir ... [flags]
"""

import runpy
import sys


def main():
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  import tensorflow as tf
  try:
    import tensorflow_hub as hub
  except ImportError:
    hub = None
  if hub is None or not hasattr(hub, 'Module'):
    sys.exit('This needs tensorflow-hub <= 0.15 (hub.Module) next to '
             'tensorflow <= 2.15, e.g. in a separate virtualenv: '
             'pip install "tensorflow-cpu==2.15.1" "tensorflow-hub==0.15.0"')
  tf.compat.v1.disable_v2_behavior()
  # tensorflow_hub is imported above, so it keeps the real module; only the
  # script sees the TF1 API under the name `tensorflow`.
  sys.modules['tensorflow'] = tf.compat.v1
  script = sys.argv[1]
  sys.argv = sys.argv[1:]
  runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
  main()
