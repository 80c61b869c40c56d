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

from absl import logging


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
    # st_dev << 64 | st_ino -> the first relative path (the string the
    # caller keeps anyway): one int key per file, not a tuple and a second
    # copy of the path (about 200 bytes less per file at a million files).
    self.files: dict = {}
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
        first = walk.files.setdefault(st.st_dev << 64 | st.st_ino, rel)
        if first is not rel:
          walk.skip(path, 'the same file as '
                    f'{os.path.join(image_dir, *first.split("/"))} (reached '
                    'by two paths); used once')
          continue
      found.append(rel)
    # Depth first, in name order; each real folder once.
    pending.extend(sub for sub in reversed(subfolders) if walk.enter(sub))
  return sorted(found)

