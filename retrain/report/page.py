"""report.html of a classifier on a labelled set: one self-contained page
(CSS inline, every image a data: URI, no script, nothing fetched), drawn
from the report dict of retrain/report/results.py. Every value from the
data (file names, class names, settings) is escaped.

Sections, in order: the headline; the confusion matrix, whose cells link
to the photos behind them; per-class precision, recall, F1 and support;
classes the model does not know and photos below its rejection threshold
(when there are any); the worst mistakes and the least confident right
answers with heat maps; the reliability diagram and the novelty figures
(when extra_figures.json gives them); the training curve (when there is
one); the photos of each cell; the settings of the run.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np

from retrain.common import html as html_lib

_e = html_lib.escape
_table = html_lib.table

# The worst mistakes shown with heat maps, and the thumbnails shown per
# confusion-matrix cell (report.json lists every file).
GRID_PHOTOS = 8
CELL_PHOTOS = 12

_CSS = html_lib.CSS + """
.cm td{text-align:center;min-width:2.6em;padding:0}.cm td a{display:block;
padding:6px 4px;color:inherit;text-decoration:none}.cm th{font-size:.8em}
.grid figure{max-width:190px;font-size:.8em}.bad{color:#b00020}
.head{font-size:1.15em}.muted{color:#777}
"""


def _pct(value) -> str:
  return 'n/a' if value is None else f'{100 * value:.1f}%'


def _headline(report: dict) -> List[str]:
  interval = report.get('accuracy_interval_95')
  accuracy = (f'{_pct(report["accuracy"])} (95% interval '
              f'{_pct(interval[0])}–{_pct(interval[1])}, N='
              f'{report["count"]})' if interval else 'n/a (no photos)')
  rows = [[f'{report.get("set", "test")} accuracy', accuracy]]
  for key, what in (('validation', 'validation'), ('model', 'model'),
                    ('model_size', 'size'), ('speed', 'speed')):
    if report.get(key):
      rows.append([what, report[key]])
  if report.get('seconds') is not None:
    rows.append(['time taken', f'{report["seconds"]:.1f} s'])
  return [f'<h1>{_e(report.get("title", "Results"))}</h1>',
          '<div class="head">' + _table(rows, ['', '']) + '</div>']


def _cell_colour(fraction: float, diagonal: bool) -> str:
  """A background from white (0) to green (right) or red (wrong), as CSS."""
  f = min(1.0, max(0.0, fraction)) ** 0.7
  target = (60, 160, 80) if diagonal else (214, 60, 60)
  rgb = [round(255 + (t - 255) * f) for t in target]
  ink = '#fff' if f > 0.55 else '#222'
  return f'background:rgb({rgb[0]},{rgb[1]},{rgb[2]});color:{ink}'


def _confusion(report: dict) -> List[str]:
  labels, cm = report['labels'], np.asarray(report['confusion'])
  out = ['<h2>Confusion matrix</h2><p>Rows: true class; columns: '
         'predicted. Each number opens the photos behind it.</p>',
         '<table class="cm"><tr><th>true \\ predicted</th>' + ''.join(
             f'<th>{_e(name)}</th>' for name in labels) + '</tr>']
  for i, name in enumerate(labels):
    total = max(1, int(cm[i].sum()))
    cells = []
    for j in range(len(labels)):
      count = int(cm[i, j]) if cm.size else 0
      style = _cell_colour(count / total, i == j)
      text = f'<a href="#cell-{i}-{j}">{count}</a>' if count else ''
      cells.append(f'<td style="{style}">{text}</td>')
    out.append(f'<tr><th>{_e(name)}</th>' + ''.join(cells) + '</tr>')
  return out + ['</table>']


def _cells(report: dict, thumbs: dict) -> List[str]:
  """The photos behind each cell of the matrix, mistakes first."""
  labels = report['labels']
  out = ['<h2>The photos behind each cell</h2>']
  keys = sorted(report['cells'], key=lambda k: (
      k.split(',')[0] == k.split(',')[1], [int(v) for v in k.split(',')]))
  for key in keys:
    i, j = (int(v) for v in key.split(','))
    files = report['cells'][key]
    out.append(f'<h3 id="cell-{i}-{j}">{_e(labels[i])} predicted as '
               f'{_e(labels[j])}: {len(files)}</h3><div class="row">')
    for path in files[:CELL_PHOTOS]:
      uri = thumbs.get(path)
      image = (f'<img src="{uri}" alt="{_e(path)}">' if uri else
               '<div>(no preview)</div>')
      out.append(f'<figure>{image}<figcaption>{_e(_short(path))}'
                 '</figcaption></figure>')
    more = len(files) - CELL_PHOTOS
    out.append('</div>' + (f'<p>… and {more} more, in report.json.</p>'
                           if more > 0 else ''))
  return out


def _short(path: str) -> str:
  """The last two parts of a path (class folder and file)."""
  return '/'.join(str(path).replace('\\', '/').split('/')[-2:])


def _figure(value) -> str:
  """A metric in [0, 1] with three decimals, or '-' when it is None."""
  return '-' if value is None else f'{value:.3f}'


def _per_class(report: dict) -> List[str]:
  per = report['per_class']
  # A class with no photos in the set has no recall or F1 (None): '-'.
  rows = [[c['label']] + [_figure(c[k]) for k in ('precision', 'recall', 'f1')]
          + [c['support']] for c in per['classes']]
  for name, key in (('macro average', 'macro_avg'),
                    ('weighted average', 'weighted_avg')):
    avg = per[key]
    rows.append([name] + [('n/a' if avg[k] is None else f'{avg[k]:.3f}')
                          for k in ('precision', 'recall', 'f1')]
                + [per['count']])
  return ['<h2>Per-class metrics</h2>',
          _table(rows, ['class', 'precision', 'recall', 'F1', 'support'])]


def _strangers(report: dict) -> List[str]:
  out = []
  strangers = report.get('not_in_model') or {}
  if strangers:
    out.append('<h2>Classes the model does not know</h2><p>Photos of these '
               'folders are left out of the accuracy; the model can only '
               'call them one of its own classes:</p>')
    out.append(_table([[name, sum(c.values()), ', '.join(
        f'{k}: {v}' for k, v in sorted(c.items(), key=lambda kv: -kv[1]))]
                       for name, c in sorted(strangers.items())],
                      ['folder', 'photos', 'taken for']))
  unknown = report.get('unknown')
  if unknown:
    known, other = unknown['known_classes'], unknown['not_in_model']
    out.append(f'<h2>Below the rejection threshold '
               f'({unknown["threshold"]:.3f}): "unknown"</h2>')
    out.append(_table([
        ['photos of known classes', known['count'], known['unknown'],
         _pct(known['accuracy_of_the_rest'])],
        ['photos of other classes', other['count'], other['unknown'], '']],
        ['', 'photos', 'called unknown', 'accuracy of the rest']))
  return out


def _grid(title: str, examples: list, heat: dict, note: str) -> List[str]:
  out = [f'<h3>{_e(title)}: {len(examples)}</h3>']
  if not examples:
    return out + [html_lib.none()]
  out.append(f'<p class="muted">{_e(note)}</p><div class="row grid">')
  for e in examples:
    uri = heat.get(e['file'])
    image = (f'<img src="{uri}" alt="{_e(e["file"])}">' if uri else
             '<div>(no heat map)</div>')
    wrong = e['truth'] != e['predicted']
    out.append(
        f'<figure>{image}<figcaption>{_e(_short(e["file"]))}<br>truth '
        f'<b>{_e(e["truth"])}</b><br>predicted <b'
        f'{" class=bad" if wrong else ""}>{_e(e["predicted"])}</b> '
        f'{e["probability"]:.3f}</figcaption></figure>')
  return out + ['</div>']


def _photos(report: dict, heat: dict) -> List[str]:
  maps = report.get('heat_maps')
  about = (maps['description'] if maps else
           'No heat maps for this model.')
  return (['<h2>Photos</h2>', f'<p>{_e(about)}</p>'] +
          _grid('The worst mistakes (most confident first)',
                report['mistakes'][:GRID_PHOTOS], heat,
                f'{len(report["mistakes"])} photos are wrong; each cell of '
                'the confusion matrix links to its photos, and report.json '
                'lists them.') +
          _grid('The least confident right answers',
                report['least_confident_right'], heat,
                'Right, but only just: the photos nearest to a mistake.'))


def _curve(history: list) -> List[str]:
  if len(history) < 2:
    return []
  pyplot, figure = html_lib.chart_figure(8.0, 3.0)
  steps = [p['step'] for p in history]
  left = figure.add_subplot(1, 2, 1)
  left.plot(steps, [p['train_accuracy'] for p in history], label='train')
  validation = [p.get('validation_accuracy') for p in history]
  if any(v is not None for v in validation):
    left.plot(steps, [math.nan if v is None else v for v in validation],
              label='validation')
  left.set_xlabel('step')
  left.set_ylabel('accuracy')
  left.legend()
  right = figure.add_subplot(1, 2, 2)
  right.plot(steps, [p['cross_entropy'] for p in history])
  right.set_xlabel('step')
  right.set_ylabel('cross entropy (train)')
  return ['<h2>Training curve</h2>', f'<img src="'
          f'{html_lib.chart_uri(pyplot, figure)}" alt="training curve">']


def _settings(settings: dict) -> List[str]:
  if not settings:
    return []
  return ['<h2>Settings</h2>', _table(
      [[k, v] for k, v in sorted(settings.items())], ['setting', 'value'])]


def page(report: dict, rendered: dict, extra: dict) -> str:
  """The HTML text; rendered: {'heat': {file: data URI}, 'thumb': {file:
  data URI}}; extra: the optional figures (page_extra.sections)."""
  from retrain.report import page_extra
  out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
         f'<title>{_e(report.get("title", "Results"))}</title>',
         f'<style>{_CSS}</style></head><body>']
  out += _headline(report)
  out += _confusion(report)
  out += _per_class(report)
  out += _strangers(report)
  out += _photos(report, rendered['heat'])
  out += page_extra.sections(extra)
  out += _curve(report.get('history') or [])
  out += _cells(report, rendered['thumb'])
  out += _settings(report.get('settings') or {})
  out.append('</body></html>\n')
  return '\n'.join(out)
