"""Layouts: CSV labels, ready-made split folders, label styles, the split."""

import os

import numpy as np
import pytest

from retrain.config import DEFAULTS
from retrain.data import sources as layouts
from retrain.errors import DatasetError
from tests.conftest import write_image


def _config(**kw):
  return DEFAULTS.replace(**kw).data


def _touch_images(root, rels):
  for rel in rels:
    write_image(root / rel, (1, 2, 3), size=(4, 4))


def _subset_of(layout):
  """{rel_path: (label name, subset code or None)}."""
  ds = layout.dataset
  return {im.rel_path: (ds.labels[im.label],
                        None if layout.subsets is None else
                        int(layout.subsets[k]))
          for k, im in enumerate(ds.images)}


# --- one CSV ------------------------------------------------------------------


def test_one_csv_header_spaces_absolute_paths_int_labels(tmp_path, caplog):
  _touch_images(tmp_path, ['imgs/a.jpg', 'imgs/b.jpg', 'imgs/c d.jpg'])
  elsewhere = write_image(tmp_path / 'other' / 'e.png', (1, 2, 3), size=(4, 4))
  csv = tmp_path / 'data' / 'labels.csv'
  csv.parent.mkdir()
  csv.write_text('\ufeffpath , label\n'
                 '../imgs/a.jpg,  10\n'
                 '  ../imgs/b.jpg ,2\n'
                 '\n'
                 '"../imgs/c d.jpg", 10\n'
                 f'{elsewhere}, 2\n'
                 '../imgs/a.jpg, 10\n'  # same row again: harmless
                 '../imgs/gone.jpg, 2\n', encoding='utf-8')
  layout = layouts.load_layout(_config(image_labels_csv=str(csv)))
  # Integer labels in numeric order: 2 before 10.
  assert layout.dataset.labels == ('2', '10')
  assert layout.subsets is None  # split by hash
  assert _subset_of(layout) == {
      '../imgs/b.jpg': ('2', None), '../other/e.png': ('2', None),
      '../imgs/a.jpg': ('10', None), '../imgs/c d.jpg': ('10', None)}
  assert all(os.path.isfile(im.path) for im in layout.dataset.images)
  gone = os.path.normpath(tmp_path / 'imgs' / 'gone.jpg')
  assert layout.skipped == (
      (gone, 'listed in labels.csv:8 but the file does not exist'),)
  assert '1 listed files are skipped before decoding' in caplog.text


def test_same_file_two_labels_names_both_rows(tmp_path):
  _touch_images(tmp_path, ['a.jpg', 'b.jpg'])
  csv = tmp_path / 'labels.csv'
  csv.write_text('a.jpg,cat\nb.jpg,dog\n./a.jpg,dog\n')
  with pytest.raises(DatasetError, match=r"a.jpg is listed twice with "
                     r"different labels: 'cat' at labels.csv:1 and 'dog' at "
                     r"labels.csv:3. Delete the wrong row"):
    layouts.load_layout(_config(image_labels_csv=str(csv)))


def test_bad_row_and_missing_csv(tmp_path):
  csv = tmp_path / 'labels.csv'
  csv.write_text('a.jpg\n')
  with pytest.raises(DatasetError, match=r'labels.csv:1 .*"path, label"'):
    layouts.load_layout(_config(image_labels_csv=str(csv)))
  with pytest.raises(DatasetError, match='does not exist'):
    layouts.load_layout(_config(image_labels_csv=str(tmp_path / 'no.csv')))


def test_one_class_csv_is_an_error(tmp_path):
  _touch_images(tmp_path, ['a.jpg'])
  (tmp_path / 'l.csv').write_text('a.jpg,cat\n')
  with pytest.raises(DatasetError, match='at least two'):
    layouts.load_layout(_config(image_labels_csv=str(tmp_path / 'l.csv')))


# --- train / validation / test CSVs ----------------------------------------------


def _split_csvs(tmp_path):
  _touch_images(tmp_path, [f'{s}/{k}.jpg' for s in ('train', 'validation',
                                                    'test') for k in range(4)])
  for subset in ('train', 'validation', 'test'):
    (tmp_path / f'{subset}_labels.csv').write_text(''.join(
        f'{subset}/{k}.jpg, {"cat" if k % 2 else "dog"}\n' for k in range(4)))
  return {s: str(tmp_path / f'{s}_labels.csv')
          for s in ('train', 'validation', 'test')}


