"""Rules of the code's shape, checked on the source (no imports run):

- no module imports from a step later in the flow (docs/architecture.md);
- tools/ takes from retrain only the image decoding and the typed errors;
- bottleneck_cache/ imports neither TensorFlow nor retrain;
- no function is longer than MAX_FUNCTION_LINES;
- the flags offer the library's own lists of accepted values, and
  label_image's own defaults agree with retrain's.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The flow, first to last; a module may import from its own step and from
# earlier ones only. `retrain.version` counts as the first step; the package
# itself (`retrain/__init__.py`, whose `run` loads the pipeline lazily), the
# Python API and the closing summary come after the pipeline, with
# __main__.
LEVELS = (
    ('retrain.version', 'retrain.common', 'retrain.errors', 'retrain.images',
     'retrain.image_header'),
    ('retrain.data',),
    ('retrain.features',),
    # Running an export (label_image's loaders): the image decoding and the
    # module safety scan of what it loads.
    ('retrain.predict',),
    ('retrain.bottlenecks',),
    ('retrain.head',),
    ('retrain.report',),
    ('retrain.export',),
    ('retrain.finetune',),  # after the head, before the export it feeds
    ('retrain.config', 'retrain.pipeline', 'retrain.streamed',
     'retrain.multilabel'),
    # The health report (docs/inspect.md) uses the pipeline's steps.
    ('retrain.inspect',),
    ('retrain', 'retrain.__main__', 'retrain.api', 'retrain.summary',
     'retrain.beam', 'retrain.inspect.__main__', 'retrain.evaluate'),
)
# retrain.common.cli and .progress give both commands the same --help,
# --version and progress, and .walk the same loop-safe folder walk; they import absl, tqdm and retrain.version only
# (tests/test_first_hour.py checks that label_image loads no other retrain
# module). label_image --boxes reads VOC XML / CSV boxes as training does
# (retrain.data.boxes, imported only with --boxes); its loaders check a
# model with retrain.features.module_safety (imported when loading).
# label_image's loaders and classifying live in retrain.predict (which
# imports only the errors, and the image decoding when it classifies), so
# that retrain.evaluate runs exports the same way.
TOOLS_MAY_IMPORT = ('retrain.images', 'retrain.errors', 'retrain.version',
                    'retrain.predict',
                    'retrain.common.cli', 'retrain.common.progress',
                    'retrain.common.walk', 'retrain.common.runs',
                    'retrain.image_header',
                    'retrain.data.boxes', 'retrain.features.module_safety',
                    'retrain.common.strict_json', 'retrain.common.safe_text')
MAX_FUNCTION_LINES = 80


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


def _level(module: str) -> int:
  """The step of a retrain module: the longest prefix listed in LEVELS."""
  best, level = -1, None
  for i, names in enumerate(LEVELS):
    for name in names:
      if (module == name or module.startswith(name + '.')) and (
          len(name) > best):
        best, level = len(name), i
  assert level is not None, f'{module} is in no step of LEVELS'
  return level


def _imports(path: pathlib.Path):
  """(line, imported module) for every import in the file, nested ones too."""
  return _imports_of(path.read_text(encoding='utf-8'), _module_name(path),
                     path.name == '__init__.py')


def _imports_of(source: str, module: str, is_package: bool = False):
  """`from retrain.data import split` yields retrain.data.split; relative
  imports are resolved against the module's package."""
  package = module.split('.') if is_package else module.split('.')[:-1]
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      parts = package[:len(package) - node.level + 1] if node.level else []
      base = '.'.join(parts + ([node.module] if node.module else []))
      for alias in node.names:
        yield node.lineno, f'{base}.{alias.name}' if base else alias.name


def _python_files(*folders):
  for folder in folders:
    yield from sorted((ROOT / folder).rglob('*.py'))


