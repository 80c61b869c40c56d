"""Rules of the code's shape, checked on the source (no imports run):

- no module imports from a level later in the flow (docs/architecture.md,
  "Import levels", which this file reads);
- no import circle, counting imports inside functions;
- tools/ takes from retrain only the image decoding and the typed errors;
- bottleneck_cache/ imports neither TensorFlow nor retrain;
- no function is longer than MAX_FUNCTION_LINES or takes more than
  MAX_PARAMETERS; no source file is longer than MAX_FILE_LINES;
- docs/architecture.md has a row for every module and its picture names
  every folder;
- the flags offer the library's own lists of accepted values, and
  label_image's own defaults agree with retrain's.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The flow, first to last: the numbered list under "Import levels" in
# docs/architecture.md (a module may import from its own step and from
# earlier ones only).
ARCHITECTURE = ROOT / 'docs' / 'architecture.md'


def _levels_of(text: str):
  """The levels listed in architecture.md's "Import levels" section: one
  tuple of module names per numbered line, in order."""
  section = text.split('\n## Import levels\n', 1)[1].split('\n## ', 1)[0]
  levels = []
  for line in section.splitlines():
    found = re.match(r'\d+\.\s+((?:`[\w.]+`(?:,\s*)?)+)', line)
    if found:
      levels.append(tuple(re.findall(r'`([\w.]+)`', found.group(1))))
  return tuple(levels)


LEVELS = _levels_of(ARCHITECTURE.read_text(encoding='utf-8'))

# retrain.common.cli and .progress give both commands the same --help,
# --version and progress, and .walk the same loop-safe folder walk; they import absl, tqdm and retrain.version only
# (tests/test_first_hour.py checks that label_image loads no other retrain
# module). label_image --boxes reads VOC XML / CSV boxes as training does
# (retrain.data.annotations, imported only with --boxes); its loaders check a
# model with retrain.features.module_safety (imported when loading).
# label_image's loaders and classifying live in retrain.predict (which
# imports the errors, the export's names from retrain.common.names, the one
# TFLite runner retrain.features.tflite_runner, and the image decoding when
# it classifies), so that retrain.evaluate runs exports the same way.
# retrain.common.names (no imports) holds the export's contract and the
# defaults label_image shares with retrain's settings.
TOOLS_MAY_IMPORT = ('retrain.images', 'retrain.errors', 'retrain.version',
                    'retrain.predict', 'retrain.common.names',
                    'retrain.common.cli', 'retrain.common.progress',
                    'retrain.common.walk', 'retrain.common.runs',
                    'retrain.image_header',
                    'retrain.data.annotations', 'retrain.features.module_safety',
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


# Caps on a function's parameters (self and cls not counted, *args and
# **kwargs neither) and on a source file's lines, in retrain/, tools/ and
# bottleneck_cache/.
MAX_PARAMETERS = 8
MAX_FILE_LINES = 550


def _parameter_counts(path: pathlib.Path):
  """(name, line, parameters) of every function, self/cls not counted."""
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      args = node.args.posonlyargs + node.args.args
      count = len(args) + len(node.args.kwonlyargs)
      if args and args[0].arg in ('self', 'cls'):
        count -= 1
      yield node.name, node.lineno, count


def _over_cap(figures: dict, cap: int, what: str):
  """Lines saying what is over `cap`."""
  return [f'{key}: {n} {what} (at most {cap})'
          for key, n in sorted(figures.items()) if n > cap]


def test_no_function_takes_more_than_8_parameters():
  figures = {}
  for path in _python_files('retrain', 'tools', 'bottleneck_cache'):
    for name, _, count in _parameter_counts(path):
      key = f'{path.relative_to(ROOT)}:{name}'
      figures[key] = max(count, figures.get(key, 0))
  wrong = _over_cap(figures, MAX_PARAMETERS, 'parameters')
  assert not wrong, '\n'.join(wrong)


def test_the_parameter_check_counts_keywords_not_self(tmp_path):
  path = tmp_path / 'wide.py'
  path.write_text('class A:\n  def m(self, a, b, *c, d=1, **e):\n    pass\n'
                  'def f(a, /, b, *, c):\n  pass\n')
  assert sorted(_parameter_counts(path)) == [('f', 4, 3), ('m', 2, 3)]
  assert _over_cap({'x:f': 9, 'x:g': 8, 'x:h': 10}, 8, 'p') == [
      'x:f: 9 p (at most 8)', 'x:h: 10 p (at most 8)']


def test_no_source_file_is_longer_than_550_lines():
  figures = {str(path.relative_to(ROOT)): len(
      path.read_text(encoding='utf-8').splitlines())
              for path in _python_files('retrain', 'tools', 'bottleneck_cache')}
  wrong = _over_cap(figures, MAX_FILE_LINES, 'lines')
  assert not wrong, '\n'.join(wrong)


def _import_graph(*folders):
  """{module: modules of the project it imports, nested imports too}."""
  paths = {_module_name(path): path for path in _python_files(*folders)}
  graph = {}
  for module, path in paths.items():
    graph[module] = set()
    for _, name in _imports(path):
      parts = name.split('.')
      while parts and '.'.join(parts) not in paths:
        parts.pop()  # `from a.b import f` imports module a.b
      if parts and '.'.join(parts) != module:
        graph[module].add('.'.join(parts))
  return graph


def _cycles(graph: dict):
  """The import circles: each strongly connected group of two or more
  modules, sorted (Tarjan's algorithm, without recursion)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []
  for root in sorted(graph):
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = len(index)
    stack.append(root)
    on_stack.add(root)
    while work:
      node, edges = work[-1]
      for target in edges:
        if target not in index:
          index[target] = low[target] = len(index)
          stack.append(target)
          on_stack.add(target)
          work.append((target, iter(sorted(graph.get(target, ())))))
          break
        if target in on_stack:
          low[node] = min(low[node], index[target])
      else:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
          group = []
          while True:
            member = stack.pop()
            on_stack.discard(member)
            group.append(member)
            if member == node:
              break
          if len(group) > 1:
            found.append(tuple(sorted(group)))
  return sorted(found)


def test_no_import_circle_counting_imports_inside_functions():
  found = set(_cycles(_import_graph('retrain', 'tools', 'bottleneck_cache')))
  wrong = [' <-> '.join(c) for c in sorted(found)]
  assert not wrong, '\n'.join(wrong)


def _documented(path: pathlib.Path) -> bool:
  """Whether a module needs its row: every file but a package's
  __init__.py that holds only its docstring."""
  body = ast.parse(path.read_text(encoding='utf-8')).body
  if body and isinstance(body[0], ast.Expr) and isinstance(
      body[0].value, ast.Constant):
    body = body[1:]
  return path.name != '__init__.py' or bool(body)


def test_architecture_md_has_a_row_for_every_module():
  text = ARCHITECTURE.read_text(encoding='utf-8')
  table = text.split('\n## One line per file\n', 1)[1].split('\n## ', 1)[0]
  rows = set(re.findall(r'^\| `([\w/.]+)` \|', table, re.MULTILINE))
  missing = [str(path.relative_to(ROOT))
             for path in _python_files('retrain', 'tools', 'bottleneck_cache')
             if _documented(path) and str(path.relative_to(ROOT)) not in rows]
  assert not missing, ('docs/architecture.md, "One line per file", lacks a '
                       'row for:\n' + '\n'.join(missing))
  gone = sorted(row for row in rows if not (ROOT / row).exists())
  assert not gone, f'docs/architecture.md has rows for no file: {gone}'


def test_architecture_md_picture_names_every_folder():
  picture = ARCHITECTURE.read_text(encoding='utf-8').split('```')[1]
  folders = sorted({str(path.parent.relative_to(ROOT)) + '/'
                    for path in _python_files('retrain', 'tools',
                                              'bottleneck_cache')
                    if path.parent != ROOT / 'retrain'})
  missing = [folder for folder in folders if folder not in picture]
  assert not missing, f'docs/architecture.md\'s picture lacks {missing}'


def test_the_circle_check_sees_a_circle():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a', 'd'}, 'd': set(), 'e': {'e'},
           'f': {'g'}, 'g': {'f'}}
  assert _cycles(graph) == [('a', 'b', 'c'), ('f', 'g')]


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
  """label_image's defaults for the runs folder and box crops are retrain's:
  both take them from retrain.common.names (settings.toml names them)."""
  import importlib
  import inspect

  from retrain.common import names
  from retrain.config import DEFAULTS
  from tools import label_image
  assert DEFAULTS.outputs.output_dir == names.RUNS_DIR
  assert DEFAULTS.outputs.saved_model_dir == f'{{run}}/{names.SAVED_MODEL_IN_RUN}'
  assert DEFAULTS.outputs.final_tensor_name == names.OUTPUT_TENSOR_NAME
  assert DEFAULTS.crop.crop_margin == names.CROP_MARGIN
  assert DEFAULTS.crop.min_box_size == names.MIN_BOX_SIZE
  source = inspect.getsource(importlib.import_module(label_image.run.__module__))
  for name in ('RUNS_DIR', 'SAVED_MODEL_IN_RUN', 'CROP_MARGIN', 'MIN_BOX_SIZE'):
    assert f'names.{name}' in source, name