def test_split_csvs_used_as_given(tmp_path):
  csvs = _split_csvs(tmp_path)
  layout = layouts.load_layout(_config(
      train_csv=csvs['train'], validation_csv=csvs['validation'],
      test_csv=csvs['test']))
  assert layout.dataset.labels == ('cat', 'dog')
  got = _subset_of(layout)
  assert got['train/1.jpg'] == ('cat', 0)
  assert got['validation/2.jpg'] == ('dog', 1)
  assert got['test/3.jpg'] == ('cat', 2)
  assert len(got) == 12 and layout.carve == (False, False)
  # The split of the usable images follows the CSVs exactly, whatever the
  # percentages say.
  usable = np.arange(12)
  y = np.array([im.label for im in layout.dataset.images])
  split = layouts.make_split(layout, usable, y, 50.0, 40.0)
  assert sorted(layout.dataset.images[i].rel_path.split('/')[0]
                for i in split.test) == ['test'] * 4
  assert len(split.train) == len(split.validation) == 4


def test_csvs_in_two_folders_keep_each_path(tmp_path):
  # Each CSV's paths are relative to its own folder; the images take the
  # train CSV's folder as their root, so a validation row's path is kept
  # whole, and a train row's '../' path is made from root and rel_path.
  _touch_images(tmp_path, ['photos/a.jpg', 'photos/b.jpg', 'val/c.jpg',
                           'val/d.jpg'])
  (tmp_path / 'csvs').mkdir()
  (tmp_path / 'csvs' / 'train.csv').write_text(
      '../photos/a.jpg, cat\n../photos/b.jpg, dog\n')
  (tmp_path / 'val' / 'val.csv').write_text('c.jpg, cat\nd.jpg, dog\n')
  layout = layouts.load_layout(_config(
      train_csv=str(tmp_path / 'csvs' / 'train.csv'),
      validation_csv=str(tmp_path / 'val' / 'val.csv')))
  paths = sorted(im.path for im in layout.dataset.images)
  assert paths == [str(tmp_path / rel) for rel in (
      'photos/a.jpg', 'photos/b.jpg', 'val/c.jpg', 'val/d.jpg')]
  assert sorted(im.rel_path for im in layout.dataset.images) == [
      '../photos/a.jpg', '../photos/b.jpg', 'c.jpg', 'd.jpg']


def test_unknown_label_in_validation_csv_is_an_error(tmp_path):
  csvs = _split_csvs(tmp_path)
  _touch_images(tmp_path, ['validation/9.jpg'])
  with open(csvs['validation'], 'a') as f:
    f.write('validation/9.jpg, dgo\n')
  with pytest.raises(DatasetError, match=r"validation_labels.csv:5: label "
                     r"'dgo' does not occur in the train CSV .*cat, dog.*Fix "
                     r"the label, or add images of that class"):
    layouts.load_layout(_config(train_csv=csvs['train'],
                                validation_csv=csvs['validation']))


def test_train_csv_alone_carves_validation_and_test(tmp_path):
  csvs = _split_csvs(tmp_path)
  layout = layouts.load_layout(_config(train_csv=csvs['train'],
                                       test_csv=csvs['test']))
  assert layout.carve == (True, False)
  assert len(layout.dataset.images) == 8


@pytest.mark.parametrize('kw, message', [
    (dict(image_labels_csv='a.csv', train_csv='b.csv'), 'use either one CSV'),
    (dict(validation_csv='v.csv'), 'needs train_csv'),
    (dict(train_csv='t.csv', image_dir='imgs'), 'drop image_dir'),
    (dict(label_style='Retrain'), "label_style='Retrain' is not one of"),
    (dict(image_layout='flat'), 'is not one of auto, class_folders'),
])
def test_flag_combinations_refused(kw, message):
  with pytest.raises(DatasetError, match=message):
    # The declared choices (Config.check, run by every program), then the
    # combinations.
    DEFAULTS.replace(**kw).check()
    layouts.check_layout_options(_config(**kw))


# --- split folders ------------------------------------------------------------


