"""Heat maps must show where the model looked, not decorate the photo.

Sanity checks in the style of Adebayo et al. 2018 ("Sanity checks for
saliency maps"), on a tiny fixture conv module so they run in seconds:

* the map follows the object: a red square on a grey photo, moved from
  one corner to the other, takes the map's peak with it;
* the map depends on the model: with the head's weights randomised the
  map changes (low rank correlation with the trained one).

Each check also fails on a planted bug: a map that ignores the input
(fails the first), and one that ignores the head (fails the second).
"""

import numpy as np
import pytest
import tensorflow as tf

from retrain.predict import explain

SIZE = 32
SQUARE = 8
# The fixture's conv channels: a red detector, a grey detector and 4 fixed
# random filters; class 0 is "a red thing", class 1 "grey background".
_RNG = np.random.default_rng(0)
_KERNEL = np.zeros([3, 3, 3, 6], np.float32)
_KERNEL[1, 1, :, 0] = [2.0, -1.0, -1.0]  # red minus the rest
_KERNEL[1, 1, :, 1] = [-1.0, 1.0, 1.0]  # grey/blue-green
_KERNEL[..., 2:] = _RNG.normal(0, 0.3, [3, 3, 3, 4])
WEIGHTS = np.array([[3.0, -1.0], [-1.0, 1.5], [0.2, -0.1], [-0.3, 0.2],
                    [0.1, 0.1], [0.0, -0.2]], np.float32)
BIASES = np.zeros([2], np.float32)


def conv(images):
  return tf.nn.relu(tf.nn.conv2d(images, _KERNEL, strides=2, padding='SAME'))


def pool(activations):
  return tf.reduce_mean(activations, axis=[1, 2])


def probabilities(images, weights=WEIGHTS):
  logits = pool(conv(tf.constant(images, tf.float32))).numpy() @ weights
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def photo(top, left, seed=0):
  """float32 [SIZE, SIZE, 3]: grey with noise, a red square at (top, left)."""
  image = np.full([SIZE, SIZE, 3], 0.5, np.float32)
  image += np.random.default_rng(seed).normal(0, 0.03, image.shape)
  image[top:top + SQUARE, left:left + SQUARE] = [0.9, 0.1, 0.1]
  return np.clip(image, 0, 1).astype(np.float32)


def grad_cam(images, classes, weights=WEIGHTS):
  return explain.grad_cam(images, [(conv, pool)], weights, BIASES, classes)


def occlusion(images, classes, weights=WEIGHTS):
  return explain.occlusion(images, lambda x: probabilities(x, weights),
                           classes, grid=7, patch=0.25)


def ignores_input(images, classes, weights=WEIGHTS):
  """Planted bug: the map of a fixed photo, whatever the input."""
  fixed = np.repeat(photo(4, 4)[None], len(images), axis=0)
  return grad_cam(fixed, classes, weights)


def ignores_head(images, classes, weights=WEIGHTS):
  """Planted bug: the mean activation (an edge detector), no head."""
  del classes, weights
  a = conv(tf.constant(images)).numpy().mean(axis=3, keepdims=True)
  return explain._normalise(
      tf.image.resize(a, (SIZE, SIZE)).numpy()[..., 0])


def peak_distance(method) -> float:
  """The largest distance (pixels) between a map's centre of mass and the
  square's centre, over the square in four places."""
  places = [(2, 2), (2, 22), (22, 2), (22, 22)]
  images = np.stack([photo(t, l, seed=k) for k, (t, l) in enumerate(places)])
  maps = method(images, [0] * len(places))
  assert maps.shape == (len(places), SIZE, SIZE)
  assert maps.min() >= 0 and maps.max() <= 1
  ys, xs = np.mgrid[0:SIZE, 0:SIZE]
  worst = 0.0
  for m, (t, l) in zip(maps, places):
    weight = m ** 2 / max(float((m ** 2).sum()), 1e-9)
    centre = ((ys * weight).sum(), (xs * weight).sum())
    worst = max(worst, float(np.hypot(centre[0] - t - SQUARE / 2 + 0.5,
                                      centre[1] - l - SQUARE / 2 + 0.5)))
  return worst


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
  ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
  rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
  return float(np.corrcoef(ra, rb)[0, 1])


