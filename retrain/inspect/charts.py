"""Charts of the report as PNG data: URIs, drawn by matplotlib (Agg, so no
display is needed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from retrain.common import html as html_lib

_figure = html_lib.chart_figure
_to_uri = html_lib.chart_uri


def class_counts_chart(labels: Sequence[str], counts: np.ndarray) -> str:
  """Stacked bars: per class (x), examples in train, validation, test.

  counts: int [num_classes, 3].
  """
  pyplot, figure = _figure(max(6.0, 0.5 * len(labels) + 3), 3.4)
  axes = figure.add_subplot(1, 1, 1)
  x = np.arange(len(labels))
  bottom = np.zeros(len(labels))
  for k, (name, colour) in enumerate((('train', '#4878cf'),
                                      ('validation', '#6acc65'),
                                      ('test', '#d65f5f'))):
    axes.bar(x, counts[:, k], bottom=bottom, label=name, color=colour)
    bottom += counts[:, k]
  axes.set_xticks(x)
  # Plain text: '$' would start matplotlib's math mode, and a class named
  # '$\\foo$ math' made the whole report fail.
  axes.set_xticklabels([str(label).replace('$', r'\$') for label in labels],
                       rotation=45 if len(labels) > 6 else 0,
                       ha='right' if len(labels) > 6 else 'center')
  axes.set_ylabel('examples')
  axes.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0))
  return _to_uri(pyplot, figure)


def histogram_chart(values: Sequence[float], title: str, xlabel: str,
                    log: bool = False) -> str:
  """A histogram of values (log-spaced bins with log=True)."""
  pyplot, figure = _figure(4.2, 3.0)
  axes = figure.add_subplot(1, 1, 1)
  values = np.asarray(values, np.float64)
  if len(values):
    bins = 30
    if log and values.min() > 0 and values.max() > values.min():
      bins = np.geomspace(values.min(), values.max(), 31)
      axes.set_xscale('log')
    axes.hist(values, bins=bins, color='#4878cf')
  axes.set_title(title)
  axes.set_xlabel(xlabel)
  axes.set_ylabel('images')
  return _to_uri(pyplot, figure)
