"""report.html: one self-contained page (CSS inline, every image a data:
URI, no script, nothing fetched), built from the report dict."""

from __future__ import annotations

from typing import Callable, List

from retrain.common import html as html_lib

_CSS = html_lib.CSS
# Entries listed on the page per section; report.json has all.
MAX_LISTED = 50


_e = html_lib.escape


def _figure(entry: dict, thumb: Callable[[dict], str], note: str = '') -> str:
  uri = thumb(entry)
  image = (f'<img src="{uri}" alt="{_e(entry["rel_path"])}">' if uri
           else '<div>(no preview)</div>')
  return (f'<figure>{image}<figcaption>{_e(entry["rel_path"])}<br>'
          f'<b>{_e(entry["label"])}</b> · {_e(entry["set"])}'
          f'{"<br>" + _e(note) if note else ""}</figcaption></figure>')


def _more(count: int) -> str:
  return (f'<p>… and {count - MAX_LISTED} more, in report.json.</p>'
          if count > MAX_LISTED else '')


_none = html_lib.none


_GROUPS = (('across_sets', 'Across train / validation / test (leakage: the '
            'evaluation scores images training has seen)'),
           ('across_classes', 'Across classes (conflicting labels)'),
           ('within_class', 'Within a class'))


def _exact(report: dict, thumb) -> List[str]:
  out = ['<h2>Exact duplicates (identical bytes)</h2>']
  for kind, title in _GROUPS:
    groups = report['exact_duplicates'][kind]
    out.append(f'<h3>{_e(title)}: {len(groups)}</h3>')
    if not groups:
      out.append(_none())
    out.append('<div class="row">')
    for group in groups[:MAX_LISTED]:
      out.append('<div class="pair">' + ''.join(
          _figure(entry, thumb) for entry in group) + '</div>')
    out.append('</div>' + _more(len(groups)))
  return out


def _near(report: dict, thumb) -> List[str]:
  near = report['near_duplicates']
  out = [f'<h2>Near-duplicates (cosine similarity of the feature vectors '
         f'above {near["threshold"]})</h2>']
  for kind, title in _GROUPS:
    pairs = near[kind]
    out.append(f'<h3>{_e(title)}: {len(pairs)}</h3>')
    if not pairs:
      out.append(_none())
    out.append('<div class="row">')
    for pair in pairs[:MAX_LISTED]:
      out.append('<div class="pair">' + _figure(pair['a'], thumb) +
                 _figure(pair['b'], thumb, f'cosine {pair["cosine"]:.3f}') +
                 '</div>')
    out.append('</div>' + _more(len(pairs)))
  return out


_table = html_lib.table


def _classes_and_images(report: dict, chart: dict) -> List[str]:
  images = report['images']
  out = []
  out.append('<h2>Classes</h2>')
  out.append(f'<img src="{chart["class_counts"]}" alt="class counts">')
  out.append(_table([[c['label'], c['train'], c['validation'], c['test'],
                      c['total']] for c in report['classes']],
                    ['class', 'train', 'validation', 'test', 'total']))
  imbalance = report['imbalance']
  ratio = imbalance['ratio']
  out.append(f'<p>Imbalance ratio (largest / smallest class): '
             f'{"∞" if ratio is None else f"{ratio:.2f}"}</p>')
  if imbalance['warning']:
    out.append(f'<div class="warn">{_e(imbalance["warning"])}</div>')

  out.append('<h2>Images</h2><div class="row">')
  for name in ('widths', 'heights', 'aspect'):
    out.append(f'<img src="{chart[name]}" alt="{name}">')
  up = images['upscaled']
  out.append('</div>')
  out.append(_table(
      [['colour modes', ', '.join(f'{k}: {v}' for k, v in
                                  sorted(images['modes'].items()))],
       ['formats', ', '.join(f'{k}: {v}' for k, v in
                             sorted(images['formats'].items()))],
       ['EXIF-rotated files', len(images['exif_rotated'])],
       ['upscaled to the input size',
        f'{up["count"]} ({100 * up["fraction"]:.1f}%)' + (
            f', median ×{up["median_factor"]:.2f}, max '
            f'×{up["max_factor"]:.2f}' if up['count'] else '')]],
      ['', '']))
  if images['exif_rotated']:
    out.append('<p>EXIF-rotated (turned upright when decoded): ' + ', '.join(
        _e(p) for p in images['exif_rotated'][:MAX_LISTED]) + '</p>')

  return out


