"""Loading an image feature-vector module and describing it.

A module is a TF2 SavedModel in the TF-Hub image feature-vector convention:
called on float32 images [batch, H, W, 3] in [0, 1] it returns float32
feature vectors [batch, D]. `--tfhub_module` names it by a preset name (see
`retrain.features.presets`), a TF-Hub / Kaggle handle (URL), or a local folder; every
form is loaded through tensorflow_hub, which caches downloads.

The module's identity for the bottleneck cache is its handle plus a
fingerprint of its files (saved_model.pb and the variables index, which
holds a checksum of every variable), so a module replaced under the same
path never reuses stale vectors.

The SavedModel itself is loaded only when something uses the module's
`obj` or `call` (fine-tuning, a member that computes float vectors, a
conversion to TFLite, an export of a float member): the first full load
writes a small record of what a run needs before that (the input size and
output size) into the module cache, keyed by the fingerprint
(`described/<fingerprint>.json`), and later loads read it instead. A run
whose vectors are cached and whose members run int8 never loads it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import threading
from typing import Callable, Optional, Tuple

import tensorflow as tf
from absl import logging

from retrain.errors import ModuleError
from retrain.features import module_record, module_safety, presets

# Marks FeatureModule.obj or .call as not given: `loader` gives it on first use.
_UNSET = object()
# One load at a time (calls come from several threads; a derived module's
# loader reads the module it was derived from).
_LOAD_LOCK = threading.RLock()


class _OnFirstUse:
  """FeatureModule.obj and .call: the value given, else what the module's
  `loader` returns, run once on first use (the one place a deferred
  SavedModel is loaded)."""

  def __set_name__(self, owner, name):
    self._slot = '_' + name

  def __get__(self, module, owner=None):
    if module is None:
      return _UNSET  # the dataclass default: not given
    value = module.__dict__.get(self._slot, _UNSET)
    if value is _UNSET:
      with _LOAD_LOCK:
        if module.__dict__.get(self._slot, _UNSET) is _UNSET:
          _fill(module)
        value = module.__dict__[self._slot]
    return value

  def __set__(self, module, value):
    module.__dict__[self._slot] = value


def _fill(module: 'FeatureModule') -> None:
  if module.loader is None:
    raise AttributeError(f'Module {module.handle!r} was given no obj or call '
                         'and has no loader.')
  obj, call = module.loader()
  for slot, value in (('_obj', obj), ('_call', call)):
    if module.__dict__.get(slot, _UNSET) is _UNSET:
      module.__dict__[slot] = value


@dataclasses.dataclass
class FeatureModule:
  """A feature-vector module (its SavedModel loaded on first use).

  Attributes:
    handle: what the user gave (preset name, URL or path).
    resolved: what was loaded (URL or local path).
    path: the local folder of the SavedModel.
    fingerprint: hex digest of the module's files.
    input_size: (height, width) the images are resized to.
    output_dim: D, the length of a feature vector.
    obj: the object returned by hub.load (loaded on first use when not
      given: see `loader`).
    call: float32 [batch, H, W, 3] in [0, 1] -> float32 [batch, D]
      (likewise).
    prepare: if set, readies `call` (e.g. opens a second runtime) so that
      the first call does not pay for it; calling it is optional.
    parallel_calls: how many calls may run at once, from different threads,
      to use the cores (1: one at a time; known after `prepare`).
    quantization: None for the float module; else the name of the
      quantisation `call` runs (retrain/features/int8.py), which its
      vectors' cache namespace carries.
    loader: () -> (obj, call), run once when `obj` or `call` is first
      read and was not given; it raises ModuleError if the module cannot
      be loaded.
  """
  handle: str
  resolved: str
  path: str
  fingerprint: str
  input_size: Tuple[int, int]
  output_dim: int
  obj: object = _OnFirstUse()
  call: Callable = _OnFirstUse()
  prepare: Optional[Callable[[], None]] = None
  parallel_calls: int = 1
  quantization: Optional[str] = None
  loader: Optional[Callable[[], tuple]] = dataclasses.field(
      default=None, repr=False, compare=False)

  @property
  def loaded(self) -> bool:
    """True once `obj` is there (given, or loaded by `loader`)."""
    return self.__dict__.get('_obj', _UNSET) is not _UNSET

  def identity(self) -> dict:
    """What a feature vector depends on besides the image (cache namespace)."""
    identity = {
        'module': self.resolved,
        'module_fingerprint': self.fingerprint,
        'input_size': list(self.input_size),
        'output_dim': self.output_dim,
    }
    if self.quantization:
      identity['quantization'] = self.quantization
    return identity


def ensure_loaded(module: FeatureModule) -> None:
  """Loads `module`'s SavedModel now if it is not loaded yet (what the
  first use of `obj` does; the same ModuleError)."""
  with _LOAD_LOCK:
    if not module.loaded:
      _fill(module)


def derive(module: FeatureModule, cls: Optional[type] = None,
           **changes) -> FeatureModule:
  """dataclasses.replace(module, **changes) as a `cls` (default: module's
  class) without loading anything: an `obj` or `call` that `module` has
  not loaded yet and `changes` does not give comes from `module` on first
  use (so the SavedModel is loaded once, for both)."""
  cls = cls or type(module)
  given = dict(changes)
  for field in dataclasses.fields(cls):
    if field.name in given or not field.init:
      continue
    if field.name in ('obj', 'call'):  # read without loading
      value = module.__dict__.get('_' + field.name, _UNSET)
      if value is not _UNSET:
        given[field.name] = value
    elif hasattr(module, field.name):
      given[field.name] = getattr(module, field.name)
  if 'obj' not in given or 'call' not in given:
    given['loader'] = lambda: (module.obj, module.call)
  return cls(**given)


def usable_cores() -> int:
  """The CPU cores this process may run on (its affinity, e.g. a
  container's cpuset), not all the machine has."""
  try:
    return len(os.sched_getaffinity(0)) or 1
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def fingerprint_module(path: str) -> str:
  """Hex digest of a SavedModel folder's graph and variables index."""
  digest = hashlib.sha256()
  for rel in ('saved_model.pb', 'saved_model.pbtxt',
              os.path.join('variables', 'variables.index')):
    full = os.path.join(path, rel)
    if os.path.exists(full):
      digest.update(rel.encode())
      with open(full, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()[:32]


def _declared_input_size(obj) -> Optional[Tuple[Optional[int], Optional[int]]]:
  """(H, W) from the module's call signatures; None entries when variable."""
  specs = []
  call = getattr(obj, '__call__', None)  # noqa: B004 (the tf.function, not a test)
  for concrete in getattr(call, 'concrete_functions', None) or ():
    args = concrete.structured_input_signature[0]
    if args:
      specs.append(args[0])
  signatures = getattr(obj, 'signatures', None) or {}
  if 'serving_default' in signatures:
    specs.extend(signatures['serving_default'].structured_input_signature[1]
                 .values())
  for spec in specs:
    if isinstance(spec, tf.TensorSpec) and spec.shape.rank == 4:
      return spec.shape[1], spec.shape[2]
  return None


def saved_variables(path: str) -> dict:
  """{variable name: float32 array} of the SavedModel folder at `path`,
  read from its checkpoint without loading (or running) its graph: what
  `tf.saved_model.load(path).variables` holds, for readers that need only
  the weights (e.g. the heat maps of a bundled module)."""
  from tensorflow.core.protobuf import saved_model_pb2
  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(path, tf.saved_model.SAVED_MODEL_FILENAME_PB),
            'rb') as f:
    saved.ParseFromString(f.read())
  nodes = saved.meta_graphs[0].object_graph_def.nodes
  reader = tf.train.load_checkpoint(
      os.path.join(path, 'variables', 'variables'))
  stored = reader.get_variable_to_shape_map()
  # Each node's paths from the root; the checkpoint keys a variable by one.
  paths, todo = {0: ['']}, [0]
  while todo:
    node = todo.pop(0)
    for child in nodes[node].children:
      fresh = child.node_id not in paths
      paths.setdefault(child.node_id, []).extend(
          f'{p}{child.local_name}/' for p in paths[node])
      if fresh:
        todo.append(child.node_id)
  found = {}
  for node_id, routes in paths.items():
    if nodes[node_id].HasField('variable'):
      for route in routes:
        if route + '.ATTRIBUTES/VARIABLE_VALUE' in stored:
          found[nodes[node_id].variable.name] = reader.get_tensor(
              route + '.ATTRIBUTES/VARIABLE_VALUE')
          break
  return found


def _describe_load_failure(handle: str, resolved: str, error: Exception) -> str:
  if resolved.startswith(('http://', 'https://')) or '://' in resolved:
    return (f'Could not load module {handle!r} from {resolved} ({error}). '
            'Downloading needs a network; without one, use a bundled module '
            f'(the default tfhub_module={presets.DEFAULT_MODULE}), or a local '
            'folder holding a TF2 SavedModel. See the presets (list_modules).')
  if not os.path.exists(resolved):
    return (f'Module {handle!r} is neither a preset name nor an existing '
            'folder. Pass a preset (see list_modules), a TF-Hub handle, or '
            'the path of a TF2 SavedModel folder.')
  return (f'Could not load the module in {resolved!r} ({error}). It must be a '
          'TF2 SavedModel image feature-vector module (TF1 hub.Module format '
          'is not supported).')


def _size_mismatch(handle: str, image_size: int, fixed) -> ModuleError:
  return ModuleError(
      f'image_size={image_size} does not match module {handle!r}, whose '
      f'input size is fixed at {fixed[0]}x{fixed[1]}: drop image_size.',
      fields=('image_size',))


def check_handle(handle: str, image_size: Optional[int] = None,
                 trust: bool = False) -> None:
  """The errors of load_module that need nothing loaded, raised at once: a
  handle that is neither a preset, a URL nor an existing path; a bundled
  preset's fixed input size against image_size; a local module that may
  touch files or Python (module_safety). A run checks these before the
  slow steps that come before loading the module (hashing every file).

  Raises:
    ModuleError: as load_module would for these.
  """
  preset = presets.PRESETS.get(handle)
  if preset is not None:
    size = preset.input_size
    if preset.bundled and image_size and size and image_size != size:
      raise _size_mismatch(handle, image_size, (size, size))
    return
  if '://' in handle:
    return  # Downloaded, then checked, when loaded.
  if not os.path.exists(handle):
    raise ModuleError(_describe_load_failure(handle, handle, None),
                      fields=('tfhub_module', 'list_modules'))
  module_safety.check_module(handle, handle, trust)


def _resolve(handle: str) -> str:
  """hub.resolve(handle): a local folder is its own path (what hub's path
  resolver returns), found without importing tensorflow_hub, which imports
  Keras (over a second of every run's start-up)."""
  if os.path.isdir(handle):
    return handle
  import tensorflow_hub as hub
  return hub.resolve(handle)


def _load(path: str):
  """hub.load(path): a folder holding a TF2 SavedModel (no TF1 Hub
  module file) is loaded as hub.load loads it, by tf.saved_model.load
  (marked as hub marks it), without importing tensorflow_hub."""
  if (os.path.isdir(path) and
      os.path.isfile(os.path.join(path, tf.saved_model.SAVED_MODEL_FILENAME_PB))
      and not os.path.exists(os.path.join(path, 'tfhub_module.pb'))):
    obj = tf.saved_model.load(path)
    obj._is_hub_module_v1 = False  # noqa: SLF001 (as hub.load sets it)
    return obj
  import tensorflow_hub as hub
  return hub.load(path)


def _output_spec(call):
  """The output of tf.function `call` as traced (shape [None, D]) when it
  is one tensor of rank 2 with D known, else None. A warm run never calls
  the module, so its output size is read from the trace (a forward pass
  per member cost about 0.2 s each)."""
  output = call.get_concrete_function().structured_outputs
  if (isinstance(output, tf.Tensor) and output.shape.rank == 2 and
      output.shape[1] is not None):
    return output
  return None


def _locate(handle: str, cache_dir: Optional[str], trust: bool,
            checked: bool) -> Tuple[str, str]:
  """(resolved, path) of `handle`, its graph checked by module_safety
  (unless `checked` covers it) before anything of it is loaded or run."""
  resolved = presets.resolve_module(handle, cache_dir)
  try:
    # Resolve (for a URL: download) first, so the graph is checked before
    # any of it is loaded or run.
    path = _resolve(resolved)
    if not (checked and os.path.isdir(handle) and
            os.path.realpath(path) == os.path.realpath(handle)):
      module_safety.check_module(handle, path, trust)
  except ModuleError:
    raise
  except Exception as e:  # hub raises many types; all mean "not loadable".
    raise ModuleError(_describe_load_failure(handle, resolved, e),
                      fields=('tfhub_module', 'list_modules')) from e
  return resolved, path


def _load_checked(handle: str, resolved: str, path: str):
  """The loaded SavedModel at `path` (checked by _locate), callable.

  Raises:
    ModuleError: it cannot be loaded or has no __call__.
  """
  try:
    obj = _load(path)
  except Exception as e:  # hub raises many types; all mean "not loadable".
    raise ModuleError(_describe_load_failure(handle, resolved, e),
                      fields=('tfhub_module', 'list_modules')) from e
  if not callable(obj):
    raise ModuleError(f'Module {handle!r} has no __call__; it must be a TF2 '
                      'image feature-vector module.')
  return obj


def _input_size(handle: str, image_size: Optional[int],
                fixed) -> Tuple[int, int]:
  """(H, W) the module is run at: its `fixed` size (None: it takes any),
  else image_size, else its preset's size.

  Raises:
    ModuleError: image_size differs from a fixed size, or no size is known.
  """
  if fixed and image_size and tuple(fixed) != (image_size, image_size):
    raise _size_mismatch(handle, image_size, fixed)
  if fixed:
    return int(fixed[0]), int(fixed[1])
  if image_size:
    return image_size, image_size
  if presets.preset_input_size(handle):
    return (presets.preset_input_size(handle),) * 2
  raise ModuleError(
      f'Module {handle!r} accepts images of any size and none was given: '
      'pass image_size with the size it was trained at (e.g. 224, or 299 '
      'for Inception V3).',
      fields=('image_size',))


def _traced_call(obj, size) -> Callable:
  """obj as a tf.function on float32 [None, H, W, 3]."""

  @tf.function(input_signature=[tf.TensorSpec([None, size[0], size[1], 3],
                                              tf.float32)], autograph=False)
  def call(images):
    return obj(images)
  return call


def _load_deferred(handle: str, resolved: str, path: str, size):
  """The loader of a module described by its record: (obj, call)."""
  logging.info('Loading module %s (first use).', handle)
  with tf.init_scope():  # eagerly, even when first used inside a trace
    obj = _load_checked(handle, resolved, path)
  return obj, _traced_call(obj, size)


def _output_dim(handle: str, call, size) -> int:
  """D of call's [batch, D] output.

  Raises:
    ModuleError: the output is not feature vectors [batch, D].
  """
  probe = _output_spec(call)
  if probe is None:  # Not [batch, D] with D known when traced: run it.
    probe = call(tf.zeros([1, size[0], size[1], 3], tf.float32))
  if isinstance(probe, dict) or probe.shape.rank != 2:
    shape = {k: v.shape for k, v in probe.items()} if isinstance(
        probe, dict) else probe.shape
    raise ModuleError(
        f'Module {handle!r} returns {shape}, not feature vectors [batch, D]: '
        'use an image *feature_vector* module, not a classification one.')
  return int(probe.shape[1])


def load_module(handle: str, image_size: Optional[int] = None,
                cache_dir: Optional[str] = None,
                trust: bool = False, checked: bool = False) -> FeatureModule:
  """Describes a feature-vector module, loading it only if it has no record.

  The module's graph is checked (module_safety) and its sizes known at
  once; its SavedModel is loaded now when it has no record in the module
  cache (which this load then writes), else on first use of `obj` or
  `call` (same errors as here).

  Args:
    handle: preset name, TF-Hub handle (URL) or local SavedModel folder.
    image_size: input height and width for modules that accept any size;
      must match the module's own size when it has one.
    cache_dir: the module cache: bundled presets are converted and module
      records kept there (None: the default).
    trust: load even a module whose graph can touch files or Python
      (retrain.features.module_safety); checked before anything is loaded.
    checked: check_handle has passed this handle in this run, so a local
      module's graph is not scanned again (a download still is).

  Raises:
    ModuleError: the module cannot be loaded, has no usable input size, or
      does not return feature vectors.
  """
  resolved, path = _locate(handle, cache_dir, trust, checked)
  fingerprint = fingerprint_module(path)
  where = module_record.record_path(fingerprint, cache_dir)
  record = module_record.read_record(where, fingerprint)
  if record is not None:
    size = _input_size(handle, image_size, record['fixed_input_size'])
    dim = record['output_dims'].get(module_record.size_key(size))
    if dim:
      logging.info('Module %s: input %dx%d, %d-d feature vectors (from %s; '
                   'loaded on first use).', handle, size[0], size[1], dim,
                   where)
      return FeatureModule(
          handle=handle, resolved=resolved, path=path, fingerprint=fingerprint,
          input_size=size, output_dim=dim,
          loader=functools.partial(_load_deferred, handle, resolved, path,
                                   size))

  obj = _load_checked(handle, resolved, path)
  declared = _declared_input_size(obj)
  fixed = declared if declared and None not in declared else None
  size = _input_size(handle, image_size, fixed)
  call = _traced_call(obj, size)
  dim = _output_dim(handle, call, size)
  module_record.write_record(where, fingerprint, fixed, size, dim, record)
  module = FeatureModule(
      handle=handle, resolved=resolved, path=path, fingerprint=fingerprint,
      input_size=size, output_dim=dim, obj=obj, call=call)
  logging.info('Module %s: input %dx%d, %d-d feature vectors.', handle,
               size[0], size[1], module.output_dim)
  return module
