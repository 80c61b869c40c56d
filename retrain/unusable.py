"""Files that cannot be used: why, the machine-readable report, and duplicates.

Imports no TensorFlow. Every unusable file gets one reason a user can act
on ("empty file (0 bytes)", "text or HTML, not an image", "truncated or
corrupt JPEG: ..."), is logged once, and is listed in

  <report_dir>/skipped_files.json   {"count": n, "files": [{"path", "reason"}]}
  <report_dir>/skipped_files.csv    header `path,reason`, one row per file

Both are rewritten on every run (an empty list included), so a report never
describes an earlier run.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
from typing import List, Sequence, Tuple

from absl import logging

SKIPPED_JSON = 'skipped_files.json'
SKIPPED_CSV = 'skipped_files.csv'
# Conflicting duplicates listed one per line in the warning; the rest are
# counted.
_MAX_LISTED_PAIRS = 20

# Leading bytes of the image formats we know; used only to word a reason.
_SIGNATURES = (
    (b'\xff\xd8\xff', 'JPEG'),
    (b'\x89PNG\r\n\x1a\n', 'PNG'),
    (b'GIF87a', 'GIF'),
    (b'GIF89a', 'GIF'),
    (b'BM', 'BMP'),
    (b'II*\x00', 'TIFF'),
    (b'MM\x00*', 'TIFF'),
)


def sniff_format(head: bytes) -> str:
  """'JPEG', 'PNG', 'GIF', 'BMP', 'TIFF', 'WebP' or '' from a file's first bytes."""
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return 'WebP'
  for signature, name in _SIGNATURES:
    if head.startswith(signature):
      return name
  return ''


def _looks_like_text(head: bytes) -> bool:
  if not head or b'\x00' in head:
    return False
  try:
    head.decode('utf-8')
  except UnicodeDecodeError as e:
    # A multi-byte character cut at the end of the sample is still text.
    if e.start < len(head) - 3:
      return False
  return True


def _first_line(error: BaseException) -> str:
  message = getattr(error, 'message', None) or str(error)
  lines = [line for line in message.strip().splitlines() if line.strip()]
  # TensorFlow prefixes '{{function_node ...}} '; the useful part follows.
  text = lines[0] if lines else type(error).__name__
  return text.split('}} ')[-1].strip()


def os_error_reason(path: str, error: OSError) -> str:
  """Why a file could not be opened: a broken link is named as one."""
  if os.path.islink(path) and not os.path.exists(path):
    return (f'broken symbolic link (points to {os.readlink(path)!r}, which '
            'does not exist)')
  return f'cannot be read: {error.strerror or error}'


def decode_failure_reason(contents: bytes, error: BaseException) -> str:
  """Why bytes that neither decoder accepted are not an image.

  Args:
    contents: the file's bytes.
    error: the last decoder's exception (its first line is quoted).
  """
  if not contents:
    return 'empty file (0 bytes)'
  head = contents[:512]
  kind = sniff_format(head)
  if kind:
    return f'truncated or corrupt {kind}: {_first_line(error)}'
  if _looks_like_text(head):
    stripped = head.lstrip().lower()
    what = ('HTML' if stripped.startswith((b'<!doctype html', b'<html', b'<'))
            else 'text')
    return (f'{what}, not an image (a web page or text saved with an image '
            'extension)')
  return ('not an image in any known format (first bytes '
          f'{contents[:8].hex(" ")}); accepted: JPEG, PNG, GIF, BMP, WebP, '
          'TIFF')


def _write_atomic(path: str, text: str) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8', newline='') as f:
    f.write(text)
  os.replace(tmp, path)


def write_skipped_report(report_dir: str,
                         skipped: Sequence[Tuple[str, str]]) -> List[str]:
  """Writes skipped_files.json and .csv in report_dir; returns their paths.

  Args:
    report_dir: folder (created); '' writes nothing.
    skipped: (path, reason) of each file that was not used, in any order.
  """
  if not report_dir:
    return []
  os.makedirs(report_dir, exist_ok=True)
  rows = sorted(skipped)
  json_path = os.path.join(report_dir, SKIPPED_JSON)
  csv_path = os.path.join(report_dir, SKIPPED_CSV)
  _write_atomic(json_path, json.dumps(
      {'count': len(rows),
       'files': [{'path': p, 'reason': r} for p, r in rows]},
      indent=2, ensure_ascii=False) + '\n')
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(['path', 'reason'])
  writer.writerows(rows)
  _write_atomic(csv_path, buffer.getvalue())
  return [json_path, csv_path]


def conflicting_duplicates(digests: Sequence[str], labels: Sequence[int],
                           paths: Sequence[str]) -> List[Tuple[str, str]]:
  """Pairs of paths with identical bytes but different class ids.

  Args:
    digests: content hash of each image (None for unreadable files).
    labels: class id of each image.
    paths: path of each image.

  Returns:
    (path_a, path_b) pairs, one per pair of classes sharing a content, the
    first path of each class; sorted.
  """
  by_digest = collections.defaultdict(dict)
  for digest, label, path in zip(digests, labels, paths):
    if digest is not None:
      by_digest[digest].setdefault(int(label), path)
  pairs = []
  for per_label in by_digest.values():
    found = sorted(per_label.items())
    for i in range(len(found)):
      for j in range(i + 1, len(found)):
        pairs.append((found[i][1], found[j][1]))
  return sorted(pairs)


def warn_conflicting_duplicates(pairs: Sequence[Tuple[str, str]]) -> None:
  if not pairs:
    return
  lines = [f'  {a}  ==  {b}' for a, b in pairs[:_MAX_LISTED_PAIRS]]
  if len(pairs) > _MAX_LISTED_PAIRS:
    lines.append(f'  ... and {len(pairs) - _MAX_LISTED_PAIRS} more')
  logging.warning(
      '%d images have the same content under two different classes; both '
      'copies are used, which teaches the classifier a contradiction. Delete '
      'the copy in the wrong class:\n%s', len(pairs), '\n'.join(lines))
