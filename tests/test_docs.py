"""The docs cannot drift: every flag is on docs/flags.md, every link leads
somewhere, README stays short and keeps CI's test command, and CI lints
before it tests."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_COMMAND = 'pip install -e ".[test]" && python -m pytest -q tests'
COMMANDS = {
    'retrain': ['-m', 'retrain'],
    'label_image': ['tools/label_image.py'],
}


def own_flags(helpfull: str) -> set:
  """Flag names --helpfull lists under the command's own modules.

  absl's output is one block per module: a line `<module>:` at column 0,
  then `  --name: help` (or `  --[no]name: help`) lines. absl's built-in
  flags (absl.app, absl.logging, absl.flags) are not ours to document.
  """
  flags, ours = set(), False
  for line in helpfull.splitlines():
    if line.endswith(':') and not line.startswith(' '):
      ours = not line.startswith('absl.')
      continue
    match = re.match(r'\s+--(?:\[no\])?([A-Za-z0-9_]+):', line)
    if match and ours:
      flags.add(match.group(1))
  return flags


def test_own_flags_parses_absl_help():
  text = ('flags:\n\n/x/retrain/__main__.py:\n  --image_dir: Folder.\n'
          "    (default: '')\n  --[no]flip_left_right: Mirror.\n"
          'absl.app:\n  --[no]helpfull: show full help\n'
          'retrain.common.cli:\n  --[no]version: Print the version.\n')
  assert own_flags(text) == {'image_dir', 'flip_left_right', 'version'}


@pytest.mark.slow
@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_every_flag_is_in_docs_flags_md(command):
  proc = subprocess.run(
      [sys.executable, *COMMANDS[command], '--helpfull'], capture_output=True,
      text=True, cwd=ROOT, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL='2'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  flags = own_flags(proc.stdout)
  assert len(flags) > 10, proc.stdout[:2000]
  page = (ROOT / 'docs' / 'flags.md').read_text(encoding='utf-8')
  missing = sorted(f for f in flags
                   if not re.search(rf'--{f}(?![A-Za-z0-9_])', page))
  assert not missing, (
      f'docs/flags.md does not mention these flags of `{command}`: '
      f'{", ".join("--" + f for f in missing)}. Add a row for each to its '
      f'table in docs/flags.md (flag, default, meaning).')


def _markdown_files():
  return [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]


def test_relative_links_lead_to_files():
  broken = []
  for page in _markdown_files():
    text = page.read_text(encoding='utf-8')
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
      if re.match(r'[a-z]+://|#|mailto:', target):
        continue
      path = (page.parent / target.split('#')[0]).resolve()
      if not path.exists():
        broken.append(f'{page.relative_to(ROOT)} -> {target}')
  assert not broken, 'Broken links: ' + '; '.join(broken)


def test_readme_is_short_links_the_docs_and_keeps_the_test_command():
  readme = (ROOT / 'README.md').read_text(encoding='utf-8')
  assert len(readme.splitlines()) <= 160
  assert TEST_COMMAND in readme
  assert 'https://download.tensorflow.org/example_images/flower_photos.tgz' \
      in readme
  for page in ('data-and-layouts', 'modules-and-cache', 'augmentation',
               'training', 'exports-and-inference', 'reports-and-tensorboard',
               'flags', 'performance', 'architecture', 'contributing'):
    assert f'docs/{page}.md' in readme, page


def test_ci_lints_first_and_runs_the_readme_test_command():
  script = (ROOT / '.ci' / 'run').read_text(encoding='utf-8')
  lines = [line.strip() for line in script.splitlines()]
  assert 'ruff check .' in lines
  test_line = 'python -m pytest -q tests'
  assert test_line in lines and TEST_COMMAND.endswith(test_line)
  assert lines.index('ruff check .') < lines.index(test_line)
  # CI installs what it runs.
  assert any('pip install' in line and 'ruff' in line for line in lines)
  assert any('pip install' in line and '-e ".[test]"' in line
             for line in lines)
