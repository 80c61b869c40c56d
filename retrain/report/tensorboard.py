"""TensorBoard views that explain the model, beyond scalars and histograms.

Under --summaries_dir (runs are sub-folders; see retrain/report/summaries.py):
  validation/  images `confusion_matrix` at evaluation steps and at the end;
               PR curves `pr_curve/<label>` at the end
  test/        image `confusion_matrix`, PR curves `pr_curve/<label>`, and
               scalars `accuracy`, `precision_macro`, `recall_macro`,
               `f1_macro` at the last training step
  train/       text `run_config`: module, options, dataset counts, skipped
               files
  projector/   the embedding projector: bottleneck vectors of a capped
               sample of images, `metadata.tsv` (label, predicted, subset,
               correct, file) and `sprite.png` of thumbnails, so one can see
               how the classes cluster and spot mislabelled images

The confusion-matrix image is drawn with numpy and Pillow (no plotting
library): a heat map whose colour is the row-normalised fraction (recall of
the true class spread over the predictions), labelled with the counts.
"""

from __future__ import annotations

import io
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from retrain.bottlenecks import thumbnails
from retrain.common import atomic, background
from retrain.head import math as head_math

# TensorBoard's projector refuses sprites larger than 8192 pixels a side.
_MAX_SPRITE_SIDE = 8192
_THUMBNAIL = 64
_EMBEDDING_NAME = 'bottlenecks'


# --- Confusion matrix image ----------------------------------------------------


def _font(size: int):
  from PIL import ImageFont
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1 has only the fixed bitmap font.
    return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple:
  left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
  return right - left, bottom - top


