"""Decoding: every file of the messy corpus, EXIF orientation, and the
TensorFlow and Pillow paths agreeing where both can decode."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from retrain import images
from retrain.errors import ImageError
from tests.messy_corpus import (
  IGNORED,
  USABLE,
  jpeg_with_orientation,
  make_messy_corpus,
  quadrants,
)

SIZE = (32, 32)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('messy')
  return root, make_messy_corpus(root)


def test_every_corpus_file_has_its_outcome(corpus):
  root, expected = corpus
  checked = 0
  for rel, outcome in sorted(expected.items()):
    if outcome == IGNORED:
      continue
    path = str(root / rel)
    if outcome == USABLE:
      image = images.load_image(path, SIZE).numpy()
      assert image.shape == (32, 32, 3) and image.dtype == np.float32, rel
      assert 0.0 <= image.min() and image.max() <= 1.0, rel
      # Every usable file of the corpus is mostly red or mostly blue,
      # except the grayscale ones; none came out black or garbled.
      mean = image.mean(axis=(0, 1))
      if 'gray' not in rel and 'sixteen' not in rel:
        assert mean.max() > 0.6 and mean.min() < 0.3, (rel, mean)
    else:
      with pytest.raises(ImageError) as info:
        images.load_image(path, SIZE)
      assert outcome in info.value.reason, (rel, info.value.reason)
      assert info.value.path == path
      assert str(info.value).startswith(path + ': ')
    checked += 1
  assert checked == len([o for o in expected.values() if o != IGNORED]) > 30


def _upright_reference(data: bytes) -> np.ndarray:
  return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
                    .convert('RGB'))


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_graph_and_pillow_match_reference(orientation):
  data = jpeg_with_orientation(quadrants((40, 60)), orientation)
  reference = _upright_reference(data).astype(np.int32)
  assert int(images.jpeg_orientation(tf.constant(data))) == orientation
  graph = images.decode_image(tf.constant(data), reference.shape[:2]).numpy()
  pillow = images.decode_with_pillow(data, reference.shape[:2])
  assert graph.shape == pillow.shape == reference.shape
  # Quadrant centres are flat colour, where the two JPEG decoders agree;
  # they differ by a few levels only along colour edges.
  h, w = reference.shape[:2]
  for y in (h // 4, 3 * h // 4):
    for x in (w // 4, 3 * w // 4):
      np.testing.assert_allclose(graph[y, x], reference[y, x], atol=6)
      np.testing.assert_allclose(pillow[y, x], reference[y, x], atol=6)


def test_orientation_is_applied_inside_a_tf_function():
  data = jpeg_with_orientation(quadrants((40, 60)), 6)
  fn = tf.function(lambda c: images.decode_image(c, (60, 40)))
  assert fn(tf.constant(data)).shape == (60, 40, 3)
  # A JPEG without EXIF and non-JPEG bytes take orientation 1.
  plain = io.BytesIO()
  Image.fromarray(quadrants()).save(plain, format='PNG')
  assert int(images.jpeg_orientation(tf.constant(plain.getvalue()))) == 1
  assert int(images.jpeg_orientation(tf.constant(b''))) == 1


@pytest.mark.parametrize('name', ['rgba.png', 'palette_transparent.png',
                                  'sixteen_bit.png', 'cmyk.jpg', 'gray.jpg',
                                  'animated.gif', 'palette.gif',
                                  'png_inside.jpg'])
def test_tensorflow_and_pillow_paths_agree(corpus, name):
  """Where TF decodes, the Pillow fallback gives the same pixels, so which
  decoder a file went through does not change what the model sees."""
  root, _ = corpus
  data = (root / 'red' / name).read_bytes()
  graph = images.decode_image(tf.constant(data), SIZE).numpy().astype(int)
  pillow = images.decode_with_pillow(data, SIZE).astype(int)
  assert graph.shape == pillow.shape
  tolerance = 3 if name.endswith('.jpg') else 1  # two JPEG decoders
  assert np.abs(graph - pillow).max() <= tolerance, name


def test_alpha_is_dropped_not_blended(corpus):
  root, _ = corpus
  data = (root / 'red' / 'rgba.png').read_bytes()
  rgba = np.asarray(Image.open(io.BytesIO(data)))
  assert rgba[:, 0, 3].max() == 0  # a fully transparent column ...
  graph = images.decode_image(tf.constant(data), SIZE).numpy()
  np.testing.assert_array_equal(graph, rgba[:, :, :3])  # ... keeps its RGB


def test_animated_gif_first_frame(corpus):
  root, _ = corpus
  image = images.load_image(str(root / 'red' / 'animated.gif'), SIZE).numpy()
  red, green, _ = image.mean(axis=(0, 1))
  assert red > 0.7 and green < 0.3  # frame 2 is green


def test_large_jpeg_decoded_at_reduced_scale(corpus):
  root, _ = corpus
  data = (root / 'red' / 'large_6000x4000.jpg').read_bytes()
  # 1/8 scale: 750 x 500 instead of 6000 x 4000 (72 MB of pixels).
  assert images.decode_image(tf.constant(data), SIZE).shape == (500, 750, 3)
  assert images.decode_with_pillow(data, SIZE).shape == (500, 750, 3)
  # A target too big for 1/8 gets the coarsest scale still large enough.
  assert images.decode_image(tf.constant(data), (600, 600)).shape == (
      1000, 1500, 3)


def test_tiff_needs_the_pillow_fallback(corpus):
  root, _ = corpus
  data = (root / 'blue' / 'image.tiff').read_bytes()
  with pytest.raises(tf.errors.InvalidArgumentError):
    images.decode_and_resize(tf.constant(data), SIZE)
  image = images.decode_bytes(data, SIZE).numpy()
  assert image.mean(axis=(0, 1))[2] > 0.7


def test_decode_bytes_error_names_the_source():
  with pytest.raises(ImageError, match=r'^upload: empty file \(0 bytes\)$'):
    images.decode_bytes(b'', SIZE, 'upload')


def _app1_first_little_endian(jpeg: bytes, orientation: int) -> bytes:
  """The JPEG with a hand-made little-endian EXIF APP1 as first segment."""
  import struct
  tiff = (b'II*\x00' + struct.pack('<I', 8) + struct.pack('<H', 2) +
          struct.pack('<HHIHH', 0x010F, 2, 4, 0x4141, 0) +  # Make, first
          struct.pack('<HHIHH', 0x0112, 3, 1, orientation, 0) +
          struct.pack('<I', 0))
  body = b'Exif\x00\x00' + tiff
  return (jpeg[:2] + b'\xff\xe1' + struct.pack('>H', len(body) + 2) + body +
          jpeg[2:])


@pytest.mark.parametrize('orientation', [3, 6, 8])
def test_exif_little_endian_app1_first(orientation):
  plain = io.BytesIO()
  Image.fromarray(quadrants((40, 60))).save(plain, format='JPEG', quality=95)
  data = _app1_first_little_endian(plain.getvalue(), orientation)
  assert data[2:4] == b'\xff\xe1'
  reference = _upright_reference(data)
  assert int(images.jpeg_orientation(tf.constant(data))) == orientation
  graph = images.decode_image(tf.constant(data), reference.shape[:2]).numpy()
  assert graph.shape == reference.shape
  h, w = reference.shape[:2]
  np.testing.assert_allclose(graph[h // 4, w // 4], reference[h // 4, w // 4],
                             atol=6)


def test_large_png_is_box_shrunk_before_the_float_resize():
  ramp = np.linspace(0, 255, 1200, dtype=np.float32)
  pixels = np.stack([np.broadcast_to(ramp, (800, 1200))] * 3, -1).astype(
      np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  data = buffer.getvalue()
  # k = min(800 // 64, 1200 // 64) = 12: both sides stay >= 2x the target.
  shrunk = images.decode_image(tf.constant(data), SIZE).numpy()
  assert shrunk.shape == (66, 100, 3)
  np.testing.assert_allclose(shrunk[0, :, 0], pixels[0, 5::12, 0], atol=1.5)
  # The Pillow path shrinks the same way, so both give the same result.
  np.testing.assert_allclose(
      images.decode_bytes(data, SIZE).numpy(),
      images.resize_pixels(images.shrink_large(
          tf.constant(images.decode_with_pillow(data, SIZE)), SIZE),
                           SIZE).numpy(), atol=1e-6)
  # Small images are not touched.
  small = np.asarray(_random_pixels())
  assert images.shrink_large(tf.constant(small), SIZE).numpy().tolist() == \
      small.tolist()


def _random_pixels():
  return np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8)
