"""Pascal VOC XML: one file, the VOC tree, Stanford Dogs, and an XML beside
each image (see the package doc)."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ElementTree
from typing import List, Optional

from retrain import images as images_lib
from retrain.data import split as split_lib
from retrain.data.annotations.box import (
  CSV_BOX_COLUMNS,
  Annotations,
  Box,
  finite_number,
)
from retrain.errors import DatasetError

# ImageSets/Main list files and the subset code (int8) of each.
_VOC_SETS = (('train', split_lib.SUBSET_CODES[split_lib.TRAIN]),
             ('val', split_lib.SUBSET_CODES[split_lib.VALIDATION]),
             ('test', split_lib.SUBSET_CODES[split_lib.TEST]))


def _text(element, tag: str, where: str, required: bool = True) -> str:
  found = element.find(tag)
  if found is None or found.text is None or not found.text.strip():
    if not required:
      return ''
    raise DatasetError(f'{where}: an <object> has no <{tag}>; every object '
                       'needs <name> and <bndbox> with xmin, ymin, xmax, '
                       'ymax.')
  return found.text.strip()


def read_voc_xml(xml_path: str, image_path: Optional[str] = None,
                 label: Optional[str] = None) -> List[Box]:
  """The boxes of one Pascal VOC XML file.

  Args:
    xml_path: the annotation file.
    image_path: the photo it describes; None takes <filename> beside the
      XML.
    label: if given, every box gets this label (Stanford Dogs: the folder
      class) instead of its <name>.

  Raises:
    DatasetError: the XML cannot be parsed (file and line named), or an
      object lacks a name or a coordinate.
  """
  try:
    tree = ElementTree.parse(xml_path)
  except ElementTree.ParseError as e:
    line, column = e.position
    raise DatasetError(
        f'{xml_path}:{line}: not well-formed XML (column {column}: {e.msg}). '
        'Fix or delete the annotation file.') from e
  except OSError as e:
    raise DatasetError(f'{xml_path}: cannot be read ({e.strerror or e}).'
                       ) from e
  root = tree.getroot()
  if image_path is None:
    # <filename>, else an image with the XML's stem beside it (tools that
    # renamed the photo often leave <filename> stale).
    folder = os.path.dirname(os.path.abspath(xml_path))
    name = _text(root, 'filename', xml_path, required=False)
    image_path = os.path.join(folder, name) if name else ''
    if not name or not os.path.exists(image_path):
      stem = os.path.splitext(os.path.basename(xml_path))[0]
      beside = [os.path.join(folder, stem + ext)
                for ext in images_lib.IMAGE_EXTENSIONS
                if os.path.exists(os.path.join(folder, stem + ext))]
      # A VOC tree: Annotations/x.xml describes ../JPEGImages/x.jpg.
      tree = os.path.join(os.path.dirname(folder), 'JPEGImages', name)
      if name and os.path.exists(tree):
        beside.insert(0, tree)
      image_path = beside[0] if beside else image_path or os.path.join(
          folder, stem + '.jpg')
  boxes = []
  for number, obj in enumerate(root.iter('object'), 1):
    where = f'{xml_path} (object {number})'
    bndbox = obj.find('bndbox')
    if bndbox is None:
      raise DatasetError(f'{where}: has no <bndbox>; every object needs '
                         '<bndbox> with xmin, ymin, xmax, ymax.')
    coords = []
    for tag in CSV_BOX_COLUMNS:
      text = _text(bndbox, tag, where)
      try:
        coords.append(finite_number(text))
      except ValueError as e:
        raise DatasetError(f'{where}: <{tag}>{text}</{tag}> is not a number.'
                           ) from e
    difficult = _text(obj, 'difficult', where, required=False)
    boxes.append(Box(os.path.abspath(image_path),
                     label if label is not None else _text(obj, 'name', where),
                     *coords, difficult=difficult in ('1', 'true'),
                     where=where))
  return boxes


def check_image_exists(box_path: str, xml_path: str) -> None:
  if not os.path.exists(box_path):
    raise DatasetError(
        f'{xml_path} annotates {box_path}, which does not exist: restore the '
        'photo or delete the annotation.')


def read_voc_tree(image_dir: str) -> Annotations:
  """JPEGImages/ + Annotations/ (+ ImageSets/Main/{train,val,test}.txt)."""
  image_dir = os.path.abspath(image_dir)
  images_dir = os.path.join(image_dir, 'JPEGImages')
  annotations_dir = os.path.join(image_dir, 'Annotations')
  by_stem = {os.path.splitext(name)[0]: os.path.join(images_dir, name)
             for name in sorted(os.listdir(images_dir))
             if images_lib.is_image_file(name)}
  boxes, annotated = [], set()
  for name in sorted(os.listdir(annotations_dir)):
    if not name.lower().endswith('.xml'):
      continue
    stem = name[:-4]
    xml_path = os.path.join(annotations_dir, name)
    image = by_stem.get(stem)
    if image is None:
      raise DatasetError(
          f'{xml_path} annotates {stem}, but JPEGImages/ has no image named '
          f'{stem}.*: restore the photo or delete the annotation.')
    boxes.extend(read_voc_xml(xml_path, image))
    annotated.add(image)
  subsets = None
  sets_dir = os.path.join(image_dir, 'ImageSets', 'Main')
  given = [(name, code) for name, code in _VOC_SETS
           if os.path.isfile(os.path.join(sets_dir, name + '.txt'))]
  if given:
    subsets = {}
    for name, code in given:
      list_path = os.path.join(sets_dir, name + '.txt')
      with open(list_path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
          stem = line.split()[0] if line.split() else ''
          if not stem:
            continue
          image = by_stem.get(stem)
          if image is None:
            raise DatasetError(
                f'{list_path}:{number} lists {stem!r}, but JPEGImages/ has no '
                'image of that name: fix the list.')
          subsets.setdefault(image, code)
  split = (f', split by ImageSets/Main/{{{",".join(n for n, _ in given)}}}'
           '.txt' if given else ', split by the stable hash')
  return Annotations(
      boxes, image_dir, subsets,
      tuple(sorted(set(by_stem.values()) - annotated)),
      f'VOC tree {image_dir} (JPEGImages/ + Annotations/){split}')


def read_stanford_dogs(image_dir: str) -> Annotations:
  """Images/<class>/<id>.jpg + Annotation/<class>/<id> (XML, no extension)."""
  image_dir = os.path.abspath(image_dir)
  images_root = os.path.join(image_dir, 'Images')
  annotation_root = os.path.join(image_dir, 'Annotation')
  boxes, unannotated = [], []
  for folder in sorted(os.listdir(images_root)):
    class_dir = os.path.join(images_root, folder)
    if not os.path.isdir(class_dir) or folder.startswith('.'):
      continue
    # 'n02085620-Chihuahua' -> 'Chihuahua': the WordNet id says nothing.
    label = folder.split('-', 1)[1] if re.match(r'n\d+-', folder) else folder
    for name in sorted(os.listdir(class_dir)):
      if not images_lib.is_image_file(name):
        continue
      stem = os.path.splitext(name)[0]
      xml_path = os.path.join(annotation_root, folder, stem)
      if not os.path.isfile(xml_path) and os.path.isfile(xml_path + '.xml'):
        xml_path += '.xml'
      if not os.path.isfile(xml_path):
        unannotated.append(os.path.join(class_dir, name))
        continue
      boxes.extend(read_voc_xml(xml_path, os.path.join(class_dir, name),
                                label))
  return Annotations(boxes, image_dir, None, tuple(unannotated),
                     f'Stanford Dogs layout {image_dir} (Images/ + '
                     'Annotation/), split by the stable hash')


def images_beside_xml(image_dir: str):
  """(images, xml by image) below image_dir: an XML with an image's stem."""
  images, xml_for = [], {}
  for root, dirs, files in os.walk(image_dir, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    stems = {os.path.splitext(f)[0]: f for f in files
             if f.lower().endswith('.xml')}
    for name in sorted(files):
      if images_lib.is_image_file(name):
        path = os.path.join(root, name)
        images.append(path)
        xml = stems.get(os.path.splitext(name)[0])
        if xml:
          xml_for[path] = os.path.join(root, xml)
  return images, xml_for


def read_voc_beside(image_dir: str) -> Annotations:
  """A VOC XML beside each image (same stem), anywhere below image_dir."""
  image_dir = os.path.abspath(image_dir)
  images, xml_for = images_beside_xml(image_dir)
  boxes = []
  for image in images:
    if image in xml_for:
      boxes.extend(read_voc_xml(xml_for[image], image))
  return Annotations(
      boxes, image_dir, None,
      tuple(image for image in images if image not in xml_for),
      f'VOC XML beside each image under {image_dir}, split by the stable '
      'hash')
