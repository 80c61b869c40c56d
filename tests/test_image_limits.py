"""Bounded memory per image: header checks before any decoding."""

import threading

import numpy as np
import pytest

from retrain import image_header, images
from retrain.errors import ImageError
from tests import image_bombs

SIZE = (224, 224)
LIMIT = 50_000_000


def test_jpeg_claiming_65000_squared_is_refused_before_decoding():
  data = image_bombs.jpeg_claiming(65000, 65000)
  assert len(data) < 20_000
  reason, header = image_header.check_bytes(data, SIZE, LIMIT)
  assert (header.width, header.height) == (65000, 65000)
  assert '65000x65000' in reason and '50 megapixels' in reason
  assert '--max_image_pixels' in reason
  with pytest.raises(ImageError, match='65000x65000'):
    images.decode_bytes(data, SIZE)


def test_one_bit_png_of_400_megapixels_is_refused():
  data = image_bombs.png_1bit(20000, 20000)
  assert len(data) < 100_000
  reason, header = image_header.check_bytes(data, SIZE, LIMIT)
  assert header.format == 'PNG' and '20000x20000' in reason
  with pytest.raises(ImageError, match='400 megapixels'):
    images.decode_bytes(data, SIZE)


def test_large_jpeg_within_budget_at_reduced_scale_is_allowed():
  # 20000 x 15000 = 300 MP, but decoded at 1/8 for a 224 target: 4.7 MP.
  header = image_header.Header('JPEG', 20000, 15000)
  assert image_header.jpeg_ratio(20000, 15000, SIZE) == 8
  assert image_header.decoded_pixels(header, SIZE) == 2500 * 1875
  assert image_header.problem(header, SIZE, LIMIT) is None
  # A PNG of that size has no reduced-scale decoding.
  assert 'over the limit' in image_header.problem(
      image_header.Header('PNG', 20000, 15000), SIZE, LIMIT)
  # The limit is a setting.
  assert image_header.problem(image_header.Header('PNG', 20000, 15000),
                              SIZE, 400_000_000) is None


@pytest.mark.parametrize('make,kind', [
    (image_bombs.truncated_jpeg, 'JPEG'), (image_bombs.truncated_png, 'PNG')])
def test_truncated_images_are_refused_not_padded(make, kind):
  with pytest.raises(ImageError, match=f'truncated or corrupt {kind}: the '
                     'data ends before the image does'):
    images.decode_bytes(make(), SIZE)


def test_genuine_small_images_pass(tmp_path):
  from tests.conftest import write_image
  for fmt in ('.jpg', '.png', '.gif', '.bmp', '.webp'):
    path = write_image(tmp_path / f'x{fmt}', (10, 200, 30))
    reason, header = image_header.check_file(str(path), SIZE, LIMIT)
    assert reason is None and (header.width, header.height) == (40, 40)
    assert images.load_image(str(path), SIZE).shape == (224, 224, 3)


def test_decode_budget_serialises_large_images():
  budget = image_header.DecodeBudget(100)
  inside = []
  first_in, release = threading.Event(), threading.Event()

  def big(name):
    with budget.hold(80):
      inside.append(name)
      first_in.set()
      release.wait(5)
      inside.remove(name)

  a = threading.Thread(target=big, args=('a',))
  a.start()
  first_in.wait(5)
  b = threading.Thread(target=big, args=('b',))
  b.start()
  b.join(0.2)
  assert inside == ['a']  # b waits: 80 + 80 > 100
  with budget.hold(20):  # a small one fits beside a
    assert inside == ['a']
  release.set()
  a.join(5)
  b.join(5)
  assert inside == []


def test_label_image_reports_bombs_instead_of_classifying(tmp_path):
  from tools import label_image
  (tmp_path / 'big.jpg').write_bytes(image_bombs.jpeg_claiming(65000, 65000))
  (tmp_path / 'big.png').write_bytes(image_bombs.png_1bit(20000, 20000))
  (tmp_path / 'cut.jpg').write_bytes(image_bombs.truncated_jpeg())
  model = label_image.Model('fake', 'fake', ['a', 'b'], (32, 32),
                            lambda x: np.full((len(x), 2), 0.5, np.float32))
  paths, problems = label_image.find_images([str(tmp_path)])
  assert problems == []
  records = label_image.classify_files(model, paths)
  errors = {r.image.rsplit('/', 1)[-1]: r.error for r in records}
  assert 'megapixels' in errors['big.jpg'] and 'megapixels' in errors['big.png']
  assert 'truncated' in errors['cut.jpg']
  assert all(not r.top for r in records)