def head_randomisation_similarity(method) -> float:
  """Median rank correlation between the trained head's map and the maps
  of 5 heads with random weights, on one photo."""
  image = photo(10, 14)[None]
  trained = method(image, [0])[0]
  similar = []
  for seed in range(5):
    weights = np.random.default_rng(seed).normal(0, 1, WEIGHTS.shape)
    similar.append(rank_correlation(
        trained, method(image, [0], weights.astype(np.float32))[0]))
  return float(np.median(similar))


@pytest.mark.parametrize('method', [grad_cam, occlusion])
def test_the_map_follows_the_object(method):
  assert peak_distance(method) < SQUARE / 2


@pytest.mark.parametrize('method', [grad_cam, occlusion])
def test_the_map_changes_with_random_head_weights(method):
  assert head_randomisation_similarity(method) < 0.5


def test_a_map_that_ignores_the_input_fails_the_object_check():
  assert peak_distance(ignores_input) > SQUARE


def test_a_map_that_ignores_the_head_fails_the_randomisation_check():
  assert head_randomisation_similarity(ignores_head) > 0.9


def test_grad_cam_of_two_members_adds_their_contributions():
  """An ensemble of the same member twice, each half of the head, gives
  the map of one member with the whole head."""
  images = np.stack([photo(3, 20), photo(18, 6)])
  single = grad_cam(images, [0, 1])
  doubled = explain.grad_cam(images, [(conv, pool), (conv, pool)],
                             np.concatenate([WEIGHTS, WEIGHTS]) / 2,
                             BIASES, [0, 1])
  np.testing.assert_allclose(doubled, single, atol=1e-5)


def test_overlay_colours_the_hot_part_red_and_keeps_the_size():
  image = np.full([20, 30, 3], 0.5, np.float32)
  heat = np.zeros([5, 6], np.float32)
  heat[:, :3] = 1.0  # the left half
  out = explain.overlay(image, heat)
  assert out.shape == (20, 30, 3) and out.dtype == np.uint8
  left, right = out[:, 2].astype(int), out[:, -2].astype(int)
  assert (left[:, 0] - left[:, 2]).min() > 40  # red over blue
  assert np.abs(right - 128).max() <= 25  # grey mixed with cold blue
  assert explain.encode(out).startswith(b'\x89PNG')


