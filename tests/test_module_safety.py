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
