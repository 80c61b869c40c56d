"""The skipped-files report: every file that was not used, and why.

  <report_dir>/skipped_files.json   {"count": n, "files": [{"path", "reason"}]}
  <report_dir>/skipped_files.csv    header `path,reason`, one row per file

Both are rewritten on every run (an empty list included), so a report never
describes an earlier run.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import List, Sequence, Tuple

from retrain.common import atomic, safe_text

SKIPPED_JSON = 'skipped_files.json'
SKIPPED_CSV = 'skipped_files.csv'


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
  atomic.write_text(json_path, json.dumps(
      {'count': len(rows),
       'files': [{'path': p, 'reason': r} for p, r in rows]},
      indent=2, ensure_ascii=False) + '\n')
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(['path', 'reason'])
  writer.writerows(safe_text.csv_row(row) for row in rows)
  atomic.write_text(csv_path, buffer.getvalue())
  return [json_path, csv_path]
