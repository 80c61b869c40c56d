"""Makes a larger image folder from a small one, for scaling benchmarks.

Each photo is written K times: as it is, then with a different, cheap
variation (mirror, small crop, slight brightness change) saved as the
flower photos are (JPEG 4:4:4, high quality), so every copy has its own
content hash, the bottleneck cache treats it as a new image, and decoding
it costs about what decoding the original does:

  python bench/make_scaled_copy.py ../shared/datasets/flowers_sample /tmp/flowers_x4 --copies 4
  python bench/pipeline_bench.py --image_dir /tmp/flowers_x4
"""

from __future__ import annotations

import argparse
import pathlib

from PIL import Image, ImageEnhance, ImageOps


def variant(image: Image.Image, k: int) -> Image.Image:
  """The k-th variation of an image (k = 0 is the image itself)."""
  if k == 0:
    return image
  if k % 2:
    image = ImageOps.mirror(image)
  margin = k % 5
  if margin:
    w, h = image.size
    image = image.crop((margin * w // 100, margin * h // 100,
                        w - margin * w // 100, h - margin * h // 100))
  return ImageEnhance.Brightness(image).enhance(1.0 + 0.02 * (k % 7 - 3))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('src')
  parser.add_argument('dst')
  parser.add_argument('--copies', type=int, default=4)
  args = parser.parse_args()
  src, dst = pathlib.Path(args.src), pathlib.Path(args.dst)
  count = 0
  for path in sorted(src.glob('*/*')):
    if path.suffix.lower() not in ('.jpg', '.jpeg', '.png'):
      continue
    with Image.open(path) as image:
      image = image.convert('RGB')
      for k in range(args.copies):
        # '_nohash_' keeps a photo's variants in one set (see retrain/data/split.py).
        out = dst / path.parent.name / f'{path.stem}_nohash_{k}.jpg'
        out.parent.mkdir(parents=True, exist_ok=True)
        if k == 0:  # the photo itself, byte for byte
          out.write_bytes(path.read_bytes())
        else:
          # Full-resolution colour (4:4:4) at high quality, like the flower
          # photos themselves, so decoding costs what it costs on real data.
          variant(image, k).save(out, format='JPEG', quality=95, subsampling=0)
        count += 1
  print(f'Wrote {count} images to {dst}')


if __name__ == '__main__':
  main()
