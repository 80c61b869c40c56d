"""Boxes: the four annotation layouts, their errors, skipped boxes, the crop
decoder, the split by photo, and --crop_to_boxes end to end."""

import pathlib

import numpy as np
import pytest

from retrain import pipeline
from retrain.config import DEFAULTS
from retrain.data import boxes
from retrain.data.annotations import crop, layouts, table, voc
from retrain.data.annotations.box import Box
from retrain.errors import DatasetError
from tests.conftest import SHARED, shrunk_config

BCCD = SHARED / 'datasets' / 'bccd'
RED, BLUE, GREEN = (220, 30, 30), (20, 40, 220), (30, 200, 40)


def two_colour_photo(path, left=RED, right=BLUE, size=(80, 60), seed=0):
  """A photo whose left half is `left` and right half `right` (+ noise)."""
  from PIL import Image
  w, h = size
  rng = np.random.default_rng(seed)
  pixels = np.zeros((h, w, 3), np.float32)
  pixels[:, :w // 2] = left
  pixels[:, w // 2:] = right
  pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels.astype(np.uint8)).save(path)
  return path


def voc_xml(filename, objects, width=0, height=0):
  """VOC XML text; objects are (name, xmin, ymin, xmax, ymax[, difficult])."""
  parts = [f'<annotation><filename>{filename}</filename><size><width>{width}'
           f'</width><height>{height}</height><depth>3</depth></size>']
  for name, *coords in objects:
    difficult = coords[4] if len(coords) > 4 else 0
    x0, y0, x1, y1 = coords[:4]
    parts.append(
        f'<object><name>{name}</name><difficult>{difficult}</difficult>'
        f'<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>'
        f'<ymax>{y1}</ymax></bndbox></object>')
  return ''.join(parts) + '</annotation>\n'


# Left half red ("apple"), right half blue ("berry") in an 80x60 photo.
HALVES = [('apple', 1, 1, 40, 60), ('berry', 41, 1, 80, 60)]


def make_voc_beside(root, photos=8):
  root = pathlib.Path(root)
  for k in range(photos):
    two_colour_photo(root / 'shots' / f'p{k}.jpg', seed=k)
    (root / 'shots' / f'p{k}.xml').write_text(voc_xml(f'p{k}.jpg', HALVES))
  return root


def make_voc_tree(root, photos=8, sets=True):
  root = pathlib.Path(root)
  (root / 'Annotations').mkdir(parents=True)
  for k in range(photos):
    two_colour_photo(root / 'JPEGImages' / f'p{k}.jpg', seed=k)
    (root / 'Annotations' / f'p{k}.xml').write_text(
        voc_xml(f'p{k}.jpg', HALVES))
  if sets:
    main = root / 'ImageSets' / 'Main'
    main.mkdir(parents=True)
    (main / 'train.txt').write_text(''.join(f'p{k}\n' for k in range(5)))
    (main / 'val.txt').write_text('p5\np6\n')
    (main / 'test.txt').write_text('p7\n')
  return root


def make_csv(root, photos=8, header='box_y1,file,kind,xmax,ymax,xmin,ymin'):
  """The HALVES boxes as CSV with shuffled columns (and a distractor)."""
  root = make_voc_beside(root, photos)
  lines = [header]
  for k in range(photos):
    for name, x0, y0, x1, y1 in HALVES:
      lines.append(f'9,shots/p{k}.jpg,{name},{x1},{y1},{x0},{y0}')
  (root / 'boxes.csv').write_text('\n'.join(lines) + '\n')
  return root / 'boxes.csv'


def config(**overrides):
  return DEFAULTS.replace(crop_to_boxes=True, **overrides)


def crop_layout(c):
  return boxes.load_crop_layout(c.data, c.crop)


def examples(layout):
  return sorted((image.path, image.rel_path.split('#')[1],
                 layout.dataset.labels[image.label])
                for image in layout.dataset.images)


def test_voc_beside_every_box_one_example_split_by_photo(tmp_path):
  root = make_voc_beside(tmp_path / 'data')
  layout, crops = crop_layout(config(image_dir=str(root),
                                                crop_margin=0))
  assert layout.dataset.labels == ('apple', 'berry')
  assert len(layout.dataset.images) == 16
  assert [i.label for i in layout.dataset.images] == [0] * 8 + [1] * 8
  assert layout.dataset.images[0].rel_path == 'shots/p0.jpg#1,1,40,60'
  # Left half exactly: VOC pixel 1..40 of 80 is [0, 0.5).
  np.testing.assert_allclose(crops.boxes[0], [0, 0, 1, 0.5])
  np.testing.assert_allclose(crops.boxes[8], [0, 0.5, 1, 1])
  assert crops.key_suffixes[0] == ':box=1,1,40,60:margin=0'
  # Both boxes of a photo in the same set.
  by_photo = {}
  for image, code in zip(layout.dataset.images, layout.subsets, strict=True):
    by_photo.setdefault(image.path, set()).add(int(code))
  assert all(len(codes) == 1 for codes in by_photo.values())


def test_margin_is_clipped_to_the_photo(tmp_path):
  box = Box('x.jpg', 'a', 11, 21, 30, 40)
  fraction, _ = crop.crop_fraction(box, 100, 50, 50, 8)
  # 20x20 box, 10 pixels each side; bottom 50 clipped to the photo.
  np.testing.assert_allclose(fraction, [10 / 50, 0 / 100, 50 / 50, 40 / 100])


def test_bad_boxes_are_skipped_with_reasons(tmp_path):
  root = tmp_path / 'data'
  for k in range(3):
    two_colour_photo(root / f'p{k}.jpg', seed=k)
    (root / f'p{k}.xml').write_text(voc_xml(f'p{k}.jpg', HALVES + [
        ('berry', 50, 10, 20, 30),  # inverted
        ('berry', 200, 200, 300, 300),  # outside the 80x60 photo
        ('apple', 10, 10, 14, 40),  # 5 pixels wide
        ('apple', 1, 1, 40, 60, 1),  # difficult
    ], width=0))
  two_colour_photo(root / 'lonely.jpg')
  layout, _ = crop_layout(config(image_dir=str(root)))
  assert len(layout.dataset.images) == 6
  reasons = [reason for _, reason in layout.skipped]
  assert sum('inverted' in r for r in reasons) == 3
  assert sum('outside the 80x60 photo' in r for r in reasons) == 3
  assert sum('smaller than --min_box_size=8' in r for r in reasons) == 3
  assert sum('--boxes_include_difficult' in r for r in reasons) == 3
  assert (str(root / 'lonely.jpg'), 'no annotated box') in layout.skipped
  layout, _ = crop_layout(config(image_dir=str(root),
                                            boxes_include_difficult=True,
                                            min_box_size=4))
  assert len(layout.dataset.images) == 12


def test_voc_tree_uses_image_sets(tmp_path):
  root = make_voc_tree(tmp_path / 'VOC')
  assert layouts.detect_layout(str(root)) == 'voc_tree'
  layout, _ = crop_layout(config(image_dir=str(root)))
  code = {pathlib.Path(i.path).stem: int(c)
          for i, c in zip(layout.dataset.images, layout.subsets, strict=True)}
  assert code == {'p0': 0, 'p1': 0, 'p2': 0, 'p3': 0, 'p4': 0, 'p5': 1,
                  'p6': 1, 'p7': 2}
  assert 'ImageSets/Main/{train,val,test}.txt' in layout.description


def test_voc_tree_and_csv_give_the_same_examples(tmp_path):
  tree = make_voc_tree(tmp_path / 'VOC')
  csv_path = tmp_path / 'boxes.csv'
  rows = ['filename,cell_type,xmin,xmax,ymin,ymax']
  for k in range(8):
    rows += [f'p{k}.jpg,{n},{x0},{x1},{y0},{y1}' for n, x0, y0, x1, y1 in
             HALVES]
  csv_path.write_text('\n'.join(rows) + '\n')
  from_tree, _ = crop_layout(config(image_dir=str(tree)))
  from_csv, _ = crop_layout(config(
      boxes_csv=str(csv_path), image_dir=str(tree / 'JPEGImages')))
  assert examples(from_tree) == examples(from_csv)
  assert len(examples(from_csv)) == 16


def test_stanford_dogs_labels_come_from_the_folder(tmp_path):
  root = tmp_path / 'dogs'
  for folder, colour in (('n02085620-Chihuahua', RED),
                         ('n02085782-Japanese_spaniel', BLUE)):
    for k in range(3):
      two_colour_photo(root / 'Images' / folder / f'{folder[:9]}_{k}.jpg',
                       colour, colour, seed=k)
      xml = root / 'Annotation' / folder / f'{folder[:9]}_{k}'
      xml.parent.mkdir(parents=True, exist_ok=True)
      xml.write_text(voc_xml('%s', [('dog', 5, 5, 60, 50)]))
  assert layouts.detect_layout(str(root)) == 'stanford_dogs'
  layout, _ = crop_layout(config(image_dir=str(root)))
  assert layout.dataset.labels == ('Chihuahua', 'Japanese_spaniel')
  assert len(layout.dataset.images) == 6


def test_csv_columns_by_header_name_and_label_flag(tmp_path):
  csv_path = make_csv(tmp_path / 'data')
  layout, crops = crop_layout(config(
      boxes_csv=str(csv_path), boxes_label_column='kind', crop_margin=0))
  assert layout.dataset.labels == ('apple', 'berry')
  np.testing.assert_allclose(crops.boxes[0], [0, 0, 1, 0.5])
  with pytest.raises(DatasetError) as e:
    crop_layout(config(boxes_csv=str(csv_path)))
  message = e.value.worded(lambda field: f'--{field}')  # as the CLI says it
  assert "'kind'" in message and "'box_y1'" in message
  assert '--boxes_label_column NAME' in message


def test_csv_without_a_box_column(tmp_path):
  csv_path = tmp_path / 'b.csv'
  csv_path.write_text('path,label,xmin,ymin,xmax\na.jpg,x,1,2,3\n')
  with pytest.raises(DatasetError, match=r'no column ymax among the columns '
                     r"found \(\['path', 'label', 'xmin', 'ymin', 'xmax'\]\)"):
    crop_layout(config(boxes_csv=str(csv_path)))


def test_unparsable_xml_names_file_and_line(tmp_path):
  root = make_voc_beside(tmp_path / 'data', photos=2)
  bad = root / 'shots' / 'p1.xml'
  bad.write_text('<annotation>\n<object>\n<name>x</nam>\n</annotation>\n')
  with pytest.raises(DatasetError, match=rf'{bad}:3: not well-formed XML'):
    crop_layout(config(image_dir=str(root)))


def test_annotation_naming_a_missing_image(tmp_path):
  root = make_voc_tree(tmp_path / 'VOC', sets=False)
  (root / 'Annotations' / 'ghost.xml').write_text(voc_xml('ghost.jpg',
                                                          HALVES))
  with pytest.raises(DatasetError, match=r'ghost.xml annotates ghost, but '
                     r'JPEGImages/ has no image named ghost'):
    crop_layout(config(image_dir=str(root)))
  csv_path = tmp_path / 'b.csv'
  csv_path.write_text('image,label,xmin,ymin,xmax,ymax\nnope.jpg,a,1,1,9,9\n')
  with pytest.raises(DatasetError, match=r"b.csv:2 names 'nope.jpg', but .*"
                     'does not exist'):
    crop_layout(config(boxes_csv=str(csv_path)))


def test_no_boxes_found_says_what_is_accepted(tmp_path):
  two_colour_photo(tmp_path / 'a' / 'p.jpg')
  with pytest.raises(DatasetError, match='found no boxes under'):
    crop_layout(config(image_dir=str(tmp_path / 'a')))


def test_decode_with_a_box_crops_after_orientation(tmp_path):
  import tensorflow as tf
  from PIL import Image

  from retrain import images
  path = two_colour_photo(tmp_path / 'p.png')
  contents = tf.constant(path.read_bytes())
  right = images.decode_and_resize(contents, (16, 16), [0, 0.5, 1, 1])
  left = images.decode_and_resize(contents, (16, 16), [0, 0, 1, 0.5])
  assert right.shape == (16, 16, 3)
  np.testing.assert_allclose(np.mean(right.numpy(), (0, 1)),
                             np.array(BLUE) / 255, atol=0.03)
  np.testing.assert_allclose(np.mean(left.numpy(), (0, 1)),
                             np.array(RED) / 255, atol=0.03)
  # EXIF orientation 6 (stored turned): the upright photo's top half is
  # what the stored image has on the right... the box is of the upright one.
  stored = np.zeros((40, 60, 3), np.uint8)
  stored[:, 30:] = BLUE
  stored[:, :30] = RED
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(stored).save(tmp_path / 'r.jpg', exif=exif.tobytes(),
                               quality=95)
  top = images.load_image(str(tmp_path / 'r.jpg'), (8, 8), box=[0, 0, 0.5, 1])
  # Orientation 6 turns clockwise: the stored left (red) becomes the top.
  np.testing.assert_allclose(np.mean(top.numpy(), (0, 1)),
                             np.array(RED) / 255, atol=0.05)


@pytest.mark.slow
def test_crop_to_boxes_end_to_end_and_cache_reuse(tmp_path, fake_module):
  root = make_voc_tree(tmp_path / 'VOC')
  cfg = shrunk_config(root, tmp_path / 'out', fake_module, crop_to_boxes=True,
                      crop_margin=0)
  result = pipeline.run(cfg)
  assert result.labels == ['apple', 'berry']
  assert result.counts == {'train': 10, 'validation': 4, 'test': 2}
  assert result.bottleneck_stats.computed == 16
  # The crops, not the photos, were classified: the photo has both colours.
  assert result.test_accuracy == 1.0
  again = pipeline.run(cfg.replace(saved_model_dir='', output_graph='', random_brightness=10,
      distorted_copies=1))
  assert again.bottleneck_stats.computed == 0
  assert again.bottleneck_stats.reused == 16
  assert again.distorted_stats.computed == again.counts['train']
  # Another margin is another crop, so other cache entries.
  third = pipeline.run(cfg.replace(saved_model_dir='',
                                           output_graph='', crop_margin=5))
  assert third.bottleneck_stats.computed == 16


def test_bccd_voc_tree_and_csv_give_the_same_examples():
  if not BCCD.exists():
    pytest.skip(f'{BCCD} is absent (the shared data sets live beside the '
                'checkout)')
  tree, _ = crop_layout(config(image_dir=str(BCCD / 'BCCD')))
  table, _ = crop_layout(config(
      boxes_csv=str(BCCD / 'test.csv'),
      image_dir=str(BCCD / 'BCCD' / 'JPEGImages')))
  assert examples(tree) == examples(table)
  assert len(examples(tree)) == 4886
  assert tree.dataset.labels == ('Platelets', 'RBC', 'WBC')
  # The two degenerate boxes BCCD has are skipped, in both.
  assert len(tree.skipped) == len(table.skipped) == 2


@pytest.mark.slow
def test_label_image_classifies_each_box(tmp_path, fake_module):
  import json
  import subprocess
  import sys
  root = make_voc_tree(tmp_path / 'VOC')
  cfg = shrunk_config(root, tmp_path / 'out', fake_module, crop_to_boxes=True,
                      output_graph='')
  pipeline.run(cfg)
  photo = tmp_path / 'new'
  two_colour_photo(photo / 'q.jpg', left=BLUE, right=RED, seed=5)
  (photo / 'q.xml').write_text(voc_xml('q.jpg', HALVES + [
      ('x', 30, 30, 20, 40)]))
  (photo / 'q.csv').write_text('xmax,ymax,image,xmin,ymin\n40,60,q.jpg,1,1\n')
  tool = pathlib.Path(__file__).resolve().parents[1] / 'tools' / \
      'label_image.py'
  for annotation, expected in (('q.xml', 2), ('q.csv', 1)):
    done = subprocess.run(
        [sys.executable, str(tool), f'--saved_model_dir={cfg.outputs.saved_model_dir}',
         f'--boxes={photo / annotation}', '--output_format=json',
         f'--crop_margin={cfg.crop.crop_margin}'],
        capture_output=True, text=True, timeout=300)
    assert done.stdout, done.stderr[-3000:]
    records = json.loads(done.stdout)
    good = [r for r in records if not r.get('error')]
    assert len(good) == expected, done.stderr[-2000:]
    # Left half of q.jpg is blue: the 'berry' colour of training.
    assert good[0]['image'].endswith('q.jpg#1,1,40,60')
    assert good[0]['predictions'][0]['label'] == 'berry'
    if annotation == 'q.xml':
      assert good[1]['image'].endswith('q.jpg#41,1,80,60')
      assert good[1]['predictions'][0]['label'] == 'apple'
      assert done.returncode == 1  # the inverted box is reported
      assert any('inverted' in str(r.get('error')) for r in records)


@pytest.mark.parametrize('value', ['nan', 'NaN', 'inf', '-Infinity'])
def test_non_finite_box_coordinates_are_refused_with_the_file(tmp_path,
                                                              value):
  (tmp_path / 'a.jpg').write_bytes(b'')
  csv_path = tmp_path / 'boxes.csv'
  csv_path.write_text(f'filename,xmin,ymin,xmax,ymax,class\n'
                      f'a.jpg,1,2,{value},9,cell\n')
  with pytest.raises(DatasetError, match=r'boxes.csv.*not a finite number'):
    table.read_boxes_csv(str(csv_path))
  xml = tmp_path / 'a.xml'
  xml.write_text('<annotation><filename>a.jpg</filename><object><name>cell'
                 '</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>'
                 f'{value}</xmax><ymax>9</ymax></bndbox></object>'
                 '</annotation>')
  with pytest.raises(DatasetError, match=r'a.xml \(object 1\): <xmax>'):
    voc.read_voc_xml(str(xml))