def test_split_folders_detected_val_alias(tmp_path):
  _touch_images(tmp_path, ['train/cat/1.jpg', 'train/cat/2.jpg',
                           'train/dog/1.jpg', 'val/cat/3.jpg', 'val/dog/4.jpg',
                           'test/dog/5.jpg'])
  (tmp_path / '.ipynb_checkpoints').mkdir()
  layout = layouts.load_layout(_config(image_dir=str(tmp_path)))
  assert layout.dataset.labels == ('cat', 'dog')
  assert _subset_of(layout) == {
      'train/cat/1.jpg': ('cat', 0), 'train/cat/2.jpg': ('cat', 0),
      'val/cat/3.jpg': ('cat', 1), 'train/dog/1.jpg': ('dog', 0),
      'test/dog/5.jpg': ('dog', 2), 'val/dog/4.jpg': ('dog', 1)}
  assert 'split folders' in layout.description
  # Forcing class folders reads train, val, test as three classes.
  forced = layouts.load_layout(_config(image_dir=str(tmp_path),
                                       image_layout='class_folders'))
  assert forced.dataset.labels == ('test', 'train', 'val')


def test_split_folder_class_missing_from_train(tmp_path):
  _touch_images(tmp_path, ['train/cat/1.jpg', 'train/dog/1.jpg',
                           'test/cta/1.jpg'])
  with pytest.raises(DatasetError, match=r"test/cta/ is a class that train/ "
                     r"does not have \(train classes: cat, dog\)"):
    layouts.load_layout(_config(image_dir=str(tmp_path)))


def _refused(root, match, **settings):
  """Asserts that loading `root` with `settings` raises a DatasetError
  matching `match`."""
  with pytest.raises(DatasetError, match=match):
    layouts.load_layout(_config(image_dir=str(root), **settings))


def test_split_folders_forced_and_ambiguous(tmp_path):
  _touch_images(tmp_path, ['cats/1.jpg', 'dogs/1.jpg'])
  _refused(tmp_path, r"should hold train/ .* found folders \['cats', 'dogs'\]",
           image_layout='split_folders')
  assert layouts.load_layout(_config(image_dir=str(tmp_path))).subsets is None
  both = tmp_path / 'both'
  _touch_images(both, ['train/a/1.jpg', 'train/b/1.jpg', 'val/a/1.jpg',
                       'validation/a/1.jpg'])
  with pytest.raises(DatasetError, match='keep one validation folder'):
    layouts.load_layout(_config(image_dir=str(both)))


def test_missing_validation_folder_is_carved_from_train(tmp_path, caplog):
  _touch_images(tmp_path, [f'train/{c}/{k}.jpg' for c in ('a', 'b')
                           for k in range(40)] + ['test/a/t.jpg'])
  layout = layouts.load_layout(_config(image_dir=str(tmp_path)))
  assert layout.carve == (True, False)
  y = np.array([im.label for im in layout.dataset.images])
  split = layouts.make_split(layout, np.arange(len(y)), y, 20.0, 10.0)
  rel = [layout.dataset.images[i].rel_path for i in range(len(y))]
  assert [rel[i] for i in split.test] == ['test/a/t.jpg']
  assert 5 <= len(split.validation) <= 30
  assert all(rel[i].startswith('train/') for i in split.validation)
  # The test set given has no 'b': said so, with what it means.
  assert ("The test set has no usable images of 'b': the test accuracy says "
          'nothing about them') in caplog.text


# --- label styles ---------------------------------------------------------------


def test_retrain_label_style(tmp_path):
  _touch_images(tmp_path, ['Sun_Flowers/1.jpg', 'daisy/1.jpg',
                           'Tulips (red)!/1.jpg'])
  verbatim = layouts.load_layout(_config(image_dir=str(tmp_path)))
  assert verbatim.dataset.labels == ('Sun_Flowers', 'Tulips (red)!', 'daisy')
  styled = layouts.load_layout(_config(image_dir=str(tmp_path),
                                       label_style='retrain'))
  # Same class order (folder order, as retrain.py), retrain.py's strings.
  assert styled.dataset.labels == ('sun flowers', 'tulips red ', 'daisy')
  assert layouts.retrain_label('A--b__C 9') == 'a b c 9'


def test_retrain_label_style_collision_names_both(tmp_path):
  _touch_images(tmp_path, ['Sun Flowers/1.jpg', 'sun_flowers/1.jpg'])
  _refused(tmp_path, r"Classes 'Sun Flowers' and 'sun_flowers' both become "
           r"label 'sun flowers'", label_style='retrain')