def test_no_import_runs_back_up_the_flow():
  wrong = []
  for path in _python_files('retrain'):
    here = _level(_module_name(path))
    for line, name in _imports(path):
      if name.split('.')[0] != 'retrain':
        continue
      # `from retrain import images` names the module retrain.images.
      if _level(name) > here:
        wrong.append(f'{path.relative_to(ROOT)}:{line} imports {name}')
  assert not wrong, '\n'.join(wrong)


def test_the_import_check_sees_a_violation():
  """The rule above can fail: a data module importing the head is caught,
  in each way of writing the import."""
  source = ('from retrain.head import train\n'
            'import retrain.export.formats\n'
            'def f():\n  from ..report import writer\n'
            'from . import split\n')
  here = _level('retrain.data.x')
  found = [name for _, name in _imports_of(source, 'retrain.data.x')
           if _level(name) > here]
  assert found == ['retrain.head.train', 'retrain.export.formats',
                   'retrain.report.writer']


def test_tools_import_only_images_and_errors_from_retrain():
  wrong = []
  for path in _python_files('tools'):
    for line, name in _imports(path):
      if name.split('.')[0] == 'retrain' and not name.startswith(
          TOOLS_MAY_IMPORT):
        wrong.append(f'{path.relative_to(ROOT)}:{line} imports {name}')
  assert not wrong, '\n'.join(wrong)


def test_bottleneck_cache_imports_neither_tensorflow_nor_retrain():
  wrong = [f'{path.relative_to(ROOT)}:{line} imports {name}'
           for path in _python_files('bottleneck_cache')
           for line, name in _imports(path)
           if name.split('.')[0] in ('tensorflow', 'retrain')]
  assert not wrong, '\n'.join(wrong)


def _functions(path: pathlib.Path):
  tree = ast.parse(path.read_text(encoding='utf-8'))
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_80_lines():
  long = [f'{path.relative_to(ROOT)}:{line} {name}: {length} lines'
          for path in _python_files('retrain', 'tools', 'bottleneck_cache')
          for name, line, length in _functions(path)
          if length > MAX_FUNCTION_LINES]
  assert not long, '\n'.join(long)


def test_the_length_check_counts_a_whole_function(tmp_path):
  body = ''.join(f'  x{i} = {i}\n' for i in range(MAX_FUNCTION_LINES))
  path = tmp_path / 'long.py'
  path.write_text(f'def f():\n{body}')
  assert list(_functions(path)) == [('f', 1, MAX_FUNCTION_LINES + 1)]


@pytest.mark.parametrize('flag,values', [
    ('image_layout', 'LAYOUTS'),
    ('label_style', 'LABEL_STYLES'),
    ('bottleneck_runtime', 'BOTTLENECK_RUNTIMES'),
    ('bottleneck_precision', 'BOTTLENECK_PRECISIONS'),
    ('optimizer', 'OPTIMIZERS'),
    ('sampling', 'SAMPLINGS'),
    ('class_weighting', 'CLASS_WEIGHTINGS'),
    ('tflite_quantization', 'QUANTIZATIONS'),
])
def test_flags_offer_the_library_lists(flag, values):
  from retrain import __main__ as cli
  from retrain.common import names
  assert tuple(cli.FLAGS[flag].parser.enum_values) == getattr(names, values)


def test_label_image_defaults_agree_with_retrain():
  from retrain.common import names
  from retrain.config import DEFAULTS
  from tools import label_image
  assert label_image.DEFAULT_RUNS_DIR == DEFAULTS.output_dir
  assert DEFAULTS.saved_model_dir == f'{{run}}/{label_image.SAVED_MODEL_IN_RUN}'
  assert label_image.DEFAULT_INPUT_LAYER == names.INPUT_TENSOR_NAME
  assert label_image.DEFAULT_OUTPUT_LAYER == names.OUTPUT_TENSOR_NAME
  assert DEFAULTS.final_tensor_name == names.OUTPUT_TENSOR_NAME
  assert label_image.DEFAULT_CROP_MARGIN == DEFAULTS.crop_margin
  assert label_image.DEFAULT_MIN_BOX_SIZE == DEFAULTS.min_box_size
