"""Run folders: each run's outputs in a folder of its own.

  <output_dir>/<data set>/<run id>/     one folder per run: saved_model/,
                                        labels.txt, summaries/, report/
  <output_dir>/<data set>/latest        -> <run id>, the last finished run
  <output_dir>/latest                   -> <data set>/<run id>

A path setting that starts with RUN (`{run}/saved_model`) lies inside the
run folder; any other path is the user's own choice. The run id is the
start time (`20261206-171720`); the folder is made with one mkdir, which
fails if it exists, so two runs started in the same second get two folders
(`...-171720` and `...-171720-2`). `latest` is a symbolic link, replaced
atomically when a run finishes (a small text file holding the relative
path where links cannot be made); `find_latest` reads either.

A run writes, replaces and removes only inside its own run folder and at
the paths it was given. For as long as it runs it holds a lock file
`<path>.lock` beside each given path, so a second run given the same path
stops at once with a message naming the first, instead of writing over
its files while it uses them. A lock left by a killed process of this
host is taken over.

Imports only the standard library and retrain.errors, so label_image can
find the latest run without loading TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from typing import Dict, Iterable, Iterator, List, Optional

from retrain.errors import OutputError

RUN = '{run}'
LATEST = 'latest'
LOCK_SUFFIX = '.lock'


def in_run_folder(path: str) -> bool:
  """Whether the path setting `path` names a place inside the run folder."""
  return bool(path) and (path == RUN or path.startswith(RUN + '/') or
                         path.startswith(RUN + os.sep))


def fill(path: str, run_dir: Optional[str]) -> str:
  """`path` with a leading RUN replaced by `run_dir` (kept when run_dir is
  None: a setting not used), '~' expanded."""
  if in_run_folder(path):
    if run_dir is None:
      return path
    return os.path.join(run_dir, path[len(RUN):].lstrip('/' + os.sep))
  return os.path.expanduser(path) if path else path


def data_set_name(image_dir: str, csv_path: str = '') -> str:
  """A folder name for the data set: the image folder's name (or the CSV
  file's name without .csv), characters other than letters, digits, '.',
  '_' and '-' replaced by '_'."""
  source = image_dir or csv_path
  name = os.path.basename(os.path.normpath(os.path.abspath(source))) if (
      source) else 'images'
  if not image_dir and name.lower().endswith('.csv'):
    name = name[:-4]
  return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('.') or 'images'


def new_run_folder(output_dir: str, data_set: str,
                   now: Optional[float] = None) -> str:
  """Makes and returns `<output_dir>/<data_set>/<time>[-n]/`, a folder no
  other run has (mkdir is atomic: of two runs at once, one gets -2)."""
  parent = os.path.join(os.path.expanduser(output_dir), data_set)
  os.makedirs(parent, exist_ok=True)
  stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(
      time.time() if now is None else now))
  for n in range(1, 10000):
    path = os.path.join(parent, stamp if n == 1 else f'{stamp}-{n}')
    try:
      os.mkdir(path)
    except FileExistsError:
      continue
    return os.path.abspath(path)
  raise OutputError(f'Could not make a run folder in {parent}: 10,000 runs '
                    'started this second.', fields=('output_dir',))


def remove_if_empty(run_dir: str) -> bool:
  """Removes `run_dir` if it and its sub-folders hold no file (a run that
  stopped before writing anything); True if removed."""
  for _, _, files in os.walk(run_dir):
    if files:
      return False
  for root, _, _ in sorted(os.walk(run_dir), key=lambda w: -len(w[0])):
    with contextlib.suppress(OSError):
      os.rmdir(root)
  if os.path.exists(run_dir):
    return False
  # The data set's folder and the output folder go too when this run made
  # them and nothing else is there (rmdir refuses a folder that is not
  # empty, so another run's folder is never touched).
  parent = os.path.dirname(os.path.abspath(run_dir))
  for folder in (parent, os.path.dirname(parent)):
    with contextlib.suppress(OSError):
      os.rmdir(folder)
  return True


def _point(link: str, target: str) -> None:
  """Makes `link` point to the relative path `target`, atomically."""
  tmp = f'{link}.tmp-{os.getpid()}'
  with contextlib.suppress(FileNotFoundError):
    os.remove(tmp)
  try:
    os.symlink(target, tmp, target_is_directory=True)
  except (OSError, NotImplementedError):
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(target + '\n')
  if os.path.isdir(link) and not os.path.islink(link):
    os.remove(tmp)  # A real folder named `latest` is the user's: left alone.
    return
  os.replace(tmp, link)


def point_latest(run_dir: str) -> None:
  """Points `<data set>/latest` and `<output_dir>/latest` at `run_dir`."""
  data_set_dir = os.path.dirname(run_dir)
  _point(os.path.join(data_set_dir, LATEST), os.path.basename(run_dir))
  _point(os.path.join(os.path.dirname(data_set_dir), LATEST),
         os.path.join(os.path.basename(data_set_dir),
                      os.path.basename(run_dir)))


def find_latest(folder: str) -> Optional[str]:
  """The run folder `<folder>/latest` points to (a link or a file holding
  the relative path), or None when there is none."""
  link = os.path.join(folder, LATEST)
  if os.path.islink(link):
    target = os.path.realpath(link)
  elif os.path.isfile(link):
    with open(link, encoding='utf-8') as f:
      target = os.path.join(folder, f.read().strip())
  else:
    return None
  return target if os.path.isdir(target) else None


# --- Locks on the paths a run was given ---------------------------------------


def _owner() -> str:
  return f'{os.getpid()}@{socket.gethostname()}'


def _stale(owner: str) -> bool:
  """Whether the lock's owner `<pid>@<host>` is a dead process of this host."""
  pid, _, host = owner.partition('@')
  if host != socket.gethostname() or not pid.isdigit():
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return True
  except OSError:
    return False
  return False