def test_a_module_without_reachable_convolutions_gets_occlusion(fake_module):
  from retrain.features import ensemble as ensemble_lib
  from retrain.head.model import Head
  from retrain.report import heatmap
  module = ensemble_lib.load(str(fake_module))
  head = Head(np.eye(6, 2, dtype=np.float32) * 5, np.zeros(2, np.float32))
  explainer = heatmap.explainer(module, head)
  assert explainer.method == explain.OCCLUSION
  size = module.input_size
  image = np.full([1, size[0], size[1], 3], 0.2, np.float32)
  image[0, :size[0] // 2, :, 0] = 1.0  # red top half raises class 0
  maps = explainer(image, [0])
  assert maps.shape == (1, *size)
  assert maps[0, :size[0] // 2].mean() > 2 * maps[0, size[0] // 2:].mean()
  assert explainer.seconds_per_image > 0


@pytest.mark.slow
def test_grad_cam_reads_the_convolution_the_bundled_module_pools():
  """The rebuilt network's head conv, averaged, is the loaded module's
  feature vector: the map is of the features the head was trained on."""
  from retrain.features import ensemble as ensemble_lib
  from retrain.head.model import Head
  from retrain.report import heatmap
  module = ensemble_lib.load('efficientnet_lite0')
  head = Head(np.random.default_rng(0).normal(
      0, 0.05, [module.output_dim, 3]).astype(np.float32),
      np.zeros(3, np.float32))
  explainer = heatmap.explainer(module, head)
  assert explainer.method == explain.GRAD_CAM
  images = np.stack([photo(0, 0, seed=s) for s in range(2)])
  images = tf.image.resize(images, module.input_size).numpy()
  conv, pool = heatmap._lite_member(
      module, module.input_size)
  activations = conv(images)
  assert activations.shape == (2, 7, 7, 1280)
  np.testing.assert_allclose(pool(activations).numpy(),
                             module.call(images).numpy(), atol=1e-4)
  maps = explainer(images, [0, 2])
  assert maps.shape == (2, *module.input_size) and maps.max() == 1.0


def _int8_conv_module(tmp_path, name='conv'):
  """The conv-then-pool fixture module and its int8 copy (made here)."""
  from retrain.features import int8
  from retrain.features import modules as features
  from tests.conftest import export_conv_module
  module = features.load_module(export_conv_module(tmp_path / name))
  quantized = int8.load(module, str(tmp_path / 'cache'))
  assert quantized is not None
  return module, quantized


def test_the_int8_activations_model_outputs_what_its_pooling_averages(
    tmp_path):
  from retrain.features import int8, tflite_runner
  from tests.conftest import FAKE_SIZE, export_fake_module
  _, quantized = _int8_conv_module(tmp_path)
  path = int8.model_path(quantized)
  assert path and path.endswith('.tflite')
  runner = tflite_runner.TFLiteRunner(tflite_runner.open_interpreter(
      model_content=int8.activations_model(path)))
  images = np.random.default_rng(0).random(
      (3, FAKE_SIZE, FAKE_SIZE, 3)).astype(np.float32)
  [activations] = runner.run(images)
  assert activations.shape == (3, FAKE_SIZE, FAKE_SIZE, 6)
  # The conv's output, as the int8 model rounds it: each pixel's channels
  # and their complements.
  np.testing.assert_allclose(activations[..., :3], images, atol=0.01)
  np.testing.assert_allclose(activations[..., 3:], 1 - images, atol=0.01)
  np.testing.assert_allclose(activations.mean((1, 2)),
                             quantized.call(images).numpy(), atol=0.01)
  # A model whose output is not a global average pooling is refused (the
  # fake pooling module scales after pooling).
  from retrain.features import modules as features
  pooled = int8.load(features.load_module(export_fake_module(
      tmp_path / 'pool')), str(tmp_path / 'cache'))
  with pytest.raises(ValueError, match='global average pooling'):
    int8.activations_model(int8.model_path(pooled))
  # A float module has no int8 file.
  assert int8.model_path(features.load_module(str(tmp_path / 'conv'))) is None


def test_an_int8_run_draws_grad_cam_on_what_its_int8_model_pools(tmp_path):
  from retrain.features import ensemble as ensemble_lib
  from retrain.head.model import Head
  from retrain.report import heatmap
  from tests.conftest import FAKE_SIZE
  float_module, quantized = _int8_conv_module(tmp_path)
  other_float, other = _int8_conv_module(tmp_path, 'conv2')
  head = Head(np.eye(6, 2, dtype=np.float32) * 5, np.zeros(2, np.float32))
  pair = ensemble_lib.with_members(
      ensemble_lib.load(f'{float_module.handle},{other_float.handle}'),
      [quantized, other])
  for module, h in ((quantized, head),
                    (pair, Head(np.concatenate([head.weights] * 2) / 2,
                                head.biases))):
    explainer = heatmap.explainer(module, h)
    assert explainer.method == explain.GRAD_CAM
    assert 'int8 model' in explainer.description
    image = np.full([1, FAKE_SIZE, FAKE_SIZE, 3], 0.2, np.float32)
    image[0, :FAKE_SIZE // 2, :, 0] = 1.0  # red top half raises class 0
    maps = explainer(image, [0])
    assert maps.shape == (1, FAKE_SIZE, FAKE_SIZE)
    assert maps[0, :FAKE_SIZE // 2].mean() > 2 * maps[0, FAKE_SIZE // 2:].mean()
  # Not for a fine-tuned network (its weights are no longer the int8
  # copy's), nor for a float module that is not bundled: occlusion.
  assert heatmap.explainer(quantized, head, fine_tuned=True).method == (
      explain.OCCLUSION)
  assert heatmap.explainer(float_module, head).method == explain.OCCLUSION
