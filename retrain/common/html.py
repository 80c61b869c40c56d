"""The building blocks of the self-contained HTML pages (the dataset
health report, the results page): CSS, escaping, tables, thumbnails and
matplotlib charts as data: URIs. Nothing on a page is fetched: every
image is a data: URI, and every value goes through `escape`.

Pillow and matplotlib are imported inside the functions that use them.
"""

from __future__ import annotations

import base64
import html
import io
from typing import List, Optional, Sequence

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;
padding:3px 8px;text-align:left;font-size:.9em}th{background:#f3f3f3}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:8px;margin:8px 0}
.ok{color:#2a7a2a}.row{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0}
figure{margin:0;text-align:center;font-size:.75em;max-width:130px;
word-break:break-all}figure img{border:1px solid #bbb;display:block;
margin:auto}.pair{border:1px solid #ddd;padding:6px;display:flex;gap:6px;
align-items:flex-end}.sheet figure{max-width:116px}
"""


def escape(value) -> str:
  """str(value) with &, <, >, " and ' escaped for HTML text and attributes."""
  return html.escape(str(value))


def none(text: str = 'None found.') -> str:
  return f'<p class="ok">{escape(text)}</p>'


def table(rows: List[List], header: List[str]) -> str:
  """An HTML table; every header and cell escaped."""
  return ('<table><tr>' + ''.join(f'<th>{escape(h)}</th>' for h in header) +
          '</tr>' + ''.join('<tr>' + ''.join(f'<td>{escape(c)}</td>'
                                             for c in row)
                            + '</tr>' for row in rows) + '</table>')


def chart_figure(width=7.0, height=3.2):
  """(pyplot, a new figure) drawn headless (Agg); width, height: inches."""
  import matplotlib
  matplotlib.use('Agg', force=True)
  from matplotlib import pyplot
  return pyplot, pyplot.figure(figsize=(width, height), dpi=100)


def chart_uri(pyplot, figure) -> str:
  """The figure as a PNG data: URI (the figure is closed)."""
  out = io.BytesIO()
  figure.tight_layout()
  figure.savefig(out, format='png')
  pyplot.close(figure)
  return 'data:image/png;base64,' + base64.b64encode(out.getvalue()).decode()


def thumbnail_uri(path: str, box: Optional[Sequence[float]] = None,
                  side: int = 112) -> str:
  """A JPEG data: URI of the upright image (or its box crop), at most
  side x side pixels; '' when the file cannot be decoded.

  box: (top, left, bottom, right) in [0, 1] of the upright image.
  """
  from PIL import Image, ImageOps
  try:
    with Image.open(path) as image:
      if image.format == 'JPEG' and box is None:
        image.draft('RGB', (side * 2, side * 2))
      image = ImageOps.exif_transpose(image).convert('RGB')
      if box is not None:
        w, h = image.size
        top, left, bottom, right = (float(v) for v in box)
        image = image.crop((int(left * w), int(top * h),
                            max(int(left * w) + 1, int(round(right * w))),
                            max(int(top * h) + 1, int(round(bottom * h)))))
      image.thumbnail((side, side))
      out = io.BytesIO()
      image.save(out, format='JPEG', quality=80)
  except Exception:  # noqa: BLE001 a photo that cannot be shown only loses its picture
    return ''
  return 'data:image/jpeg;base64,' + base64.b64encode(out.getvalue()).decode()


def jpeg_uri(data: bytes) -> str:
  """JPEG bytes as a data: URI."""
  return 'data:image/jpeg;base64,' + base64.b64encode(data).decode()
