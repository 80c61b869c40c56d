"""Bounding boxes: read annotations, and make one example per annotated box.

With --crop_to_boxes every box becomes an example: the photo cropped to the
box (plus --crop_margin percent of context on each side, clipped to the
photo), labelled with the box's object name, then decoded and resized
exactly as a whole image is (retrain.images.decode_and_resize with a box).

Annotation layouts (--boxes; 'auto' picks the one that is unambiguous):

- voc_tree: Pascal VOC's own tree, `image_dir/JPEGImages/<id>.jpg` and
  `image_dir/Annotations/<id>.xml`; `ImageSets/Main/{train,val,test}.txt`
  (one id per line), when present, is the split, used as given.
- stanford_dogs: `image_dir/Images/<class>/<id>.jpg` and
  `image_dir/Annotation/<class>/<id>` (VOC XML without an extension); a box
  is labelled with its folder's class, not the XML's name.
- voc: a VOC XML file beside each image, same stem (`a/b.jpg`, `a/b.xml`),
  as labelImg and CVAT write them.
- csv: --boxes_csv, one row per box; columns found by header name in any
  order: the image (path / filename / image / file), the label (label /
  class / name / cell_type, or --boxes_label_column) and xmin, ymin, xmax,
  ymax. Paths are relative to --image_dir when given, else to the CSV's
  folder.

Coordinates are pixels of the upright photo (EXIF orientation applied),
VOC-style: xmin, ymin the top-left pixel, xmax, ymax the bottom-right one.
The size written in a VOC XML is not trusted (real files say 0, or the size
of another copy of the photo): the size read from the image file is.

Boxes that cannot be used are skipped with a reason (listed in the skipped-
files report): inverted (xmax <= xmin or ymax <= ymin), entirely outside
the photo, smaller than --min_box_size pixels on a side after clipping, or
marked `difficult` (unless --boxes_include_difficult).

Split: all boxes of one photo go to the same set, chosen by the stable hash
of the photo's path (retrain.data.split.hash_percentage), so no photo is in
two sets. Label order: object names sorted by Python's string order.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
import xml.etree.ElementTree as ElementTree
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from retrain import images as images_lib
from retrain.data import discover, sources
from retrain.data import split as split_lib
from retrain.errors import DatasetError

BOX_LAYOUTS = ('auto', 'voc', 'voc_tree', 'stanford_dogs', 'csv')
# Header names (lower case) accepted for the CSV's image and label columns.
CSV_PATH_COLUMNS = ('path', 'filename', 'file', 'image', 'image_path',
                    'file_name', 'image_id')
CSV_LABEL_COLUMNS = ('label', 'class', 'name', 'class_name', 'cell_type',
                     'category')
CSV_BOX_COLUMNS = ('xmin', 'ymin', 'xmax', 'ymax')
# ImageSets/Main list files and the subset code (int8) of each.
_VOC_SETS = (('train', split_lib.SUBSET_CODES[split_lib.TRAIN]),
             ('val', split_lib.SUBSET_CODES[split_lib.VALIDATION]),
             ('test', split_lib.SUBSET_CODES[split_lib.TEST]))


@dataclasses.dataclass(frozen=True)
class Box:
  """One annotated object.

  Attributes:
    image: absolute path of the photo.
    label: the object's name (or the Stanford Dogs folder class).
    xmin, ymin, xmax, ymax: pixels of the upright photo, as annotated.
    difficult: VOC's difficult flag.
    where: 'file:line' (or 'file') of the annotation, for messages.
  """
  image: str
  label: str
  xmin: float
  ymin: float
  xmax: float
  ymax: float
  difficult: bool = False
  where: str = ''

  def coords(self) -> str:
    return ','.join(_number(v) for v in (self.xmin, self.ymin, self.xmax,
                                         self.ymax))


def _number(value: float) -> str:
  return str(int(value)) if float(value).is_integer() else f'{value:g}'


@dataclasses.dataclass(frozen=True)
class Annotations:
  """Boxes read from one layout.

  Attributes:
    boxes: every box, in file order.
    base: the folder the photo paths are relative to (for the split hash).
    subsets: {photo path: subset code} when the annotations carry a split
      (VOC ImageSets), else None.
    unannotated: photos that have no annotation at all.
    description: one line for the log.
  """
  boxes: List[Box]
  base: str
  subsets: Optional[Dict[str, int]] = None
  unannotated: Tuple[str, ...] = ()
  description: str = ''


# --- Reading VOC XML ------------------------------------------------------------


def finite_number(text: str) -> float:
  """float(text), refusing NaN and infinities (ValueError) as float() does
  other text: a NaN box would be used silently and crop nothing sane."""
  value = float(text)
  if not math.isfinite(value):
    raise ValueError(f'{text.strip()!r} is not a finite number')
  return value


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


def _check_image_exists(box_path: str, xml_path: str) -> None:
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


def _images_beside_xml(image_dir: str):
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
  images, xml_for = _images_beside_xml(image_dir)
  boxes = []
  for image in images:
    if image in xml_for:
      boxes.extend(read_voc_xml(xml_for[image], image))
  return Annotations(
      boxes, image_dir, None,
      tuple(image for image in images if image not in xml_for),
      f'VOC XML beside each image under {image_dir}, split by the stable '
      'hash')


# --- Reading CSV ------------------------------------------------------------------


def _find_column(header: List[str], names: Sequence[str]) -> Optional[int]:
  lower = [h.strip().lower() for h in header]
  for name in names:
    if name in lower:
      return lower.index(name)
  return None


def read_boxes_csv(csv_path: str, image_dir: str = '',
                   label_column: str = '',
                   need_label: bool = True) -> Annotations:
  """One box per row; columns found by header name (see module doc).

  Raises:
    DatasetError: no such file; a column that cannot be found (the columns
      found and the flag to pass are named); a coordinate that is not a
      number; a row naming an image that does not exist.
  """
  if not os.path.isfile(csv_path):
    raise DatasetError(f'boxes_csv {csv_path!r} does not exist.', fields=('boxes_csv',))
  base = os.path.abspath(image_dir or os.path.dirname(os.path.abspath(
      csv_path)))
  with open(csv_path, newline='', encoding='utf-8-sig') as f:
    lines = list(csv.reader(f, skipinitialspace=True))
  if not lines:
    raise DatasetError(f'{csv_path} is empty: it needs a header row and one '
                       'row per box.')
  header = [h.strip() for h in lines[0]]
  path_col = _find_column(header, CSV_PATH_COLUMNS)
  label_col = _find_column(header, (label_column.lower(),) if label_column
                           else CSV_LABEL_COLUMNS)
  box_cols = [_find_column(header, (name,)) for name in CSV_BOX_COLUMNS]
  if path_col is None:
    raise DatasetError(
        f'{csv_path}: no image column among the columns found ({header}); '
        f'name it one of {", ".join(CSV_PATH_COLUMNS)}.')
  if label_col is None and need_label:
    wanted = f' {label_column!r}' if label_column else ''
    raise DatasetError(
        f'{csv_path}: no label column{wanted} among the columns found '
        f'({header}); pass boxes_label_column NAME with the column that '
        'holds the class (accepted without the flag: '
        f'{", ".join(CSV_LABEL_COLUMNS)}).', fields=('boxes_label_column',))
  absent = [name for name, col in zip(CSV_BOX_COLUMNS, box_cols, strict=True)
            if col is None]
  if absent:
    raise DatasetError(
        f'{csv_path}: no column {", ".join(absent)} among the columns found '
        f'({header}); the box needs xmin, ymin, xmax, ymax (any order).')
  name = os.path.basename(csv_path)
  boxes = []
  for number, fields in enumerate(lines[1:], 2):
    fields = [field.strip() for field in fields]
    if not any(fields):
      continue
    where = f'{name}:{number}'
    if len(fields) < len(header):
      raise DatasetError(f'{where} has {len(fields)} fields, the header '
                         f'{len(header)}.')
    image = os.path.normpath(os.path.join(base, fields[path_col]))
    if not os.path.exists(image):
      raise DatasetError(
          f'{where} names {fields[path_col]!r}, but {image} does not exist: '
          'paths are relative to image_dir when given, else to the CSV\'s '
          'folder.', fields=('image_dir',))
    try:
      coords = [finite_number(fields[col]) for col in box_cols]
    except ValueError as e:
      raise DatasetError(f'{where}: a box coordinate is not a number ({e}).'
                         ) from e
    boxes.append(Box(image, '' if label_col is None else fields[label_col],
                     *coords, where=where))
  return Annotations(boxes, base, None, (),
                     f'boxes from {csv_path}, split by the stable hash')


# --- Choosing the layout ------------------------------------------------------------


def detect_layout(image_dir: str, boxes_csv: str = '') -> str:
  """The annotation layout of a run (see module doc), or DatasetError."""
  if boxes_csv:
    return 'csv'
  if not image_dir or not os.path.isdir(image_dir):
    raise DatasetError(f'crop_to_boxes needs image_dir (a folder) or '
                       f'boxes_csv; {image_dir!r} is not a folder.', fields=('crop_to_boxes', 'image_dir', 'boxes_csv'))
  names = set(os.listdir(image_dir))
  if {'JPEGImages', 'Annotations'} <= names:
    return 'voc_tree'
  if {'Images', 'Annotation'} <= names:
    return 'stanford_dogs'
  if _images_beside_xml(image_dir)[1]:
    return 'voc'
  raise DatasetError(
      f'crop_to_boxes: found no boxes under {image_dir}: expected '
      'JPEGImages/ + Annotations/ (VOC tree), Images/ + Annotation/ (Stanford '
      'Dogs), a .xml beside each image, or boxes_csv FILE.', fields=('crop_to_boxes', 'boxes_csv'))


def read_annotations(layout: str, image_dir: str, boxes_csv: str = '',
                     label_column: str = '') -> Annotations:
  """Reads the boxes of a layout ('auto' detects it)."""
  if layout not in BOX_LAYOUTS:
    raise DatasetError(f'boxes={layout!r} is not one of '
                       f'{", ".join(BOX_LAYOUTS)}.', fields=('boxes',))
  if layout == 'auto':
    layout = detect_layout(image_dir, boxes_csv)
  if layout == 'csv':
    if not boxes_csv:
      raise DatasetError('boxes csv needs boxes_csv FILE.', fields=('boxes', 'boxes_csv'))
    return read_boxes_csv(boxes_csv, image_dir, label_column)
  readers = {'voc': read_voc_beside, 'voc_tree': read_voc_tree,
             'stanford_dogs': read_stanford_dogs}
  return readers[layout](image_dir)


# --- Boxes to crops ------------------------------------------------------------------


def upright_size(path: str) -> Tuple[int, int]:
  """(width, height) of the photo as displayed (EXIF orientation applied).

  Reads only the header. Raises OSError (or Pillow's errors) when the file
  is not a readable image.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    width, height = image.size
    try:
      orientation = image.getexif().get(0x0112, 1)
    except Exception:  # pylint: disable=broad-except
      orientation = 1  # a broken EXIF block: the decoders ignore it too.
  return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def crop_fraction(box: Box, width: int, height: int, margin: float,
                  min_size: int) -> Tuple[Optional[np.ndarray], str]:
  """The crop of a box as fractions of the photo, or None and why not.

  Args:
    box: the annotation (VOC pixel coordinates, inclusive).
    width, height: the upright photo's size in pixels.
    margin: percent of the box's width (height) added on the left and right
      (top and bottom), then clipped to the photo.
    min_size: boxes narrower or lower than this (after clipping, before the
      margin) are skipped.

  Returns:
    (float32 [4] (top, left, bottom, right) in [0, 1], '') or (None, reason).
  """
  if box.xmax <= box.xmin or box.ymax <= box.ymin:
    return None, (f'box {box.coords()} of {box.label!r} ({box.where}) is '
                  'inverted or empty (xmax <= xmin or ymax <= ymin)')
  # VOC pixels are inclusive: a box from 1 to 10 covers 10 pixels; the
  # crop runs from the left edge of xmin to the right edge of xmax.
  left, top = max(box.xmin - 1, 0.0), max(box.ymin - 1, 0.0)
  right, bottom = min(box.xmax, float(width)), min(box.ymax, float(height))
  if right <= left or bottom <= top:
    return None, (f'box {box.coords()} of {box.label!r} ({box.where}) lies '
                  f'outside the {width}x{height} photo')
  if right - left < min_size or bottom - top < min_size:
    return None, (f'box {box.coords()} of {box.label!r} ({box.where}) is '
                  f'{right - left:g}x{bottom - top:g} pixels, smaller than '
                  f'--min_box_size={min_size}')
  dx = (right - left) * margin / 100.0
  dy = (bottom - top) * margin / 100.0
  left, right = max(left - dx, 0.0), min(right + dx, float(width))
  top, bottom = max(top - dy, 0.0), min(bottom + dy, float(height))
  return np.array([top / height, left / width, bottom / height,
                   right / width], np.float32), ''


def crop_key(box: Box, margin: float) -> str:
  """The part of a crop's cache key after the photo's content hash."""
  return f':box={box.coords()}:margin={_number(margin)}'


@dataclasses.dataclass(frozen=True)
class Crops:
  """The crop of each example of a crop layout.

  Attributes:
    boxes: float32 [n, 4], (top, left, bottom, right) in [0, 1] of the
      upright photo, for layout.dataset.images[i].
    key_suffixes: n strings appended to the photo's content hash to make
      the crop's cache key (box and margin).
  """
  boxes: np.ndarray
  key_suffixes: Tuple[str, ...]

  @staticmethod
  def bottleneck_args(crops: Optional['Crops']) -> dict:
    """Keyword arguments of compute_bottlenecks for these crops ({} for
    whole images)."""
    if crops is None:
      return {}
    return {'boxes': crops.boxes, 'key_suffixes': crops.key_suffixes}


@dataclasses.dataclass(frozen=True)
class BoxOptions:
  """The settings of --crop_to_boxes (retrain.config.Config fields of the
  same names; the defaults live there)."""
  crop_to_boxes: bool
  image_dir: str
  boxes: str
  boxes_csv: str
  boxes_label_column: str
  crop_margin: float
  min_box_size: int
  boxes_include_difficult: bool
  validation_percentage: float
  testing_percentage: float


def load_examples(layout_options, options: BoxOptions
                  ) -> Tuple[sources.Layout, Optional['Crops']]:
  """The examples of a run: load_crop_layout(options) with crop_to_boxes,
  else (sources.load_layout(layout_options), None)."""
  if options.crop_to_boxes:
    return load_crop_layout(options)
  return sources.load_layout(layout_options), None


def load_crop_layout(config: BoxOptions) -> Tuple[sources.Layout, Crops]:
  """One example per usable box (see module doc).

  Args:
    config: the BoxOptions (or a retrain.config.Config).

  Returns:
    (layout, crops): layout.dataset.images[i] is the photo of example i with
    rel_path 'photo/path.jpg#xmin,ymin,xmax,ymax' and its box's class id;
    layout.subsets is always set (every box in its photo's set).
  """
  if config.crop_margin < 0:
    raise DatasetError(f'crop_margin={config.crop_margin} must be 0 or '
                       'more (percent of the box added on each side).', fields=('crop_margin',))
  if config.min_box_size < 1:
    raise DatasetError(f'min_box_size={config.min_box_size} must be at '
                       'least 1 pixel.', fields=('min_box_size',))
  annotations = read_annotations(config.boxes, config.image_dir,
                                 config.boxes_csv, config.boxes_label_column)
  skipped = [(path, 'no annotated box') for path in annotations.unannotated]
  sizes, kept = {}, []
  for box in annotations.boxes:
    if box.image not in sizes:
      _check_image_exists(box.image, box.where)
      try:
        sizes[box.image] = upright_size(box.image)
      except Exception as e:  # pylint: disable=broad-except
        # Unreadable photos are left to the bottleneck step, which skips
        # them with the decoders' reason.
        logging.debug('No header size for %s: %s', box.image, e)
        sizes[box.image] = None
    if box.difficult and not config.boxes_include_difficult:
      skipped.append((box.image, f'box {box.coords()} of {box.label!r} '
                      f'({box.where}) is marked difficult (use '
                      '--boxes_include_difficult to keep it)'))
      continue
    size = sizes[box.image] or (1 << 30, 1 << 30)
    fraction, reason = crop_fraction(box, *size, config.crop_margin,
                                     config.min_box_size)
    if fraction is None:
      skipped.append((box.image, reason))
      continue
    if sizes[box.image] is None:
      fraction = np.zeros(4, np.float32)  # never decoded: the file is bad
    kept.append((box, fraction))
  if not kept:
    raise DatasetError(f'crop_to_boxes: no usable box in '
                       f'{annotations.description}.', fields=('crop_to_boxes',))
  labels = sorted({box.label for box, _ in kept})
  sources._check_classes(labels, annotations.description)  # pylint: disable=protected-access
  index = {label: i for i, label in enumerate(labels)}
  base = annotations.base

  def rel(path):
    return os.path.relpath(path, base).replace(os.sep, '/')

  kept.sort(key=lambda bf: (index[bf[0].label], rel(bf[0].image),
                            bf[0].coords()))
  images, codes = [], []
  for box, _ in kept:
    photo = rel(box.image)
    images.append(discover.ImageFileAt(f'{photo}#{box.coords()}',
                                       index[box.label], base, box.image))
    codes.append(_photo_subset(photo, box.image, annotations.subsets,
                               config.validation_percentage,
                               config.testing_percentage))
  crops = Crops(np.stack([f for _, f in kept]).astype(np.float32),
                tuple(crop_key(box, config.crop_margin) for box, _ in kept))
  layout = sources.Layout(
      discover.Dataset(base, tuple(labels), tuple(images)),
      subsets=np.array(codes, np.int8), carve=(False, False),
      skipped=tuple(skipped),
      description=(f'{len(images)} boxes of {len(sizes)} photos, '
                   f'{annotations.description}, crop margin '
                   f'{config.crop_margin:g}%'))
  if skipped:
    logging.warning('%d boxes or photos are not used (first: %s: %s); see the '
                    'skipped-files report.', len(skipped), *skipped[0])
  return layout, crops


def _photo_subset(rel_photo: str, path: str, given: Optional[dict],
                  validation_percentage: float,
                  testing_percentage: float) -> int:
  """The set of a photo: as given (VOC ImageSets), else by the stable hash.

  A photo absent from a given split (or a split without val/test) is
  placed by the hash, like a missing folder of a ready-made split.
  """
  if given and path in given:
    return given[path]
  split_lib.check_percentages(validation_percentage, testing_percentage)
  percent = split_lib.hash_percentage(rel_photo)
  if percent < validation_percentage:
    return split_lib.SUBSET_CODES[split_lib.VALIDATION]
  if percent < validation_percentage + testing_percentage:
    return split_lib.SUBSET_CODES[split_lib.TEST]
  return split_lib.SUBSET_CODES[split_lib.TRAIN]


# --- Boxes at inference (label_image --boxes) ----------------------------------


@dataclasses.dataclass(frozen=True)
class InferenceCrop:
  """One box to classify: image path, float32 [4] crop as in Crops.boxes,
  and its name in the results, 'photo.jpg#xmin,ymin,xmax,ymax'."""
  image: str
  box: np.ndarray
  name: str


def crops_for_inference(annotation: str, margin: float, min_size: int,
                        image_dir: str = ''):
  """The boxes of one VOC XML or CSV file, as crops to classify.

  Args:
    annotation: a .csv (columns as for --boxes_csv; the label column is
      optional) or a VOC XML file (its <filename> beside it).
    margin, min_size: as --crop_margin and --min_box_size.
    image_dir: for a CSV, the folder its paths are relative to ('' for the
      CSV's folder).

  Returns:
    (crops, skipped): skipped is (name, reason) of boxes that cannot be
    cropped (inverted, outside, too small, unreadable image).
  """
  if annotation.lower().endswith('.csv'):
    found = read_boxes_csv(annotation, image_dir, need_label=False).boxes
  else:
    found = read_voc_xml(annotation)
  crops, skipped, sizes = [], [], {}
  for box in found:
    name = f'{box.image}#{box.coords()}'
    if box.image not in sizes:
      _check_image_exists(box.image, annotation)
      try:
        sizes[box.image] = upright_size(box.image)
      except Exception as e:  # pylint: disable=broad-except
        sizes[box.image] = f'not a readable image ({e})'
    if isinstance(sizes[box.image], str):
      skipped.append((name, sizes[box.image]))
      continue
    fraction, reason = crop_fraction(box, *sizes[box.image], margin, min_size)
    if fraction is None:
      skipped.append((name, reason))
    else:
      crops.append(InferenceCrop(box.image, fraction, name))
  return crops, skipped
