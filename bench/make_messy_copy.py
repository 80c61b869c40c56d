"""Makes a messy copy of a folder-per-class photo set, for manual checks.

  python bench/make_messy_copy.py SRC DST

DST/<class>/ gets every photo of SRC/<class>/ as a symbolic link, and each
class also one real photo converted to each awkward form (PNG inside .jpg,
upper-case extension, CMYK, grayscale, RGBA PNG, palette GIF, 16-bit PNG,
BMP, WebP, TIFF, EXIF-rotated, a 6000x4000 upscale, non-ASCII name) plus
one broken file of each kind (truncated, empty, HTML, random bytes, broken
link) and clutter (.DS_Store, Thumbs.db). Prints how many files should be
usable and unusable, so a run over DST can be checked against it.
"""

from __future__ import annotations

import io
import pathlib
import sys

import numpy as np
from PIL import Image


def _save(image, path, fmt, **kw):
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kw)
  path.write_bytes(buffer.getvalue())


def main(src: str, dst: str) -> None:
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  usable = unusable = 0
  rng = np.random.default_rng(0)
  for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
    out = dst / class_dir.name
    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(p for p in class_dir.iterdir() if p.is_file())
    for photo in photos:
      link = out / photo.name
      if not link.exists():
        link.symlink_to(photo.resolve())
      usable += 1
    base = Image.open(photos[0]).convert('RGB')
    rgba = base.convert('RGBA')
    rgba.putalpha(128)
    sixteen = (np.asarray(base.convert('L'), np.uint16) * 257)
    exif = base.getexif()
    exif[0x0112] = 6
    odd = {
        'png_inside.jpg': (base, 'PNG', {}),
        'UPPER.JPG': (base, 'JPEG', {}),
        'cmyk.jpg': (base.convert('CMYK'), 'JPEG', {}),
        'gray.jpg': (base.convert('L'), 'JPEG', {}),
        'rgba.png': (rgba, 'PNG', {}),
        'palette.gif': (base.convert('P'), 'GIF', {}),
        'sixteen_bit.png': (Image.fromarray(sixteen), 'PNG', {}),
        'photo.bmp': (base, 'BMP', {}),
        'photo.webp': (base, 'WEBP', {}),
        'photo.tiff': (base, 'TIFF', {}),
        'rotated_exif.jpg': (base.transpose(Image.Transpose.ROTATE_90),
                             'JPEG', {'exif': exif.tobytes()}),
        'huge_6000x4000.jpg': (base.resize((6000, 4000)), 'JPEG', {}),
        'naïve café 写真.jpg': (base, 'JPEG', {}),
    }
    for name, (image, fmt, kw) in odd.items():
      _save(image, out / name, fmt, **kw)
      usable += 1
    whole = photos[0].read_bytes()
    (out / 'truncated.jpg').write_bytes(whole[:len(whole) // 3])
    (out / 'empty.jpg').write_bytes(b'')
    (out / 'saved_page.jpg').write_bytes(b'<html><body>403</body></html>')
    (out / 'noise.png').write_bytes(rng.integers(0, 256, 5000,
                                                 np.uint8).tobytes())
    broken = out / 'broken_link.jpg'
    if not broken.is_symlink():
      broken.symlink_to(out / 'deleted.jpg')
    unusable += 5
    (out / '.DS_Store').write_bytes(b'\0')
    (out / 'Thumbs.db').write_bytes(b'\0')
  print(f'{dst}: {usable} usable, {unusable} unusable image files')


if __name__ == '__main__':
  if len(sys.argv) != 3:
    sys.exit(__doc__)
  main(sys.argv[1], sys.argv[2])
