"""Modules are code: graphs that touch files or Python are refused."""

import pytest
import tensorflow as tf

from retrain.errors import ModuleError
from retrain.features import module_safety, modules


def _save(path, body):
  class Module(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def __call__(self, images):
      return body(images)

  tf.saved_model.save(Module(), str(path))
  return str(path)


def _pool(images):
  return tf.reduce_mean(images, axis=[1, 2])


def test_module_reading_a_file_is_refused_until_trusted(tmp_path):
  secret = tmp_path / 'secret.txt'
  secret.write_text('token')

  def leaky(images):
    size = tf.strings.length(tf.io.read_file(str(secret)))
    return _pool(images) + tf.cast(size, tf.float32) * 0.0

  path = _save(tmp_path / 'reads', leaky)
  with pytest.raises(ModuleError) as e:
    modules.load_module(path)
  text = str(e.value)
  assert 'ReadFile (in function' in text and 'trust_module=True' in text
  assert e.value.fields == ('trust_module',)
  module = modules.load_module(path, trust=True)
  assert module.output_dim == 3


def test_module_writing_files_or_calling_python_is_refused(tmp_path):
  def writes(images):
    with tf.control_dependencies([tf.io.write_file(str(tmp_path / 'x'),
                                                   'pwned')]):
      return tf.identity(_pool(images))

  def python(images):
    return tf.py_function(lambda x: x, [_pool(images)], tf.float32)

  for name, body, op in (('writes', writes, 'WriteFile'),
                         ('python', python, 'EagerPyFunc')):
    path = _save(tmp_path / name, body)
    assert op in module_safety.unsafe_ops(path)
    with pytest.raises(ModuleError, match=op):
      modules.load_module(path)
  assert not (tmp_path / 'x').exists()  # refused before anything ran


def test_plain_module_passes(fake_module):
  assert module_safety.unsafe_ops(fake_module) == {}
  assert modules.load_module(fake_module).output_dim == 6


# --- Bypasses of a deny-list: each refused, with nothing written ----------


def test_print_to_a_file_stream_is_refused(tmp_path):
  target = tmp_path / 'printed'

  def prints(images):
    with tf.control_dependencies([tf.print('pwned', output_stream=(
        f'file://{target}'))]):
      return tf.identity(_pool(images))

  path = _save(tmp_path / 'prints', prints)
  with pytest.raises(ModuleError, match='PrintV2'):
    modules.load_module(path)
  assert not target.exists()


def test_save_v2_with_any_path_is_refused(tmp_path):
  """Checkpoint ops are accepted only in the saver's own functions."""
  target = tmp_path / 'saved'

  def saves(images):
    pooled = _pool(images)
    write = tf.raw_ops.SaveV2(prefix=str(target), tensor_names=['x'],
                              shape_and_slices=[''], tensors=[pooled])
    with tf.control_dependencies([write]):
      return tf.identity(pooled)

  path = _save(tmp_path / 'saves', saves)
  found = module_safety.unsafe_ops(path)
  assert list(found) == ['SaveV2']
  assert all('traced_save' not in where for where in found['SaveV2'])
  with pytest.raises(ModuleError, match='SaveV2'):
    modules.load_module(path)
  assert not list(tmp_path.glob('saved*'))


def test_a_text_saved_model_is_scanned(tmp_path):
  from google.protobuf import text_format
  from tensorflow.core.protobuf import saved_model_pb2

  def writes(images):
    with tf.control_dependencies([tf.io.write_file(str(tmp_path / 'x'),
                                                   'pwned')]):
      return tf.identity(_pool(images))

  path = _save(tmp_path / 'text', writes)
  saved = saved_model_pb2.SavedModel()
  pb = tmp_path / 'text' / 'saved_model.pb'
  saved.ParseFromString(pb.read_bytes())
  (tmp_path / 'text' / 'saved_model.pbtxt').write_text(
      text_format.MessageToString(saved))
  pb.unlink()
  with pytest.raises(ModuleError, match='WriteFile'):
    modules.load_module(path)
  assert not (tmp_path / 'x').exists()


def _dataset_graph(target) -> bytes:
  """A serialized dataset graph whose map writes `target`."""
  def write(i):
    with tf.control_dependencies([tf.io.write_file(
        str(target), tf.strings.as_string(i))]):
      return tf.identity(i)

  dataset = tf.data.Dataset.range(1).map(write)
  return tf.raw_ops.DatasetToGraphV2(input_dataset=dataset._variant_tensor
                                     ).numpy()


@pytest.mark.parametrize('form', ['constant', 'variable'])
def test_a_graph_carried_as_data_is_refused(tmp_path, form):
  """WriteFile hidden in a serialized dataset graph run by DatasetFromGraph,
  the graph in a constant or in a variable."""
  target = tmp_path / 'from_dataset'
  graph = _dataset_graph(target)
  assert not target.exists()

  class Module(tf.Module):

    def __init__(self):
      super().__init__()
      self.graph = tf.Variable(graph) if form == 'variable' else None

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    def __call__(self, images):
      data = self.graph if form == 'variable' else tf.constant(graph)
      dataset = tf.raw_ops.DatasetFromGraph(graph_def=data)
      with tf.control_dependencies([tf.raw_ops.DatasetCardinality(
          input_dataset=dataset)]):
        return tf.identity(_pool(images))

  path = str(tmp_path / form)
  tf.saved_model.save(Module(), path)
  found = module_safety.unsafe_ops(path)
  assert 'DatasetFromGraph' in found
  assert any(form in where for where in
             found['a serialized graph carried as data'])
  with pytest.raises(ModuleError, match='serialized graph'):
    modules.load_module(path)
  assert not target.exists()


def test_check_model_covers_exports_and_frozen_graphs(tmp_path):
  """The one check label_image and evaluation call: a frozen graph with a
  WriteFile node is refused, unless trusted."""
  graph = tf.Graph()
  with graph.as_default():
    tf.io.write_file(str(tmp_path / 'x'), 'pwned')
  frozen = tmp_path / 'frozen.pb'
  frozen.write_bytes(graph.as_graph_def().SerializeToString())
  with pytest.raises(ModuleError, match='WriteFile'):
    module_safety.check_model(str(frozen), trust=False)
  module_safety.check_model(str(frozen), trust=True)
  assert not (tmp_path / 'x').exists()


def test_bundled_modules_pass_the_allow_list():
  import os
  root = os.environ.get('RETRAIN_MODULE_CACHE', '')
  bundled = [os.path.join(root, name) for name in sorted(os.listdir(root))
             if name.startswith('efficientnet_lite')] if os.path.isdir(
                 root) else []
  if not bundled:
    pytest.skip('no converted bundled module in RETRAIN_MODULE_CACHE')
  for path in bundled:
    assert module_safety.unsafe_ops(path) == {}, path


def test_label_image_refuses_a_frozen_graph_that_writes(tmp_path):
  from tools import label_image
  graph = tf.Graph()
  with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3],
                                      name='Placeholder')
    with tf.control_dependencies([tf.io.write_file(str(tmp_path / 'x'),
                                                   'pwned')]):
      tf.nn.softmax(tf.reduce_mean(images, axis=[1, 2]), name='final_result')
  frozen = tmp_path / 'frozen.pb'
  frozen.write_bytes(graph.as_graph_def().SerializeToString())
  (tmp_path / 'frozen.txt').write_text('a\nb\nc\n')
  with pytest.raises(ModuleError, match='WriteFile.*trust_module'):
    label_image.load_model(graph=str(frozen), labels=str(tmp_path /
                                                         'frozen.txt'))
  assert not (tmp_path / 'x').exists()
