"""Typed errors name settings as Config fields; the CLI words them as flags."""

from retrain import __main__ as cli
from retrain.errors import DatasetError, ImageError


def test_fields_are_worded_as_flags_only_where_they_stand_alone():
  e = DatasetError("image_labels_csv and train_csv were both given; "
                   "'/data/train_csv/x.csv' stays as it is",
                   fields=('image_labels_csv', 'train_csv'))
  assert cli.flag_wording(e) == (
      "--image_labels_csv and --train_csv were both given; "
      "'/data/train_csv/x.csv' stays as it is")
  assert str(e).startswith('image_labels_csv and train_csv')


def test_a_field_listed_twice_is_worded_once():
  e = DatasetError('train_csv needs train_csv', fields=('train_csv',) * 2)
  assert cli.flag_wording(e) == '--train_csv needs --train_csv'


def test_errors_without_fields_are_unchanged():
  e = ImageError('/x/a.jpg', 'cannot be decoded')
  assert e.fields == () and cli.flag_wording(e) == '/x/a.jpg: cannot be decoded'
