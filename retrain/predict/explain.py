"""Heat maps of where a classifier looked, and their overlay on the photo.

Two methods, both giving one map per image, float32 [H, W] in [0, 1] at
the input size (1 where the evidence for the class is strongest):

* `grad_cam` (Selvaraju et al. 2017) on the last convolution of each
  feature module: the gradient of the class's logit with respect to the
  activations A [h, w, C], summed over the h x w positions, weights each
  channel; the map is sum_k alpha_k A_k. Summing (rather than averaging)
  the gradients puts every member of an ensemble in the same units: with
  global average pooling and a linear head, the map's mean over positions
  is exactly that member's contribution to the logit. Each member's map is
  resized (bilinear) to the input size and the maps are added, so a member
  counts as much as it moves the logit; then negative evidence is cut at
  0 (ReLU) and the map divided by its maximum.
* `occlusion` (Zeiler and Fergus 2014), for models whose last convolution
  cannot be reached (a TF-Hub module, a fine-tuned network, an export): a
  grey square slides over a grid of positions and the map is how much the
  class's probability drops when that part is hidden. It needs grid^2
  forward passes per image; its resolution is the grid's.

An all-zero map means no part of the image raised the class.

TensorFlow is imported inside the functions that use it, so this module
loads cheaply (label_image imports it).
"""

from __future__ import annotations

import io
from typing import Callable, Sequence, Tuple

import numpy as np

# Occlusion: grid positions per side, and the patch's side as a fraction
# of the image (patches overlap, so every pixel is hidden by one or more).
OCCLUSION_GRID = 5
OCCLUSION_PATCH = 0.3
# The grey that hides a patch (pixels in [0, 1]).
OCCLUSION_FILL = 0.5
# How strongly the map colours the photo in an overlay.
OVERLAY_ALPHA = 0.5

GRAD_CAM = 'Grad-CAM'
OCCLUSION = 'occlusion'


def _normalise(maps: np.ndarray) -> np.ndarray:
  """ReLU, then each map divided by its maximum (all-zero stays zero)."""
  maps = np.maximum(np.asarray(maps, np.float32), 0.0)
  peak = maps.reshape(len(maps), -1).max(axis=1) if len(maps) else maps
  scale = np.where(peak > 0, peak, 1.0).reshape(-1, 1, 1)
  return (maps / scale).astype(np.float32)


def grad_cam(images: np.ndarray, members: Sequence[Tuple[Callable, Callable]],
             weights: np.ndarray, biases: np.ndarray,
             classes: Sequence[int]) -> np.ndarray:
  """Grad-CAM maps of `classes` (one per image); see the module docstring.

  Args:
    images: float32 [b, H, W, 3], the model's input.
    members: per feature module, in the order of its vector in the head's
      input: (conv, pool), where conv(images) -> activations float32
      [b, h, w, C] (the module's last convolution; it resizes the images
      itself if its input size differs) and pool(activations) -> feature
      vectors float32 [b, D_i].
    weights: float32 [sum of D_i, N], the head; biases: float32 [N].
    classes: int [b], the class whose evidence each map shows.

  Returns:
    float32 [b, H, W] in [0, 1].
  """
  import tensorflow as tf
  images = tf.convert_to_tensor(np.asarray(images, np.float32))
  height, width = int(images.shape[1]), int(images.shape[2])
  activations = [conv(images) for conv, _ in members]
  with tf.GradientTape() as tape:
    tape.watch(activations)
    features = tf.concat([pool(a) for a, (_, pool) in
                          zip(activations, members)], axis=1)
    logits = tf.matmul(features, tf.constant(weights, tf.float32)) + biases
    chosen = tf.gather(logits, tf.constant(list(classes), tf.int32),
                       axis=1, batch_dims=1)
  gradients = tape.gradient(chosen, activations)
  total = tf.zeros([len(classes), height, width], tf.float32)
  for a, g in zip(activations, gradients):
    alpha = tf.reduce_sum(g, axis=[1, 2], keepdims=True)  # [b, 1, 1, C]
    cam = tf.reduce_sum(alpha * a, axis=3, keepdims=True)  # [b, h, w, 1]
    total += tf.image.resize(cam, (height, width), method='bilinear')[..., 0]
  return _normalise(total.numpy())


def occlusion(images: np.ndarray,
              probabilities: Callable[[np.ndarray], np.ndarray],
              classes: Sequence[int], grid: int = OCCLUSION_GRID,
              patch: float = OCCLUSION_PATCH) -> np.ndarray:
  """Occlusion maps of `classes` (one per image); see the module docstring.

  Args:
    images: float32 [b, H, W, 3] in [0, 1].
    probabilities: float32 [n, H, W, 3] -> float32 [n, N].
    classes: int [b].
    grid: patch positions per side; patch: its side / the image's side.

  Returns:
    float32 [b, H, W] in [0, 1].
  """
  images = np.asarray(images, np.float32)
  b, height, width = images.shape[:3]
  ph, pw = max(1, int(round(patch * height))), max(1, int(round(
      patch * width)))
  tops = np.linspace(0, height - ph, grid).round().astype(int)
  lefts = np.linspace(0, width - pw, grid).round().astype(int)
  maps = np.zeros([b, height, width], np.float32)
  cover = np.zeros([height, width], np.float32)
  for top in tops:
    for left in lefts:
      cover[top:top + ph, left:left + pw] += 1
  for i in range(b):
    batch = np.repeat(images[i:i + 1], grid * grid + 1, axis=0)
    for k, (top, left) in enumerate((t, l) for t in tops for l in lefts):
      batch[k + 1, top:top + ph, left:left + pw] = OCCLUSION_FILL
    p = np.asarray(probabilities(batch))[:, int(classes[i])]
    for k, (top, left) in enumerate((t, l) for t in tops for l in lefts):
      maps[i, top:top + ph, left:left + pw] += p[0] - p[k + 1]
  return _normalise(maps / np.maximum(cover, 1.0))


def colour_map(heat: np.ndarray) -> np.ndarray:
  """float32 [H, W] in [0, 1] -> float32 [H, W, 3] in [0, 1]: blue (0)
  through green and yellow to red (1), the 'jet' colours."""
  x = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)[..., None]
  centres = np.array([3.0, 2.0, 1.0], np.float32)  # red, green, blue
  return np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray,
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
  """The photo with the map over it: uint8 [H, W, 3].

  image: float32 [H, W, 3] in [0, 1]; heat: float32 [h, w] in [0, 1]
  (resized to H x W when it differs). Where the map is 0 the photo shows
  through dimmed less than where it is 1.
  """
  image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  heat = np.asarray(heat, np.float32)
  if heat.shape != image.shape[:2]:
    from PIL import Image
    heat = np.asarray(Image.fromarray(heat, mode='F').resize(
        (image.shape[1], image.shape[0]), Image.BILINEAR), np.float32)
  weight = alpha * np.clip(heat, 0.0, 1.0)[..., None] ** 0.5
  mixed = (1.0 - weight) * image + weight * colour_map(heat)
  return (mixed * 255.0 + 0.5).astype(np.uint8)


def encode(pixels: np.ndarray, image_format: str = 'PNG',
           side: int = 0) -> bytes:
  """uint8 [H, W, 3] as PNG (or 'JPEG') bytes, shrunk to at most
  side x side pixels when side > 0."""
  from PIL import Image
  picture = Image.fromarray(np.asarray(pixels, np.uint8), mode='RGB')
  if side:
    picture.thumbnail((side, side))
  out = io.BytesIO()
  picture.save(out, format=image_format, **(
      {'quality': 85} if image_format == 'JPEG' else {}))
  return out.getvalue()
