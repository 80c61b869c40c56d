"""Walking an untrusted folder: regular files only, each real folder once.

Links inside the image folder are followed. Links that lead out of it are
refused unless the caller allows them (retrain's `follow_outside_links`:
people link data sets from other disks); a link into a kernel file system
(/proc, /sys, /dev) is refused always. A folder reached twice (a link loop,
or a second link) is walked once, a link to the image folder itself or to
one of its ancestors ('/' included) is refused, and FIFOs, sockets and
devices are skipped without being opened.

`open_file` and `read_file` are how an image file is read: refused
unopened when it is not a regular file, lies on a kernel file system, or
is larger than the caller's limit (checked again on the opened
descriptor, and while reading: a file that grows is cut off). Imports
nothing of TensorFlow; shared by discovery, the bottleneck step and
label_image.
"""

from __future__ import annotations

import functools
import io
import os
import stat
from typing import BinaryIO, Optional, Sequence

import numpy as np
from absl import logging

from retrain.common import phases as phases_lib


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


# Kernel file systems: their files are not data (procfs files report a size
# of 0 and then never end, /proc/self/pagemap is gigabytes).
KERNEL_FOLDERS = ('/proc', '/sys', '/dev')


@functools.lru_cache(maxsize=1)
def _kernel_devices() -> frozenset:
  devices = set()
  for folder in KERNEL_FOLDERS[:2]:
    try:
      devices.add(os.stat(folder).st_dev)
    except OSError:
      pass
  return frozenset(devices)


def kernel_folder(real: str) -> Optional[str]:
  """The kernel file system (/proc, /sys, /dev) real path `real` lies in,
  or None."""
  for folder in KERNEL_FOLDERS:
    if real == folder or real.startswith(folder + '/'):
      return folder
  return None


class FileRefused(OSError):
  """A file that is not read, with the reason (`reason`, no path in it)."""

  def __init__(self, path: str, reason: str):
    super().__init__(reason)
    self.path = path
    self.reason = reason


def too_large_reason(size: int, max_bytes: int) -> str:
  return (f'{size / (1 << 20):,.1f} MiB, over the limit of '
          f'{max_bytes / (1 << 20):,.0f} MiB per image file (4 bytes per '
          'pixel of --max_image_pixels); never read. Raise '
          '--max_image_pixels if the image is genuine')


def _refusal(path: str, st: os.stat_result, max_bytes: int
             ) -> Optional[FileRefused]:
  if not stat.S_ISREG(st.st_mode):
    return FileRefused(path, not_regular_reason(st.st_mode))
  if st.st_dev in _kernel_devices():
    return FileRefused(path, 'a file of the kernel (procfs or sysfs), not '
                       'data; never opened')
  if st.st_size > max_bytes:
    return FileRefused(path, too_large_reason(st.st_size, max_bytes))
  return None


class _Limited(io.RawIOBase):
  """A binary file that raises FileRefused past `limit` bytes."""

  def __init__(self, f: BinaryIO, path: str, limit: int):
    super().__init__()
    self._f, self._path, self._limit, self._read = f, path, limit, 0

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    n = self._f.readinto(buffer)
    self._read += n or 0
    if self._read > self._limit:
      raise FileRefused(self._path, too_large_reason(self._read, self._limit))
    return n

  def close(self) -> None:
    self._f.close()
    super().close()


def open_file(path: str, max_bytes: int) -> BinaryIO:
  """`path` opened for binary reading, at most `max_bytes` readable.

  Raises FileRefused, without opening it, for anything but a regular file
  (a FIFO would block, /dev/zero never end), a file on a kernel file
  system, or one larger than `max_bytes`; the checks are repeated on the
  opened descriptor (the path may have been swapped meanwhile). Other
  OSErrors (missing, no permission) propagate.
  """
  real = os.path.realpath(path)
  folder = kernel_folder(real)
  if folder:
    raise FileRefused(path, f'leads into {folder} (a kernel file system, not '
                      'data); never opened')
  refused = _refusal(path, os.stat(real), max_bytes)
  if refused:
    raise refused
  fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY |
               getattr(os, 'O_CLOEXEC', 0))
  try:
    refused = _refusal(path, os.fstat(fd), max_bytes)
    if refused:
      raise refused
    f = os.fdopen(fd, 'rb', buffering=0)
  except BaseException:
    os.close(fd)
    raise
  return io.BufferedReader(_Limited(f, path, max_bytes), 1 << 20)


