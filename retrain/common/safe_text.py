"""Text from untrusted names, made harmless where it is shown.

- `csv_cell`: a spreadsheet runs a cell that starts with =, +, - or @ (or
  a tab or carriage return before one) as a formula: `=HYPERLINK(...)` as
  a class or file name would run when a report is opened. Such a cell gets
  a leading apostrophe, which spreadsheets show as text; numbers are left
  alone.
- `terminal`: control characters (escape sequences that recolour, move
  the cursor or retitle the terminal), invisible formatting characters and
  text-direction overrides in a name are written as \\xNN / \\uNNNN.

Imports only the standard library (label_image uses it).
"""

from __future__ import annotations

from typing import Any, Iterable, List

_FORMULA_START = ('=', '+', '-', '@', '\t', '\r')


def csv_cell(value: Any) -> Any:
  """`value` as a CSV cell a spreadsheet shows as text (see module doc)."""
  if isinstance(value, str) and value.startswith(_FORMULA_START):
    return "'" + value
  return value


def csv_row(values: Iterable[Any]) -> List[Any]:
  return [csv_cell(v) for v in values]


def terminal(text: str) -> str:
  """`text` with every character that is not printable escaped."""
  if text.isprintable():
    return text
  return ''.join(c if c.isprintable() else
                 c.encode('unicode_escape').decode('ascii') for c in text)
