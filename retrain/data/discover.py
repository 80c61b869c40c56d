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

import dataclasses
import os
from typing import Sequence

from absl import logging

from retrain.common.walk import Walk, list_images
from retrain.data import labels as labels_lib
from retrain.errors import DatasetError
from retrain.images import IMAGE_EXTENSIONS

# Fewer images than this in a class gives a warning: the head will still
# train, but its accuracy for that class is guesswork.
FEW_IMAGES_WARNING = 20


# slots: no per-object __dict__, about 100 bytes less per image (a million
# images is a million of these).
@dataclasses.dataclass(frozen=True, slots=True)
class ImageFile:
  """One image on disk.

  Attributes:
    path: absolute path of the file.
    rel_path: path relative to the image folder with '/' separators; the
      split hashes this, so moving the folder keeps every image in its set.
    label: class id, an index into `Dataset.labels`.
  """
  path: str
  rel_path: str
  label: int


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


def discover_images(image_dir: str,
                    extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Dataset:
  """Lists the images of a folder-per-class tree.

  Args:
    image_dir: folder holding one sub-folder per class.
    extensions: accepted file endings, lower case with the dot.

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
  if not class_names:
    raise DatasetError(
        f'No class folders in {image_dir!r}: put the images of each class in '
        f'a sub-folder named after the class, e.g. {image_dir}/roses/1.jpg.')

  labels, images, skipped = [], [], []
  walk = Walk(image_dir)
  for name in class_names:
    rel_paths = list_images(os.path.join(image_dir, name), image_dir,
                                   extensions, walk)
    if not rel_paths:
      logging.warning('Class folder %r has no images (accepted endings: %s); '
                      'skipping it.', name, ' '.join(extensions))
      skipped.append(name)
      continue
    labels_lib.check_folder_label(name, os.path.join(image_dir, name))
    if len(rel_paths) < FEW_IMAGES_WARNING:
      logging.warning('Class %r has only %d images; at least %d are '
                      'recommended for a usable accuracy.', name,
                      len(rel_paths), FEW_IMAGES_WARNING)
    label = len(labels)
    labels.append(name)
    images.extend(
        ImageFile(os.path.join(image_dir, *rel.split('/')), rel, label)
        for rel in rel_paths)

  if len(labels) < 2:
    found = (f'only class {labels[0]!r}' if labels else 'no class with images')
    raise DatasetError(
        f'Found {found} in {image_dir!r}; a classifier needs at least two '
        'classes. Add another sub-folder of images (accepted endings: '
        f'{" ".join(extensions)}).')
  return Dataset(image_dir, tuple(labels), tuple(images), tuple(skipped),
                 tuple(walk.skipped))
