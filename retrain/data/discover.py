"""Finding the images: one sub-folder of `image_dir` per class.

Discovery only lists files; it never opens them (decoding belongs to the
bottleneck step, where an unreadable file is skipped, not fatal).

Untrusted folders: only regular files are listed. A FIFO, socket or device
named like an image (also behind a symbolic link) is skipped with its
reason, never opened: opening a FIFO blocks, /dev/zero never ends. Folder
links are followed (datasets are often linked from other disks), but each
real folder is walked once, so a link loop (`a/loop -> .`) cannot multiply
the data, and a link to `/` or to a folder containing image_dir is refused
(it would walk the whole disk, or the data set inside itself). One real
file reached by two paths is listed once, at its first path in sorted
order, with a warning. Everything skipped is in `Dataset.skipped_files`.

Label order: labels are the class folder names exactly as they are, sorted
by Python's string order; class id i is `Dataset.labels[i]`, and that order
is the row order of the exported labels file.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
from typing import Sequence

from absl import logging

from retrain.common import names
from retrain.common import walk as walk_lib
from retrain.common.walk import Walk, list_images
from retrain.data import labels as labels_lib
from retrain.errors import DatasetError
from retrain.images import IMAGE_EXTENSIONS

# Fewer images than this in a class gives a warning: the head will still
# train, but its accuracy for that class is guesswork.
FEW_IMAGES_WARNING = 20


# slots: no per-object __dict__, about 100 bytes less per image (a million
# images is a million of these). The absolute path is not stored but made
# when asked for: every image of a folder shares one `root` string, so an
# image costs its object and its relative path, about 130 bytes, instead of
# about 240 with a second, absolute copy of its path (docs/scale.md).
@dataclasses.dataclass(frozen=True, slots=True)
class ImageFile:
  """One image on disk, at `root`/`rel_path`.

  Attributes:
    rel_path: path relative to `root` with '/' separators; the split hashes
      this, so moving the folder keeps every image in its set. ('..'
      segments are allowed: a CSV may list files beside its own folder.)
    label: class id, an index into `Dataset.labels`.
    root: the absolute folder that rel_path is relative to, one string
      shared by the images of a data set.
  """
  rel_path: str
  label: int
  root: str

  @property
  def path(self) -> str:
    """The absolute path of the file (made on each call)."""
    path = os.path.join(self.root, *self.rel_path.split('/'))
    return os.path.normpath(path) if '..' in self.rel_path else path


@dataclasses.dataclass(frozen=True, slots=True)
class ImageFileAt(ImageFile):
  """An image whose rel_path does not lead to its file (one box of a photo,
  `photo#box`: retrain/data/boxes.py), so its absolute path is kept."""
  file: str = ''

  @property
  def path(self) -> str:
    return self.file


def image_file(path: str, rel_path: str, label: int, root: str) -> ImageFile:
  """The ImageFile of the file at `path`: the compact one when
  root/rel_path is `path`, else an ImageFileAt that keeps `path` (a CSV
  row relative to another CSV's folder, a box of a photo)."""
  image = ImageFile(rel_path, label, root)
  return image if image.path == path else ImageFileAt(rel_path, label, root,
                                                      path)


def image_paths(images: Sequence[ImageFile]) -> Sequence[str]:
  """The absolute path of each image, made one at a time when read: hashing
  a million files then never holds a million path strings at once."""
  return _Paths(images)


class _Paths(collections.abc.Sequence):
  """A read-only view: item i is images[i].path."""

  def __init__(self, images: Sequence[ImageFile]):
    self._images = images

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [image.path for image in self._images[i]]
    return self._images[i].path


@dataclasses.dataclass(frozen=True)
class Dataset:
  """The discovered images.

  Attributes:
    image_dir: the absolute image folder.
    labels: class names, sorted; class id i is labels[i].
    images: every image, sorted by (label, rel_path).
    skipped_classes: class folders that held no image, skipped.
    skipped_files: (path, reason) of what discovery left out (not regular
      files, repeated or refused folders, second paths to one file).
  """
  image_dir: str
  labels: tuple
  images: tuple
  skipped_classes: tuple = ()
  skipped_files: tuple = ()

  def count_per_class(self) -> list:
    counts = [0] * len(self.labels)
    for image in self.images:
      counts[image.label] += 1
    return counts


def boxes_hint(image_dir: str, folders: Sequence[str]):
  """(' This folder holds VOC XML box files: ... crop_to_boxes', the
  setting it names) when `image_dir` (with sub-folders `folders`) looks
  like photos with annotated boxes rather than class folders, else
  ('', ())."""
  def has_xml(folder):
    try:
      return any(entry.name.lower().endswith('.xml')
                 for entry in os.scandir(folder) if entry.is_file())
    except OSError:
      return False
  annotations = [f for f in folders if f.lower() == 'annotations']
  if has_xml(image_dir) or (annotations and has_xml(
      os.path.join(image_dir, annotations[0]))):
    return (' This folder holds VOC XML box files: to train on the annotated '
            'objects (each box one example, labelled with its name), add '
            'crop_to_boxes (docs/boxes.md).', ('crop_to_boxes',))
  return '', ()


def discover_images(image_dir: str,
                    extensions: Sequence[str] = IMAGE_EXTENSIONS,
                    follow_outside_links: bool = False) -> Dataset:
  """Lists the images of a folder-per-class tree.

  Args:
    image_dir: folder holding one sub-folder per class.
    extensions: accepted file endings, lower case with the dot.
    follow_outside_links: follow links that lead out of image_dir (see
      retrain.common.walk); False skips them with a reason.

  Returns:
    A Dataset with at least two classes.

  Raises:
    DatasetError: no such folder, no class folders, or fewer than two
      classes with images.
  """
  if not image_dir:
    raise DatasetError('No image folder given: pass image_dir DIR, where DIR '
                       'holds one sub-folder of images per class.',
                       fields=('image_dir',))
  if not os.path.isdir(image_dir):
    raise DatasetError(
        f'Image folder {image_dir!r} does not exist or is not a folder: pass '
        'image_dir with a folder that holds one sub-folder of images per '
        'class.',
        fields=('image_dir',))
  image_dir = os.path.abspath(image_dir)
  class_names = sorted(
      entry.name for entry in os.scandir(image_dir)
      if entry.is_dir() and not entry.name.startswith('.'))
  hint, fields = boxes_hint(image_dir, class_names)
  if not class_names:
    raise DatasetError(
        f'No class folders in {image_dir!r}: put the images of each class in '
        f'a sub-folder named after the class, e.g. {image_dir}/roses/1.jpg.'
        f'{hint}', fields=fields)

  labels, images, skipped = [], [], []
  walk = Walk(image_dir, follow_outside_links)
  for name in list(class_names):
    shown = walk_lib.undecodable_name(os.path.join(image_dir, name))
    if shown:
      walk.skip(shown, walk_lib.UNDECODABLE_REASON)
      class_names.remove(name)
  for name in class_names:
    rel_paths = list_images(os.path.join(image_dir, name), image_dir,
                                   extensions, walk)
    if not rel_paths:
      logging.warning('Class folder %r has no images (accepted endings: %s); '
                      'skipping it.', name, ' '.join(extensions))
      skipped.append(name)
      continue
    labels_lib.check_folder_label(name, os.path.join(image_dir, name))
    text = labels_lib.normalized(name, os.path.join(image_dir, name))
    if text in labels:
      raise DatasetError(
          f'Two class folders in {image_dir!r} are the label {text!r} written '
          'two ways (Unicode composed and decomposed forms, which look the '
          'same): merge them into one folder.')
    if len(rel_paths) < FEW_IMAGES_WARNING:
      logging.warning('Class %r has only %s; at least %d are '
                      'recommended for a usable accuracy.', name,
                      names.plural(len(rel_paths), 'image'),
                      FEW_IMAGES_WARNING)
    label = len(labels)
    labels.append(text)
    images.extend(ImageFile(rel, label, image_dir) for rel in rel_paths)

  if len(labels) < 2:
    found = (f'only class {labels[0]!r}' if labels else 'no class with images')
    raise DatasetError(
        f'Found {found} in {image_dir!r}; a classifier needs at least two '
        'classes. Add another sub-folder of images (accepted endings: '
        f'{" ".join(extensions)}).{hint}', fields=fields)
  return Dataset(image_dir, tuple(labels), tuple(images), tuple(skipped),
                 tuple(walk.skipped))
