"""The optional sections of report.html, drawn from
<report_dir>/extra_figures.json when a step leaves one (keys listed in
docs/results-page.md):

  "reliability": {"bins": [{"confidence": c, "accuracy": a, "count": n},
                  ...], "ece": e, "set": "validation", "note": "..."}
      the reliability diagram: per bin of top probability, the mean top
      probability c and the accuracy a in [0, 1] of its n photos;
  "novelty": {"figures": {"name": value, ...}, "histogram": {"edges":
              [k + 1 scores], "known": [k counts], "unknown": [k counts],
              "threshold": t, "score": "name"}, "note": "..."}
      the unknown / novelty figures: a table of the figures and the
      histogram of novelty scores of known and unknown photos.

Every part is optional; a section appears when its key does. A section
whose data does not have this shape is left out with a warning, never a
broken page.
"""

from __future__ import annotations

from typing import List

import numpy as np
from absl import logging

from retrain.common import html as html_lib

_e = html_lib.escape


def _note(section: dict) -> List[str]:
  return [f'<p>{_e(section["note"])}</p>'] if section.get('note') else []


def _reliability(section: dict) -> List[str]:
  bins = section['bins']
  conf = np.array([float(b['confidence']) for b in bins])
  acc = np.array([float(b['accuracy']) for b in bins])
  count = np.array([int(b['count']) for b in bins])
  pyplot, figure = html_lib.chart_figure(4.2, 4.0)
  axes = figure.add_subplot(1, 1, 1)
  axes.plot([0, 1], [0, 1], color='#999', linestyle='--', label='perfect')
  axes.scatter(conf, acc, s=20 + 200 * count / max(1, count.max()),
               color='#4878cf', label='bins (area: photos)')
  axes.plot(conf, acc, color='#4878cf')
  axes.set_xlim(0, 1)
  axes.set_ylim(0, 1)
  axes.set_xlabel('mean top probability')
  axes.set_ylabel('accuracy')
  axes.legend(loc='upper left')
  title = 'Reliability diagram'
  if section.get('set'):
    title += f' ({section["set"]} set)'
  out = [f'<h2>{_e(title)}</h2>'] + _note(section)
  if section.get('ece') is not None:
    out.append(f'<p>Expected calibration error: '
               f'{100 * float(section["ece"]):.2f} points.</p>')
  return out + [f'<img src="{html_lib.chart_uri(pyplot, figure)}" '
                'alt="reliability diagram">']


def _novelty(section: dict) -> List[str]:
  out = ['<h2>Unknown photos (novelty)</h2>'] + _note(section)
  figures = section.get('figures') or {}
  if figures:
    out.append(html_lib.table([[k, v] for k, v in figures.items()],
                              ['figure', 'value']))
  histogram = section.get('histogram')
  if histogram:
    edges = np.array(histogram['edges'], np.float64)
    pyplot, figure = html_lib.chart_figure(6.0, 3.0)
    axes = figure.add_subplot(1, 1, 1)
    for key, colour in (('known', '#4878cf'), ('unknown', '#d65f5f')):
      if key in histogram:
        counts = np.array(histogram[key], np.float64)
        axes.stairs(counts, edges, label=key, color=colour, fill=True,
                    alpha=0.5)
    if histogram.get('threshold') is not None:
      axes.axvline(float(histogram['threshold']), color='#222',
                   linestyle='--', label='threshold')
    axes.set_xlabel(str(histogram.get('score', 'novelty score')))
    axes.set_ylabel('photos')
    axes.legend()
    out.append(f'<img src="{html_lib.chart_uri(pyplot, figure)}" '
               'alt="novelty scores">')
  return out


_SECTIONS = (('reliability', _reliability), ('novelty', _novelty))


def sections(extra: dict) -> List[str]:
  """The HTML of each optional section `extra` has, in a fixed order."""
  out = []
  for key, draw in _SECTIONS:
    if not extra.get(key):
      continue
    try:
      out += draw(extra[key])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
      logging.warning('Leaving the %r section out of the results page: its '
                      'data in extra_figures.json is not as '
                      'docs/results-page.md describes (%s: %s).', key,
                      type(e).__name__, e)
  return out