def confusion_image(confusion: np.ndarray, labels: Sequence[str],
                    title: str = '') -> np.ndarray:
  """A labelled heat map of a confusion matrix.

  Args:
    confusion: int [N, N], rows true class, columns predicted class.
    labels: N class names in class id order.
    title: drawn above the matrix.

  Returns:
    uint8 [H, W, 3] RGB. Cell colour goes from white (0) to dark blue (the
    whole row), i.e. the fraction of the true class's images predicted as
    the column's class; each cell shows its count.
  """
  from PIL import Image, ImageDraw
  cm = np.asarray(confusion, np.int64)
  n = len(labels)
  font = _font(13)
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  names = [str(l) if len(str(l)) <= 24 else str(l)[:23] + '~' for l in labels]
  label_w = max([_text_size(probe, s, font)[0] for s in names] + [10])
  count_w = max([_text_size(probe, str(v), font)[0] for v in cm.ravel()] + [8])
  cell = max(34, count_w + 12)
  pad = 8
  axis_h = _text_size(probe, 'Predicted', font)[1] + 2 * pad
  title_h = (_text_size(probe, title, font)[1] + 2 * pad) if title else pad
  left = axis_h + label_w + pad
  top = title_h + axis_h + label_w + pad
  width = left + n * cell + pad
  height = top + n * cell + pad
  img = Image.new('RGB', (max(width, left + 120), height), 'white')
  draw = ImageDraw.Draw(img)
  if title:
    draw.text((pad, pad), title, fill='black', font=font)

  rows = cm.sum(axis=1, keepdims=True)
  frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
  light, dark = np.array([255, 255, 255]), np.array([8, 48, 107])
  for i in range(n):
    for j in range(n):
      colour = tuple(int(c) for c in light + (dark - light) * frac[i, j])
      x0, y0 = left + j * cell, top + i * cell
      draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour,
                     outline=(200, 200, 200))
      text = str(int(cm[i, j]))
      tw, th = _text_size(draw, text, font)
      draw.text((x0 + (cell - tw) / 2, y0 + (cell - th) / 2 - 1), text,
                fill='white' if frac[i, j] > 0.5 else 'black', font=font)
  # Row labels (true class), right-aligned against the matrix.
  for i, name in enumerate(names):
    tw, th = _text_size(draw, name, font)
    draw.text((left - pad - tw, top + i * cell + (cell - th) / 2 - 1), name,
              fill='black', font=font)
  # Column labels (predicted class), written upwards.
  for j, name in enumerate(names):
    tw, th = _text_size(draw, name, font)
    strip = Image.new('RGB', (tw + 2, th + 4), 'white')
    ImageDraw.Draw(strip).text((0, 0), name, fill='black', font=font)
    strip = strip.rotate(90, expand=True)
    img.paste(strip, (left + j * cell + (cell - strip.width) // 2,
                      top - pad - strip.height))
  # Axis titles.
  draw.text((left, title_h), 'Predicted', fill='black', font=font)
  tw, th = _text_size(draw, 'True', font)
  strip = Image.new('RGB', (tw + 2, th + 4), 'white')
  ImageDraw.Draw(strip).text((0, 0), 'True', fill='black', font=font)
  strip = strip.rotate(90, expand=True)
  img.paste(strip, (pad, top + (n * cell - strip.height) // 2))
  return np.asarray(img, np.uint8)


def write_confusion_image(writer, confusion: np.ndarray,
                          labels: Sequence[str], step: int,
                          title: str = '') -> None:
  """Writes tag `confusion_matrix` (an image) to `writer` at `step`."""
  image = confusion_image(confusion, labels, title)
  with writer.as_default(step=step):
    tf.summary.image('confusion_matrix', image[None], max_outputs=1,
                     description='Rows: true class; columns: predicted '
                     'class; colour: fraction of the row.')


# --- PR curves -------------------------------------------------------------------


def write_pr_curves(writer, y_true: np.ndarray, probabilities: np.ndarray,
                    labels: Sequence[str], step: int,
                    num_thresholds: int = 101) -> None:
  """One-vs-rest precision-recall curves, tag `pr_curve/<label>` per class.

  Args:
    y_true: int [n] class ids, or bool [n, N] (multi-label: column i true
      when the image has label i); probabilities: float [n, N] in [0, 1].
  """
  from tensorboard.plugins.pr_curve import summary as pr_summary
  y_true = np.asarray(y_true)
  probabilities = np.clip(np.asarray(probabilities, np.float32), 0.0, 1.0)
  with writer.as_default(step=step):
    for i, name in enumerate(labels):
      truth = y_true[:, i] if y_true.ndim == 2 else y_true == i
      pb = pr_summary.pb(f'pr_curve/{name}', truth, probabilities[:, i],
                         num_thresholds=num_thresholds,
                         display_name=f'{name} (one vs rest)')
      # pb() names the tag '<name>/pr_curves'; keep the documented tag.
      pb.value[0].tag = f'pr_curve/{name}'
      tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step)


def write_scalars(writer, values: Dict[str, float], step: int) -> None:
  with writer.as_default(step=step):
    for tag, value in values.items():
      if value == value:  # nan (an empty set) is left out
        tf.summary.scalar(tag, value)


# --- Run configuration text --------------------------------------------------------


def _md_escape(value) -> str:
  return str(value).replace('|', '\\|').replace('\n', ' ')


def config_markdown(settings: Dict, module_identity: Dict,
                    labels: Sequence[str],
                    class_counts: Dict[str, Dict[str, int]],
                    skipped: Sequence, max_skipped: int = 20) -> str:
  """Markdown (TensorBoard's text plugin renders it) describing the run.

  Args:
    settings: {name: value} of every setting of the run (the fields of
      retrain.config.Config, in their order).
    module_identity: what identifies the feature module (FeatureModule
      .identity()).
    labels: class names in class id order.
    class_counts: {label: {'train': n, 'validation': n, 'test': n}}.
    skipped: (path, reason) of every image that could not be used.
  """
  lines = ['### Module', '', '| key | value |', '|---|---|']
  lines += [f'| {_md_escape(k)} | {_md_escape(v)} |'
            for k, v in sorted(module_identity.items())]
  lines += ['', '### Options', '', '| setting | value |', '|---|---|']
  lines += [f'| {_md_escape(name)} | {_md_escape(value)} |'
            for name, value in settings.items()]
  lines += ['', '### Dataset', '', '| class | train | validation | test |',
            '|---|---|---|---|']
  totals = {'train': 0, 'validation': 0, 'test': 0}
  for name in labels:
    c = class_counts.get(name, {})
    lines.append(f'| {_md_escape(name)} | ' + ' | '.join(
        str(c.get(s, 0)) for s in totals) + ' |')
    for s in totals:
      totals[s] += c.get(s, 0)
  lines.append('| **total** | ' + ' | '.join(str(v) for v in totals.values())
               + ' |')
  lines += ['', f'### Skipped files: {len(skipped)}', '']
  for path, reason in list(skipped)[:max_skipped]:
    lines.append(f'* `{_md_escape(path)}`: {_md_escape(reason)}')
  if len(skipped) > max_skipped:
    lines.append(f'* ... and {len(skipped) - max_skipped} more (see the '
                 'log).')
  return '\n'.join(lines) + '\n'


def write_text(writer, tag: str, text: str, step: int = 0) -> None:
  with writer.as_default(step=step):
    tf.summary.text(tag, text)


# --- Embedding projector ---------------------------------------------------------------


def sample_rows(count: int, cap: int) -> np.ndarray:
  """int64 indices of at most `cap` of `count` rows, evenly spread and
  repeatable (no random generator: the same images are shown every run)."""
  return head_math.evenly_spread(count, cap)


def _thumbnail(path: str, size: int) -> np.ndarray:
  """uint8 [size, size, 3]: the image centre-cropped to a square; grey if it
  cannot be read (the projector still shows the point). Made by the
  bottleneck pass from its decoded pixels when it decoded the image
  (retrain/bottlenecks/thumbnails.py), else from the file."""
  from PIL import Image, ImageOps
  made = thumbnails.take(path)
  if made is not None:
    return (made if size == thumbnails.SIDE else np.asarray(
        Image.fromarray(made).resize((size, size), Image.BOX)))
  try:
    with Image.open(path) as img:
      img.draft('RGB', (size * 2, size * 2))  # fast JPEG decode at low size
      img = ImageOps.fit(img.convert('RGB'), (size, size))
      return np.asarray(img, np.uint8)
  except Exception as e:  # noqa: BLE001 a grey square stands in for any unreadable photo
    logging.warning('No thumbnail for %s (%s); a grey square stands in.',
                    path, e)
    return np.full((size, size, 3), 128, np.uint8)


def sprite(paths: Sequence[str], size: int = _THUMBNAIL) -> tuple:
  """(uint8 [S, S, 3] sprite sheet, thumbnail size): thumbnails row-major in
  the order of `paths`, shrunk if needed to keep S within TensorBoard's
  limit."""
  cols = max(1, math.ceil(math.sqrt(len(paths))))
  size = min(size, _MAX_SPRITE_SIDE // cols)
  sheet = np.full((cols * size, cols * size, 3), 255, np.uint8)
  for k, path in enumerate(paths):
    r, c = divmod(k, cols)
    sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = _thumbnail(
        path, size)
  return sheet, size


def write_projector(run_dir: str, vectors: np.ndarray,
                    columns: Dict[str, Sequence[str]],
                    image_paths: Optional[Sequence[str]] = None) -> List[str]:
  """Writes the embedding projector's files into `run_dir`.

  Args:
    run_dir: a TensorBoard run folder (it should also hold an event file).
    vectors: float32 [n, D] bottleneck vectors.
    columns: metadata columns, each a sequence of n strings; the first is
      the projector's default label.
    image_paths: n image files for the sprite, or None for no thumbnails.

  Returns:
    The files written: a checkpoint of variable `bottlenecks`, metadata.tsv,
    sprite.png (with image_paths) and projector_config.pbtxt (the last two
    on the worker thread inside retrain.common.background.deferred).
  """
  os.makedirs(run_dir, exist_ok=True)
  vectors = np.asarray(vectors, np.float32)
  n = len(vectors)
  # The projector's metadata is TSV: tabs and newlines inside a value would
  # shift the columns.
  clean = {k: [str(v).replace('\t', ' ').replace('\n', ' ') for v in vals]
           for k, vals in columns.items()}
  for name, vals in clean.items():
    if len(vals) != n:
      raise ValueError(f'metadata column {name!r} has {len(vals)} values for '
                       f'{n} vectors')
  rows = [list(clean)] + [[vals[k] for vals in clean.values()]
                          for k in range(n)]
  atomic.write_text(os.path.join(run_dir, 'metadata.tsv'),
                    ''.join('\t'.join(row) + '\n' for row in rows))

  checkpoint = tf.train.Checkpoint(**{_EMBEDDING_NAME: tf.Variable(vectors)})
  prefix = checkpoint.save(os.path.join(run_dir, 'embedding.ckpt'))

  written = [prefix, os.path.join(run_dir, 'metadata.tsv')]
  if image_paths is not None:
    written.append(os.path.join(run_dir, 'sprite.png'))
  written.append(os.path.join(run_dir, 'projector_config.pbtxt'))
  # The sprite (a PNG of up to 8192 x 8192 pixels, most of the
  # projector's time) and then the config that names it are written while
  # the run goes on (retrain/common/background.py).
  background.run(lambda: _write_sprite_and_config(run_dir, image_paths))
  return written


def _write_sprite_and_config(run_dir: str,
                             image_paths: Optional[Sequence[str]]) -> None:
  """projector_config.pbtxt, after sprite.png of image_paths (None: no
  sprite)."""
  from PIL import Image
  from tensorboard.plugins import projector
  config = projector.ProjectorConfig()
  embedding = config.embeddings.add()
  embedding.tensor_name = f'{_EMBEDDING_NAME}/.ATTRIBUTES/VARIABLE_VALUE'
  embedding.metadata_path = 'metadata.tsv'
  if image_paths is not None:
    sheet, size = sprite(image_paths)
    buffer = io.BytesIO()
    # zlib's fastest level: the same pixels, a file about 5 % larger, in
    # half the time of the default level.
    Image.fromarray(sheet).save(buffer, format='PNG', compress_level=1)
    atomic.write_bytes(os.path.join(run_dir, 'sprite.png'), buffer.getvalue())
    embedding.sprite.image_path = 'sprite.png'
    embedding.sprite.single_image_dim.extend([size, size])
  projector.visualize_embeddings(run_dir, config)
