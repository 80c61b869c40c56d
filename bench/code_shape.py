"""The shape of the code, counted from the source (nothing is imported).

  python bench/code_shape.py [ROOT]

ROOT defaults to this checkout. Prints: Python files and lines per folder;
the longest functions; functions over MAX_PARAMETERS parameters (self and
cls not counted, *args and **kwargs neither); files over MAX_FILE_LINES
lines; settings declared (flags.DEFINE_* calls, the tables of
retrain/config/settings.toml, fields of the *Options records); `pylint: disable` and
`noqa` comments, ticket references and comments naming files that do not
exist; import circles (imports inside functions counted); modules imported
under more than one name; and the copies of each formula of the head: the
functions whose source matches the formula's pattern (FORMULAS, stated in
the output). The code counted is retrain/, tools/ and bottleneck_cache/.
"""

import ast
import collections
import io
import pathlib
import re
import sys
import tokenize
import tomllib

CODE = ('retrain', 'tools', 'bottleneck_cache')
FOLDERS = CODE + ('tests', 'bench')
MAX_PARAMETERS = 8
MAX_FILE_LINES = 550
MAX_FUNCTION_LINES = 80
LONGEST = 10
# A formula written out, as a regular expression over one source line.
FORMULAS = {
    'softmax': r'\b(\w+)\s*/\s*\1\.sum\(',  # e / e.sum(...)
    'cross-entropy': (r'np\.log\(np\.exp\(\w+\)\.sum|softmax_cross_entropy'
                      r'|np\.log\(clipped\)|np\.logaddexp\(0'),
    'accuracy': (r'(?:argmax\([^()]*\)|\bpred\w*)(?:\[[^]]*\])?\s*=='
                 r'|==\s*(?:\w+\.)*(?:argmax\(|pred\w*)'),
    'k of n evenly spread': r'linspace\(0,\s*[^,]*-\s*1,',
}
TICKET = re.compile(r'\b[Ii]ssue\s*#?\d+|\bh\d\d\b|\bround (?:one|two|three)\b')
# An upstream project's ticket (`apache/beam issue 30616`) is no history.
UPSTREAM = re.compile(r'[\w.-]+/[\w.-]+ [Ii]ssue\s*#?\d+')
FENCE = re.compile(r'#\s*---\s*(?:[Ii]ssue|End of)\b')
FILE_NAMED = re.compile(r'\b(?:retrain|tools|bench|tests|bottleneck_cache)/[\w/]*\.py\b')


def python_files(root, folders=CODE):
  for folder in folders:
    yield from sorted((root / folder).rglob('*.py'))