def _take(lock: str, field: str, path: str) -> bool:
  """Creates `lock`; False when a live run holds it (raises then)."""
  flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
  for _ in range(2):
    try:
      fd = os.open(lock, flags, 0o644)
    except FileExistsError:
      try:
        with open(lock, encoding='utf-8') as f:
          owner = f.read().strip()
      except FileNotFoundError:
        continue  # Released meanwhile: try again.
      if owner and not _stale(owner):
        raise OutputError(
            f'{field} {path!r} is being written by another run (process '
            f'{owner}, lock file {lock}). Give this run another path, or '
            'leave the flag out: each run then writes into its own run '
            'folder. If no other run is alive, remove the lock file.',
            fields=(field,)) from None
      with contextlib.suppress(FileNotFoundError):
        os.remove(lock)  # A killed run's lock (or one being written).
      continue
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(_owner() + '\n')
    return True
  raise OutputError(f'Could not take the lock file {lock} of {field} '
                    f'{path!r}; try again.', fields=(field,))


def release(locks: Iterable[str]) -> None:
  """Removes the lock files `locks` this process holds (a run's locks
  handed to its export job, which has the same process id)."""
  for lock in locks:
    try:
      with open(lock, encoding='utf-8') as f:
        mine = f.read().strip() == _owner()
      if mine:
        os.remove(lock)
    except OSError:
      pass


@contextlib.contextmanager
def locked(paths: Dict[str, str]) -> Iterator[List[str]]:
  """Holds `<path>.lock` for each {setting name: path} while the block runs
  (paths inside a run folder need none); yields the lock files.

  Raises:
    OutputError: another live run holds one of the paths (no lock is kept).
  """
  taken: List[str] = []
  try:
    for field, path in sorted(paths.items()):
      if not path:
        continue
      lock = os.path.abspath(os.path.expanduser(path)).rstrip(os.sep) + (
          LOCK_SUFFIX)
      if lock in taken:
        continue
      os.makedirs(os.path.dirname(lock), exist_ok=True)
      _take(lock, field, path)
      taken.append(lock)
    yield taken
  finally:
    release(taken)
