"""Files of the module cache, verified before use.

A converted module (a bundled preset's SavedModel folder, a module's
`.tflite` file) is recorded when written: each file's size and SHA-256, in
`<file>.verified.json` beside a single file, or `retrain_files.json` inside
a folder. Before use the files are checked against the record, so a
half-written, truncated or altered file is converted again instead of
being loaded (a truncated `.tflite` crashed the interpreter with a
segmentation fault). A file without a record (written by an older
version) is treated as unverified by the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from retrain.common import atomic

FILE_RECORD_SUFFIX = '.verified.json'
FOLDER_RECORD = 'retrain_files.json'
_BLOCK = 1 << 20


def _digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    while True:
      block = f.read(_BLOCK)
      if not block:
        return digest.hexdigest()
      digest.update(block)


def entry(path: str) -> dict:
  """{'size': bytes, 'sha256': hex digest} of the file at `path`: what a
  record holds of it."""
  return {'size': os.path.getsize(path), 'sha256': _digest(path)}


def _mismatch(path: str, recorded: dict) -> Optional[str]:
  """Why `path` is not the file `recorded` ({size, sha256}) describes."""
  try:
    size = os.path.getsize(path)
  except OSError as e:
    return f'{os.path.basename(path)} cannot be read ({e.strerror or e})'
  if size != recorded.get('size'):
    return (f'{os.path.basename(path)} has {size} bytes, '
            f'{recorded.get("size")} were written')
  if _digest(path) != recorded.get('sha256'):
    return f'{os.path.basename(path)} does not match its recorded SHA-256'
  return None


def _load(record: str) -> Optional[dict]:
  try:
    with open(record, encoding='utf-8') as f:
      data = json.load(f)
    return data if isinstance(data, dict) else None
  except (OSError, ValueError):
    return None


def record_data(path: str, data: bytes) -> None:
  """Records the bytes `data` about to be written to `path` (record first:
  a reader never sees the file without its record)."""
  atomic.write_text(path + FILE_RECORD_SUFFIX, json.dumps(
      {'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}))


def check_file(path: str) -> Optional[str]:
  """None if the file at `path` matches its record, else why not
  ('no record' for a file written by an older version)."""
  recorded = _load(path + FILE_RECORD_SUFFIX)
  if recorded is None:
    return 'it has no size and hash record (an older version wrote it)'
  return _mismatch(path, recorded)


def remove_file(path: str) -> None:
  """Removes a file and its record (ignoring what is gone already)."""
  for name in (path, path + FILE_RECORD_SUFFIX):
    try:
      os.remove(name)
    except FileNotFoundError:
      pass


def record_folder(folder: str, skip: tuple = ()) -> None:
  """Records every file below `folder` in its FOLDER_RECORD, but those in
  its sub-folders named in `skip` (files added later, e.g. a runtime's)."""
  files = {}
  for parent, subfolders, names in os.walk(folder):
    if parent == folder:
      subfolders[:] = [s for s in subfolders if s not in skip]
    for name in names:
      path = os.path.join(parent, name)
      rel = os.path.relpath(path, folder).replace(os.sep, '/')
      if rel != FOLDER_RECORD:
        files[rel] = entry(path)
  atomic.write_text(os.path.join(folder, FOLDER_RECORD),
                    json.dumps({'files': files}, indent=1, sort_keys=True))


def check_folder(folder: str) -> Optional[str]:
  """None if every file recorded in `folder`'s FOLDER_RECORD matches, else
  why not; 'no record' as check_file."""
  recorded = _load(os.path.join(folder, FOLDER_RECORD))
  if recorded is None or not isinstance(recorded.get('files'), dict):
    return 'it has no size and hash record (an older version wrote it)'
  for rel, entry in sorted(recorded['files'].items()):
    why = _mismatch(os.path.join(folder, *rel.split('/')), entry)
    if why:
      return why
  return None


def has_record(path: str) -> bool:
  """Whether `path` (file or folder) has a record to check against."""
  if os.path.isdir(path):
    return os.path.exists(os.path.join(path, FOLDER_RECORD))
  return os.path.exists(path + FILE_RECORD_SUFFIX)
