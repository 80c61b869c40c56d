"""Walking an untrusted folder: regular files only, each real folder once.

Links are followed (people link data sets from other disks), but a folder
reached twice (a link loop, or a second link) is walked once, a link to the
image folder itself or to one of its ancestors ('/' included) is refused, and
FIFOs, sockets and devices are skipped without being opened. Imports nothing
of TensorFlow; shared by discovery and label_image.
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Sequence

import numpy as np
from absl import logging

from retrain.common import phases


def is_image_file(name: str, extensions: Sequence[str]) -> bool:
  """True for a visible file whose name ends in one of `extensions` (any
  case)."""
  return not name.startswith('.') and name.lower().endswith(tuple(extensions))


_KINDS = ((stat.S_ISFIFO, 'a FIFO (named pipe)'),
          (stat.S_ISSOCK, 'a socket'),
          (stat.S_ISCHR, 'a character device'),
          (stat.S_ISBLK, 'a block device'),
          (stat.S_ISDIR, 'a folder'))


def not_regular_reason(mode: int) -> str:
  """Why a file of st_mode `mode` is not read (for a non-regular file)."""
  for test, name in _KINDS:
    if test(mode):
      return f'{name}, not a regular file; never opened'
  return 'not a regular file; never opened'


# Files SeenFiles keeps in a dict before it merges them into its arrays.
_SEEN_BATCH = 65_536


class SeenFiles:
  """The first relative path listed for each real file (st_dev, st_ino).

  Memory: the keys of all but the last _SEEN_BATCH files are one sorted
  numpy S16 array (dev and inode, big-endian) with int64 positions into a
  list of the paths (strings the caller keeps anyway): about 32 bytes a
  file. A dict of one Python int key per file took about 90, and most of
  it stayed with the allocator after discovery (issue 17, docs/scale.md).
  """

  def __init__(self):
    self._recent: dict = {}  # 16-byte key -> relative path
    self._keys = np.zeros(0, 'S16')  # sorted
    self._at = np.zeros(0, np.int64)  # self._paths index of each key
    self._paths: list = []

  def first(self, st: os.stat_result, rel: str) -> str:
    """The first relative path recorded for the file `st` describes;
    `rel` (recorded now) if none was."""
    key = st.st_dev.to_bytes(8, 'big') + st.st_ino.to_bytes(8, 'big')
    earlier = self._recent.get(key)
    if earlier is not None:
      return earlier
    pos = int(np.searchsorted(self._keys, key))
    # Compared as a 16-byte item: self._keys[pos] would be a bytes object
    # with its trailing zero bytes cut.
    if pos < len(self._keys) and self._keys[pos:pos + 1] == np.array(key,
                                                                   'S16'):
      return self._paths[self._at[pos]]
    self._recent[key] = rel
    if len(self._recent) >= _SEEN_BATCH:
      self._merge()
    return rel

  def _merge(self) -> None:
    start = len(self._paths)
    self._paths.extend(self._recent.values())
    keys = np.concatenate([self._keys, np.array(list(self._recent), 'S16')])
    at = np.concatenate([self._at, np.arange(start, len(self._paths))])
    self._recent = {}
    order = np.argsort(keys, kind='stable')
    self._keys, self._at = keys[order], at[order]
    del keys, at, order
    phases.trim_heap()  # the arrays it replaced


class Walk:
  """What a discovery has seen: real folders and files, and what it skipped.

  One Walk shared by several class folders makes a folder or file reached
  through a link from another class count once.
  """

  def __init__(self, image_dir: str):
    self.image_dir = os.path.abspath(image_dir)
    real = os.path.realpath(image_dir)
    # image_dir's real folder and every folder containing it, '/' included.
    self.ancestors = {real}
    while os.path.dirname(real) != real:
      real = os.path.dirname(real)
      self.ancestors.add(real)
    self.folders: dict = {}  # (st_dev, st_ino) -> first path
    self.files = SeenFiles()
    self.skipped: list = []  # (path, reason)

  def skip(self, path: str, reason: str) -> None:
    logging.warning('Skipping %s: %s', path, reason)
    self.skipped.append((path, reason))

  def enter(self, folder: str) -> bool:
    """Whether to walk `folder` (False, with the reason logged, if not)."""
    real = os.path.realpath(folder)
    if real in self.ancestors:
      self.skip(folder, f'links to {real!r}, which contains the image folder '
                f'{self.image_dir!r}: walking it would list the whole disk '
                'or the data set twice; link the data folder itself instead')
      return False
    try:
      st = os.stat(folder)
    except OSError as e:
      self.skip(folder, f'cannot be listed: {e.strerror or e}')
      return False
    first = self.folders.setdefault((st.st_dev, st.st_ino), folder)
    if first != folder:
      self.skip(folder, f'the same folder as {first} (a symbolic link loop '
                'or a second link); listed once')
      return False
    return True


def list_images(class_dir: str, image_dir: str,
                       extensions: Sequence[str],
                       walk: Optional[Walk] = None) -> list:
  """Relative paths of the images below class_dir, nested folders included.

  Only regular files; see the module doc for links. Skipped entries are
  added to `walk.skipped`.
  """
  walk = walk if walk is not None else Walk(image_dir)
  found = []
  if not walk.enter(class_dir):
    return found
  pending = [class_dir]
  while pending:
    folder = pending.pop()
    try:
      # Names only, not os.scandir's DirEntry objects (each with its name
      # and path strings): a folder of 200,000 files held about 50 MB of
      # them at once, most of which the allocator kept after (issue 17).
      names = sorted(os.listdir(folder))
    except OSError as e:
      walk.skip(folder, f'cannot be listed: {e.strerror or e}')
      continue
    subfolders = []
    for name in names:
      # Hidden files and folders (.git, .ipynb_checkpoints, ...) are never
      # data.
      if name.startswith('.'):
        continue
      path = os.path.join(folder, name)
      try:
        st = os.stat(path)  # follows links; never opens the file
      except OSError:
        st = None  # A broken link: the bottleneck step names it.
      if st is not None and stat.S_ISDIR(st.st_mode):
        subfolders.append(path)
        continue
      if not is_image_file(name, extensions):
        continue
      if st is not None and not stat.S_ISREG(st.st_mode):
        walk.skip(path, not_regular_reason(st.st_mode))
        continue
      rel = os.path.relpath(path, image_dir).replace(os.sep, '/')
      if st is not None:
        first = walk.files.first(st, rel)
        if first is not rel:
          walk.skip(path, 'the same file as '
                    f'{os.path.join(image_dir, *first.split("/"))} (reached '
                    'by two paths); used once')
          continue
      found.append(rel)
    # Depth first, in name order; each real folder once.
    pending.extend(sub for sub in reversed(subfolders) if walk.enter(sub))
  return sorted(found)

