"""A folder built to hang, crash or fool a run, beside good photos.

`make_hostile_folder(root)` writes 3 classes of small solid-colour photos
and, among them, every bad thing an attack on it found: a link to /dev/zero, a
FIFO, a socket, a class folder linked to /, a symbolic link loop, a second
path to one photo, a JPEG declaring 65000x65000, a 1-bit 20000x20000 PNG,
truncated JPEG and PNG files, a sparse 1 GiB `x.jpg` (0 bytes on disk),
a file and a class folder whose names are not UTF-8, a photo and a class
folder linked from outside the folder, and a link to /proc. Returns (good photo paths, {bad path:
a word its skip reason must contain}). Used by the end-to-end test and by
bench/hostile_folder.py.
"""

from __future__ import annotations

import os
import pathlib
import socket

from tests import image_bombs
from tests.conftest import COLOURS, make_colour_dataset


def flip_vector_bytes(path, count: int, seed: int = 0) -> set:
  """XORs `count` distinct bytes of the vectors of cache shard `path` (a
  disk or a copy gone bad); returns the rows hit."""
  import h5py
  import numpy as np
  with h5py.File(path, 'r') as f:
    offset, shape = f['vectors'].id.get_offset(), f['vectors'].shape
  row_bytes = shape[1] * 4
  where = np.random.default_rng(seed).choice(shape[0] * row_bytes, count,
                                             replace=False)
  with open(path, 'r+b') as f:
    for at in where.tolist():
      f.seek(offset + at)
      byte = f.read(1)[0]
      f.seek(offset + at)
      f.write(bytes([byte ^ 0xA5]))
  return set((where // row_bytes).tolist())


def make_hostile_folder(root, per_class=12):
  root = pathlib.Path(root)
  make_colour_dataset(root, per_class=per_class)
  good = sorted(str(p) for p in root.rglob('*.jpg'))
  blue, green, red = (root / name for name in sorted(COLOURS))
  bad = {}

  def put(path, data, word):
    path.write_bytes(data)
    bad[str(path)] = word

  os.symlink('/dev/zero', blue / 'zero.jpg')
  bad[str(blue / 'zero.jpg')] = 'character device'
  os.mkfifo(green / 'fifo.jpg')
  bad[str(green / 'fifo.jpg')] = 'FIFO'
  sock = socket.socket(socket.AF_UNIX)
  sock.bind(str(red / 'sock.png'))
  sock.close()  # The socket file stays.
  bad[str(red / 'sock.png')] = 'socket'
  os.symlink('/', root / 'c')
  bad[str(root / 'c')] = "links to '/'"
  os.symlink('.', blue / 'loop')
  bad[str(blue / 'loop')] = 'symbolic link loop'
  os.symlink(good[0], green / 'second_path.jpg')
  bad[str(green / 'second_path.jpg')] = 'the same file as'
  put(red / 'huge.jpg', image_bombs.jpeg_claiming(65000, 65000),
      'megapixels')
  put(blue / 'huge.png', image_bombs.png_1bit(20000, 20000), 'megapixels')
  put(green / 'cut.jpg', image_bombs.truncated_jpeg(), 'truncated')
  put(red / 'cut.png', image_bombs.truncated_png(), 'truncated')
  with open(blue / 'x.jpg', 'wb') as f:
    f.truncate(1 << 30)  # sparse: 1 GiB of zeros, no disk used
  bad[str(blue / 'x.jpg')] = 'over the limit of'
  bad_name = os.fsdecode(os.fsencode(str(green)) + b'/\xff\xfe.jpg')
  pathlib.Path(bad_name).write_bytes(pathlib.Path(good[0]).read_bytes())
  bad[str(green) + '/\\xff\\xfe.jpg'] = 'not valid UTF-8'
  os.mkdir(os.fsencode(str(root)) + b'/class\xff')
  bad[str(root) + '/class\\xff'] = 'not valid UTF-8'
  outside = root.parent / (root.name + '_elsewhere')
  make_colour_dataset(outside, per_class=2)
  os.symlink(outside / 'red', root / 'linked')
  bad[str(root / 'linked')] = 'follow_outside_links=True'
  os.symlink(outside / 'red' / os.listdir(outside / 'red')[0],
             blue / 'linked.jpg')
  bad[str(blue / 'linked.jpg')] = 'outside the image folder'
  os.symlink('/proc/self', root / 'proc')
  bad[str(root / 'proc')] = 'kernel file system'
  return good, bad
