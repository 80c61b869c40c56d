"""An annotated box and the boxes of one layout."""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

CSV_BOX_COLUMNS = ('xmin', 'ymin', 'xmax', 'ymax')


@dataclasses.dataclass(frozen=True)
class Box:
  """One annotated object.

  Attributes:
    image: absolute path of the photo.
    label: the object's name (or the Stanford Dogs folder class).
    xmin, ymin, xmax, ymax: pixels of the upright photo, as annotated.
    difficult: VOC's difficult flag.
    where: 'file:line' (or 'file') of the annotation, for messages.
  """
  image: str
  label: str
  xmin: float
  ymin: float
  xmax: float
  ymax: float
  difficult: bool = False
  where: str = ''

  def coords(self) -> str:
    return ','.join(number_text(v) for v in (self.xmin, self.ymin, self.xmax,
                                         self.ymax))


def number_text(value: float) -> str:
  return str(int(value)) if float(value).is_integer() else f'{value:g}'


@dataclasses.dataclass(frozen=True)
class Annotations:
  """Boxes read from one layout.

  Attributes:
    boxes: every box, in file order.
    base: the folder the photo paths are relative to (for the split hash).
    subsets: {photo path: subset code} when the annotations carry a split
      (VOC ImageSets), else None.
    unannotated: photos that have no annotation at all.
    description: one line for the log.
  """
  boxes: List[Box]
  base: str
  subsets: Optional[Dict[str, int]] = None
  unannotated: Tuple[str, ...] = ()
  description: str = ''


def finite_number(text: str) -> float:
  """float(text), refusing NaN and infinities (ValueError) as float() does
  other text: a NaN box would be used silently and crop nothing sane."""
  value = float(text)
  if not math.isfinite(value):
    raise ValueError(f'{text.strip()!r} is not a finite number')
  return value