def module_name(root, path):
  parts = list(path.relative_to(root).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


def functions(tree):
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def parameters(node):
  args = node.args.posonlyargs + node.args.args
  count = len(args) + len(node.args.kwonlyargs)
  return count - 1 if args and args[0].arg in ('self', 'cls') else count


def comments(source):
  """(line, text) of every comment."""
  try:
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
      if token.type == tokenize.COMMENT:
        yield token.start[0], token.string
  except (tokenize.TokenError, SyntaxError):
    return


def _from_base(package, node):
  """The module a `from ... import` names, relative levels resolved."""
  parts = package[:len(package) - node.level + 1] if node.level else []
  return '.'.join(parts + ([node.module] if node.module else []))


def imports(root, path, tree):
  """(imported name, local name) of every import, nested ones too."""
  module = module_name(root, path)
  package = module.split('.') if path.name == '__init__.py' else module.split('.')[:-1]
  nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
  for node in nodes:
    base = _from_base(package, node) if isinstance(node, ast.ImportFrom) else ''
    for alias in node.names:
      name = f'{base}.{alias.name}' if base else alias.name
      yield name, alias.asname or (alias.name if base else None)


def reachable(graph, start):
  """Every module `start` imports, directly or not."""
  seen, todo = set(), list(graph.get(start, ()))
  while todo:
    module = todo.pop()
    if module not in seen:
      seen.add(module)
      todo.extend(graph.get(module, ()))
  return seen


def cycles(graph):
  """Groups of two or more modules that each import all the others,
  directly or not (the circles)."""
  reach = {module: reachable(graph, module) for module in graph}
  groups = {tuple(sorted({module} | {other for other in reach[module]
                                     if module in reach.get(other, ())}))
            for module in graph}
  return sorted(list(group) for group in groups if len(group) > 1)


def class_fields(tree):
  """{class name: annotated fields} of the classes at the top of a module."""
  return {node.name: sum(isinstance(s, ast.AnnAssign) for s in node.body)
          for node in tree.body if isinstance(node, ast.ClassDef)}


def main(argv):
  root = pathlib.Path(argv[1] if len(argv) > 1 else
                      pathlib.Path(__file__).resolve().parent.parent).resolve()
  parsed = {path: (path.read_text(encoding='utf-8'), None)
            for path in python_files(root, FOLDERS)}
  parsed = {path: (source, ast.parse(source)) for path, (source, _) in parsed.items()}
  code = [path for path in parsed if path.relative_to(root).parts[0] in CODE]
  rel = lambda path: str(path.relative_to(root))  # noqa: E731

  print(f'code shape of {root.name} (counted: {", ".join(CODE)}; '
        'files and lines also for tests, bench)')
  print('\n# files and lines')
  for folder in FOLDERS:
    files = [p for p in parsed if p.relative_to(root).parts[0] == folder]
    lines = sum(len(parsed[p][0].splitlines()) for p in files)
    print(f'  {folder + "/":<18} {len(files):4d} files {lines:7d} lines')
  total = sum(len(parsed[p][0].splitlines()) for p in code)
  print(f'  {"code total":<18} {len(code):4d} files {total:7d} lines')

  rows = [(node.end_lineno - node.lineno + 1, parameters(node),
           f'{rel(path)}:{node.lineno} {node.name}')
          for path in code for node in functions(parsed[path][1])]
  print(f'\n# longest functions (cap {MAX_FUNCTION_LINES} lines)')
  for length, _, where in sorted(rows, key=lambda r: (-r[0], r[2]))[:LONGEST]:
    print(f'  {length:4d} lines  {where}')
  near = sum(70 <= r[0] <= MAX_FUNCTION_LINES for r in rows)
  print(f'  functions of 70-{MAX_FUNCTION_LINES} lines: {near}; over '
        f'{MAX_FUNCTION_LINES}: {sum(r[0] > MAX_FUNCTION_LINES for r in rows)}')

  wide = sorted((r for r in rows if r[1] > MAX_PARAMETERS), key=lambda r: (-r[1], r[2]))
  print(f'\n# functions over {MAX_PARAMETERS} parameters: {len(wide)} '
        f'(8 or more: {sum(r[1] >= 8 for r in rows)})')
  for _, count, where in wide:
    print(f'  {count:4d} params {where}')

  long_files = sorted(((len(parsed[p][0].splitlines()), rel(p)) for p in code
                       if len(parsed[p][0].splitlines()) > MAX_FILE_LINES), reverse=True)
  print(f'\n# files over {MAX_FILE_LINES} lines: {len(long_files)}')
  for length, where in long_files:
    print(f'  {length:5d} lines {where}')

  print('\n# settings declared')
  defines = collections.Counter()
  for path in code:
    for node in ast.walk(parsed[path][1]):
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
          node.func.attr.startswith('DEFINE_')):
        defines[rel(path)] += 1
  print(f'  flags.DEFINE_* calls: {sum(defines.values())} '
        f'({", ".join(f"{k}: {v}" for k, v in defines.most_common())})')
  table = root / 'retrain' / 'config' / 'settings.toml'
  if table.is_file():
    with open(table, 'rb') as f:
      groups = tomllib.load(f)
    print(f'  settings declared in retrain/config/settings.toml: '
          f'{sum(len(rows) for rows in groups.values())} '
          f'({", ".join(f"{k}: {len(v)}" for k, v in groups.items())})')
  options = {name: n for p in code
             for name, n in class_fields(parsed[p][1]).items()
             if name.endswith('Options') and n}
  listed = ', '.join(f'{k}: {v}' for k, v in sorted(options.items()))
  print(f'  *Options records: {len(options)}, {sum(options.values())} fields '
        f'({listed})')

  print('\n# history and lint comments (retrain, tools, bottleneck_cache, tests, bench)')
  pylint, noqa, tickets, missing, fences = 0, collections.Counter(), [], [], []
  for path, (source, _) in parsed.items():
    for line, text in comments(source):
      pylint += 'pylint: disable' in text
      for code_ in re.findall(r'noqa:\s*([A-Z]+\d+)', text):
        noqa[code_] += 1
      if TICKET.search(UPSTREAM.sub('', text)):
        tickets.append(f'{rel(path)}:{line}')
      if FENCE.search(text):
        fences.append(f'{rel(path)}:{line}')
      for named in FILE_NAMED.findall(text):
        if not (root / named).exists():
          missing.append(f'{rel(path)}:{line} {named}')
    for node in ast.walk(parsed[path][1]):
      doc = isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                              ast.AsyncFunctionDef)) and ast.get_docstring(node)
      if doc and TICKET.search(UPSTREAM.sub('', doc)):
        tickets.append(f'{rel(path)}:{getattr(node, "lineno", 1)} (docstring)')
      for named in FILE_NAMED.findall(doc or ''):
        if not (root / named).exists():
          missing.append(f'{rel(path)}:{getattr(node, "lineno", 1)} {named} (docstring)')
  print(f'  `pylint: disable` comments: {pylint}')
  print(f'  `noqa` codes: {sum(noqa.values())} '
        f'({", ".join(f"{k}: {v}" for k, v in noqa.most_common())})')
  print(f'  ticket references ({TICKET.pattern}): {len(tickets)} {tickets[:8]}')
  print(f'  fences ({FENCE.pattern}): {len(fences)} {fences[:8]}')
  print(f'  comments naming files that do not exist: {len(missing)}')
  for where in missing:
    print(f'    {where}')

  modules = {module_name(root, p): p for p in code}
  graph, names = {}, collections.defaultdict(collections.Counter)
  for module, path in modules.items():
    graph[module] = set()
    for name, local in imports(root, path, parsed[path][1]):
      parts = name.split('.')
      while parts and '.'.join(parts) not in modules:
        parts.pop()
      target = '.'.join(parts)
      if parts and target != module:
        graph[module].add(target)
        if target == name and target.startswith('retrain.') and local:
          names[target][local] += 1
  circles = cycles(graph)
  print(f'\n# import circles (imports inside functions counted): {len(circles)}')
  for circle in circles:
    print('  ' + ' <-> '.join(circle))
  aliased = {m: c for m, c in sorted(names.items()) if len(c) > 1}
  print(f'\n# modules imported under more than one name: {len(aliased)}')
  for module, counter in aliased.items():
    print(f'  {module}: {dict(counter.most_common())}')

  print('\n# copies of each formula (functions whose lines match the pattern)')
  for formula, pattern in FORMULAS.items():
    found = set()
    for path in code:
      lines = parsed[path][0].splitlines()
      for node in functions(parsed[path][1]):
        body = lines[node.lineno - 1:node.end_lineno]
        nested = [(n.lineno, n.end_lineno) for n in functions(node) if n is not node]
        for offset, line in enumerate(body):
          number = node.lineno + offset
          if any(a <= number <= b for a, b in nested) or line.lstrip().startswith('#'):
            continue
          if re.search(pattern, line):
            found.add(f'{rel(path)}:{node.name}')
            break
    print(f'  {formula}: {len(found)}   pattern {pattern}')
    for where in sorted(found):
      print(f'    {where}')


if __name__ == '__main__':
  main(sys.argv)
