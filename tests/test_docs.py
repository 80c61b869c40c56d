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


# --- Figures that can drift: the docs state the defaults as the code has them


def _doc(name):
  return (ROOT / 'docs' / name).read_text(encoding='utf-8')


def test_docs_state_the_default_module_and_its_input_size():
  from retrain.config import DEFAULTS
  from retrain.features import ensemble_presets, presets
  members = ensemble_presets.DEFAULT_ENSEMBLE.replace('+', ' efficientnet_')
  sizes = [presets.preset_input_size(name) for name in members.split()]
  assert DEFAULTS.module.tfhub_module == ensemble_presets.DEFAULT_ENSEMBLE
  size = max(sizes)
  assert (f'{size} x {size} for the default `{DEFAULTS.module.tfhub_module}`'
          in ' '.join(_doc('exports-and-inference.md').split()))
  flags_md = _doc('flags.md')
  assert f'| `--tfhub_module` | `{DEFAULTS.module.tfhub_module}` |' in flags_md


def test_the_keras_snippets_take_the_default_input_size():
  """docs/deploy.md's Keras snippets build the model's input at the
  default export's size (a wrong size crashes on the default export)."""
  import re as re_lib

  from retrain.features import ensemble_presets, presets
  members = ensemble_presets.DEFAULT_ENSEMBLE.replace(
      '+', ' efficientnet_').split()
  size = max(presets.preset_input_size(name) for name in members)
  shapes = re_lib.findall(r'Input\(\((\d+), (\d+), 3\)',
                          _doc('deploy.md'))
  assert shapes, 'no Keras Input in docs/deploy.md'
  assert set(shapes) == {(str(size), str(size))}


def test_the_readme_classifies_photos_it_did_not_train_on():
  """README's first example moves photos out of the training folder before
  training and classifies those, not the training photos."""
  readme = (ROOT / 'README.md').read_text()
  block = readme[readme.index('mkdir held_out'):]
  block = block[:block.index('```')]
  train = block.index('python -m retrain --image_dir flower_photos')
  assert block.index('mv ') < train  # set aside before training
  assert 'label_image --image held_out/' in block[train:]
  assert 'label_image --image flower_photos' not in readme


def test_docs_state_the_default_export_size_roughly():
  """The SavedModel holds its modules' weights: the docs' figure is their
  size, read from the converted modules (skipped when they are absent)."""
  import re as re_lib

  from retrain.features import ensemble_presets, presets
  cache = os.path.expanduser(os.environ.get('RETRAIN_MODULE_CACHE') or
                             presets.DEFAULT_MODULE_CACHE)
  members = ensemble_presets.DEFAULT_ENSEMBLE.replace(
      '+', ' efficientnet_').split()
  weights = [pathlib.Path(cache, f'{m}-v1', 'variables') for m in members]
  if not all(w.is_dir() for w in weights):
    pytest.skip(f'the bundled modules are not converted in {cache}')
  total = sum(f.stat().st_size for w in weights for f in w.iterdir())
  stated = re_lib.search(r"default ensemble's SavedModel is about (\d+) MB",
                         ' '.join(_doc('exports-and-inference.md').split()))
  assert stated, 'exports-and-inference.md no longer states the size'
  assert abs(int(stated.group(1)) - total / 1e6) <= 0.1 * total / 1e6


STALE = re.compile(r'/tmp/(retrain_saved_model|retrain_logs|bottleneck|'
                   r'retrain_report|intermediate_graph)\b(?!_)')
HISTORY = re.compile(r'(?<!apache/beam )\b[Ii]ssue \d+|\bengineers?\b|'
                     r'this session|\b20\d\d-[01]\d-[0-3]\d\b|/work/|/home/')


def test_docs_hold_no_old_default_paths_and_no_history():
  found = []
  for page in _markdown_files():
    for number, line in enumerate(page.read_text(encoding='utf-8')
                                  .splitlines(), 1):
      where = f'{page.relative_to(ROOT)}:{number}: {line.strip()}'
      if STALE.search(line) or HISTORY.search(line):
        found.append(where)
  assert not found, '\n'.join(found)


def _documented_tensorboard_tags(labels):
  text = _doc('reports-and-tensorboard.md')
  table = text.split('<!-- tensorboard-tags')[1].split('<!-- end of')[0]
  tags = {}
  for row in table.splitlines():
    cells = row.split('|')
    if len(cells) < 3 or not cells[1].strip().startswith('`'):
      continue
    run = cells[1].strip().strip('`')
    names = re.findall(r'`([^`]+)`', cells[2])
    tags[run] = {t for name in names for t in (
        [name.replace('<label>', label) for label in labels]
        if '<label>' in name else [name]) if not name.startswith('--')}
  return tags


@pytest.mark.slow
def test_tensorboard_shows_what_the_docs_say(tmp_path, fake_module):
  from tensorboard.backend.event_processing import event_accumulator

  from retrain import pipeline
  from tests.conftest import make_colour_dataset, shrunk_config
  images = make_colour_dataset(tmp_path / 'images', per_class=20)
  config = shrunk_config(images, tmp_path / 'out', fake_module,
                         projector_max_images=30)
  # The default solver: no retrain.py training setting changed.
  from retrain.config import DEFAULTS
  config = config.replace(calibration_min_images=5,
      how_many_training_steps=DEFAULTS.head.how_many_training_steps,
      learning_rate=DEFAULTS.head.learning_rate,
      eval_step_interval=DEFAULTS.head.eval_step_interval)
  result = pipeline.run(config)
  documented = _documented_tensorboard_tags(result.labels)
  logs = pathlib.Path(config.outputs.summaries_dir)
  assert sorted(p.name for p in logs.iterdir()) == sorted(documented)
  for run, tags in documented.items():
    if run == 'projector':
      continue
    acc = event_accumulator.EventAccumulator(str(logs / run))
    acc.Reload()
    assert set(acc.Tags()['tensors']) == tags, run


def test_flags_md_tables_are_made_from_the_declarations():
  from retrain import command_line
  page = (ROOT / 'docs' / 'flags.md').read_text(encoding='utf-8')
  assert command_line.with_flags_tables(page) == page, (
      'docs/flags.md\'s tables differ from retrain/config/\'s declarations: '
      'run python -c "from retrain import command_line; '
      'command_line.write_flags_page(\'docs/flags.md\')"')
