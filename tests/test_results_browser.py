"""report.html in a real browser (headless Chromium, when installed):
every picture decodes, the confusion matrix's links reach their sections,
and the page draws the coloured cells and the heat maps."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.test_results_page import _Explainer, _write

BROWSER = next((shutil.which(name) for name in (
    'chromium', 'chromium-browser', 'google-chrome', 'chrome')
                if shutil.which(name)), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BROWSER is None, reason='no Chromium installed (apt-'
                       'get install chromium) to render report.html in'),
]
# Counts what the browser made of the page; added to a copy only (the page
# itself has no script).
_PROBE = """<script>
const broken = [...document.images].filter(
    i => !i.complete || i.naturalWidth === 0).length;
const links = [...document.querySelectorAll('a[href^="#"]')];
const lost = links.filter(
    a => !document.getElementById(a.getAttribute('href').slice(1))).length;
document.title = `images=${document.images.length} broken=${broken} ` +
                 `links=${links.length} lost=${lost}`;
</script>"""


def _browser(*args, timeout=240):
  return subprocess.run(
      [BROWSER, '--headless', '--no-sandbox', '--disable-gpu',
       '--hide-scrollbars', '--virtual-time-budget=5000', *args],
      capture_output=True, text=True, timeout=timeout)


def test_the_page_renders_whole_in_chromium(tmp_path):
  _, written, text = _write(tmp_path, explainer=_Explainer())
  probed = tmp_path / 'probed.html'
  probed.write_text(text.replace('</body>', _PROBE + '</body>'),
                    encoding='utf-8')
  dom = _browser('--dump-dom', probed.as_uri())
  assert dom.returncode == 0, dom.stderr[-2000:]
  title = re.search(r'<title>(.*?)</title>', dom.stdout).group(1)
  counts = dict(pair.split('=') for pair in title.split())
  assert int(counts['images']) >= 15 and counts['broken'] == '0', title
  assert int(counts['links']) == 6 and counts['lost'] == '0', title

  shot = tmp_path / 'shot.png'
  proc = _browser(f'--screenshot={shot}', '--window-size=1000,1400',
                  f'file://{written[0]}')
  assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
  from PIL import Image
  with Image.open(shot) as picture:
    pixels = np.asarray(picture.convert('RGB')).reshape(-1, 3).astype(int)
  r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
  # The matrix's green diagonal and red mistakes, drawn.
  assert np.sum((g > 130) & (r < 140) & (b < 140)) > 200
  assert np.sum((r > 180) & (g < 120) & (b < 120)) > 200