def page(report: dict, rendered: dict) -> str:
  """The HTML text of the report."""
  thumb, chart = rendered['thumb'], rendered['charts']
  data, images = report['data'], report['images']
  out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
         '<title>Dataset health report</title>',
         f'<style>{_CSS}</style></head><body>',
         '<h1>Dataset health report</h1>',
         f'<p>{_e(data["description"])}<br>{data["usable_examples"]} usable '
         f'examples of {data["examples"]} from {data["files"]} files, '
         f'{len(data["labels"])} classes; module {_e(data["module"])} '
         f'(input {images["input_size"][0]}x{images["input_size"][1]}).</p>']

  out.extend(_classes_and_images(report, chart))

  out.append(f'<h2>Unreadable files: {len(report["unreadable"])}</h2>')
  out.append(_table([[u['path'], u['reason']] for u in report['unreadable']],
                    ['file', 'reason']) if report['unreadable']
             else _none())
  if report['skipped']:
    out.append(f'<h3>Not used (boxes or listed files): '
               f'{len(report["skipped"])}</h3>')
    out.append(_table([[s['path'], s['reason']] for s in
                       report['skipped'][:MAX_LISTED]], ['file', 'reason']))
    out.append(_more(len(report['skipped'])))

  out.extend(_exact(report, thumb))
  out.extend(_near(report, thumb))

  errors = report['label_errors']
  out.append(f'<h2>Suspected label errors: {len(errors["suspects"])}</h2>')
  out.append(f'<p>A linear head trained {errors["folds"]}-fold on the feature '
             'vectors predicts each image without having seen it (out-of-fold '
             f'accuracy {100 * errors["out_of_fold_accuracy"]:.1f}%). Listed: '
             f'images whose label gets less than {errors["given_below"]} '
             f'while another class gets more than {errors["other_above"]}, '
             'most confident first.</p>')
  if not errors['suspects']:
    out.append(_none())
  out.append('<div class="row">' + ''.join(
      _figure(s, thumb, f'{s["label"]} {s["given_probability"]:.2f} → '
              f'{s["predicted"]} {s["predicted_probability"]:.2f}')
      for s in errors['suspects'][:MAX_LISTED]) + '</div>')
  out.append(_more(len(errors['suspects'])))

  far = report['outliers']['images']
  out.append(f'<h2>Outliers: {len(far)}</h2><p>Images far from every class '
             'centre (more than '
             f'{report["outliers"]["mad_limit"]} robust standard deviations '
             'above the median distance).</p>')
  if not far:
    out.append(_none())
  out.append('<div class="row">' + ''.join(
      _figure(o, thumb, f'z = {o["robust_z"]:.1f}') for o in far[:MAX_LISTED])
             + '</div>' + _more(len(far)))

  out.append('<h2>Contact sheets</h2>')
  for label, sheet in rendered['sheets'].items():
    out.append(f'<h3>{_e(label)}</h3><div class="row sheet">')
    for name, uri in sheet:
      out.append(f'<figure><img src="{uri}" alt="{_e(name)}"><figcaption>'
                 f'{_e(name)}</figcaption></figure>' if uri else '')
    out.append('</div>')
  timings = ', '.join(f'{k} {v:.1f} s' for k, v in
                      report.get('timings_seconds', {}).items())
  out.append(f'<p style="color:#777">Timings: {_e(timings)}</p>')
  out.append('</body></html>\n')
  return '\n'.join(out)