def read_file(path: str, max_bytes: int) -> bytes:
  """All bytes of the image file `path`, read once (see open_file)."""
  with open_file(path, max_bytes) as f:
    return f.read()


def undecodable_name(path: str) -> Optional[str]:
  """For a path whose last name is not valid UTF-8 (os.listdir gives its
  bad bytes as lone surrogates): the path with those bytes written as
  \\xNN text, safe for logs and JSON; None for a good name."""
  name = os.path.basename(path)
  try:
    name.encode('utf-8')
    return None
  except UnicodeEncodeError:
    return printable_path(path)


def printable_path(path: str) -> str:
  """`path` with bytes that are not UTF-8 written as \\xNN text."""
  return os.fsencode(path).decode('utf-8', 'backslashreplace')


UNDECODABLE_REASON = ('its name is not valid UTF-8 (the bad bytes are shown '
                      'as \\xNN); it cannot be written to labels, reports '
                      'or exports: rename it to use it')


# Files SeenFiles keeps in a dict before it merges them into its arrays.
_SEEN_BATCH = 65_536


class SeenFiles:
  """The first relative path listed for each real file (st_dev, st_ino).

  Memory: the keys of all but the last _SEEN_BATCH files are one sorted
  numpy S16 array (dev and inode, big-endian) with int64 positions into a
  list of the paths (strings the caller keeps anyway): about 32 bytes a
  file. A dict of one Python int key per file took about 90, and most of
  it stayed with the allocator after discovery (docs/scale.md).
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
    phases_lib.trim_heap()  # the arrays it replaced


class Walk:
  """What a discovery has seen: real folders and files, and what it skipped.

  One Walk shared by several class folders makes a folder or file reached
  through a link from another class count once.
  """

  def __init__(self, image_dir: str, follow_outside_links: bool = True):
    self.image_dir = os.path.abspath(image_dir)
    real = os.path.realpath(image_dir)
    self.real_dir = real
    self.follow_outside_links = follow_outside_links
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

  def outside(self, path: str, real: str) -> Optional[str]:
    """Why the link `path` (leading to `real`) is not followed, or None."""
    folder = kernel_folder(real)
    if folder:
      return (f'links to {real!r}, inside {folder} (a kernel file system, '
              'not data); never opened')
    if self.follow_outside_links or real == self.real_dir or (
        real.startswith(self.real_dir.rstrip('/') + '/')):
      return None
    return (f'links to {real!r}, outside the image folder {self.image_dir!r}; '
            'links out of the image folder are not followed unless you '
            'allow them: pass --follow_outside_links (in Python '
            'follow_outside_links=True) if the folder is yours (e.g. photos '
            'linked from another disk)')

  def enter(self, folder: str) -> bool:
    """Whether to walk `folder` (False, with the reason logged, if not)."""
    real = os.path.realpath(folder)
    if real in self.ancestors:
      self.skip(folder, f'links to {real!r}, which contains the image folder '
                f'{self.image_dir!r}: walking it would list the whole disk '
                'or the data set twice; link the data folder itself instead')
      return False
    why = self.outside(folder, real)
    if why:
      self.skip(folder, why)
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
      # them at once, most of which the allocator kept after.
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
      shown = undecodable_name(path)
      if shown:
        walk.skip(shown, UNDECODABLE_REASON)
        continue
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
      if os.path.islink(path):
        why = walk.outside(path, os.path.realpath(path))
        if why:
          walk.skip(path, why)
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

