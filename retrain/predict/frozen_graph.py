"""Loading a frozen graph (.pb) to classify with."""

from __future__ import annotations

from typing import Callable, Tuple

from retrain.common.names import NOVELTY_OUTPUT
from retrain.predict.common import LabelImageError, check_model, choose_size


def load_frozen_graph(path: str, input_layer: str, output_layer: str,
                      height, width, trust: bool = False
                      ) -> Tuple[Callable, tuple]:
  import tensorflow as tf
  check_model(path, trust)
  graph_def = tf.compat.v1.GraphDef()
  with open(path, 'rb') as f:
    try:
      graph_def.ParseFromString(f.read())
    except Exception as e:
      raise LabelImageError(f'{path!r} is not a frozen GraphDef ({e}).') from e
  input_name = input_layer.split(':')[0]
  output_name = output_layer.split(':')[0]
  nodes = {node.name: node for node in graph_def.node}
  for flag, name in (('input_layer', input_name),
                     ('output_layer', output_name)):
    if name not in nodes:
      placeholders = [n.name for n in graph_def.node if n.op == 'Placeholder']
      raise LabelImageError(
          f'{path} has no op named {name!r} (--{flag}). Its placeholders: '
          f'{", ".join(placeholders) or "none"}; its last op: '
          f'{graph_def.node[-1].name}.')
  dims = [d.size for d in nodes[input_name].attr['shape'].shape.dim]
  model_size = (tuple(d if d > 0 else None for d in dims[1:3])
                if len(dims) == 4 else None)
  size = choose_size(model_size, height, width, path)

  def imports():
    tf.compat.v1.import_graph_def(graph_def, name='')

  wrapped = tf.compat.v1.wrap_function(imports, [])
  run = wrapped.prune(f'{input_name}:0', f'{output_name}:0')

  def predict(images):
    return run(tf.constant(images)).numpy()

  if NOVELTY_OUTPUT in nodes:
    run_both = wrapped.prune(f'{input_name}:0', [f'{output_name}:0',
                                                 f'{NOVELTY_OUTPUT}:0'])

    def both(images):
      probs, novelty = run_both(tf.constant(images))
      return probs.numpy(), novelty.numpy()
    predict.with_novelty = both
  return predict, size
