"""Settings declared once: default, help, choices and bounds in one place.

A group of settings is a frozen dataclass whose fields are made by
`setting(...)`, written in Python or, for retrain's own groups, read from
a table of declarations (retrain/config/settings.toml, `declared_in`). From
the declarations this module makes everything else a
setting needs: the absl flag (`define_flags`), the value read back from the
flags (`from_flags`), the generic check of choices and bounds (`check`,
raising SettingError) and the rows of docs/flags.md (`markdown_rows`).

A field's flag is its name unless the declaration names another (`flag=`).
Imports absl.flags only (no TensorFlow, no numpy), so `--help` stays quick.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10
  import tomli as tomllib

from absl import flags

from retrain.errors import SettingError


def setting(default: Any, help: str, *,  # noqa: A002 (absl's own word)
            choices: Optional[Sequence[str]] = None,
            at_least: Optional[float] = None,
            above: Optional[float] = None,
            at_most: Optional[float] = None,
            flag: Optional[str] = None,
            doc_default: Optional[str] = None):
  """A dataclass field declaring one setting.

  Args:
    default: the value when the setting is not given.
    help: one or two sentences: what it does (the --help text and the
      meaning column of docs/flags.md).
    choices: the accepted values of a string setting (an enum flag).
    at_least, above, at_most: bounds of a number (`above`: strictly).
    flag: the flag's name when it is not the field's.
    doc_default: how docs/flags.md shows the default (e.g. what an empty
      string means), when the value itself would say too little.
  """
  metadata = {'help': help, 'choices': tuple(choices) if choices else None,
              'at_least': at_least, 'above': above, 'at_most': at_most,
              'flag': flag, 'doc_default': doc_default}
  return dataclasses.field(default=default, metadata=metadata)


# The keys a declaration in a settings table may have.
_KEYS = frozenset(('type', 'default', 'help', 'choices', 'at_least', 'above',
                   'at_most', 'flag', 'doc_default'))
# "@{names.LAYOUTS}": a constant of the code, in a settings table.
_CONSTANT = re.compile(r'@\{([A-Za-z_][\w.]*)\}')


@functools.lru_cache(maxsize=None)
def read_declarations(path: str) -> Dict[str, Dict[str, dict]]:
  """The tables of a settings file: {group: {setting name: declaration}},
  in the file's order."""
  with open(path, 'rb') as f:
    return tomllib.load(f)


def _constant(name: str, constants: Mapping[str, Any]):
  top, _, attribute = name.partition('.')
  if top not in constants or (attribute and not hasattr(constants[top],
                                                         attribute)):
    raise KeyError(f'a settings table names @{{{name}}}, which its group '
                   'is not given')
  return getattr(constants[top], attribute) if attribute else constants[top]


def _resolved(value, constants: Mapping[str, Any]):
  """`value` with each @{a.B} replaced by that constant (the constant itself
  when it is the whole string); lists become tuples."""
  if isinstance(value, list):
    return tuple(_resolved(v, constants) for v in value)
  if not isinstance(value, str):
    return value
  whole = _CONSTANT.fullmatch(value)
  if whole:
    return _constant(whole.group(1), constants)
  return _CONSTANT.sub(lambda m: str(_constant(m.group(1), constants)), value)


def declared_in(path: str, group: str, constants: Mapping[str, Any]):
  """A class decorator: the class becomes a frozen dataclass with one
  `setting` field per declaration of table `group` of the settings file
  `path` (read_declarations), in the file's order, before the fields the
  class declares itself. `constants` gives the names @{...} may use: a
  module (`names`, then @{names.LAYOUTS}) or a value.

  Raises:
    TypeError: a declaration lacks `type` or `help`, or has another key.
  """

  def make(cls):
    annotations = {}
    for name, row in read_declarations(str(path))[group].items():
      odd = sorted(set(row) - _KEYS)
      if odd or 'type' not in row or 'help' not in row:
        raise TypeError(f'{path}: [{group}.{name}] needs type and help and '
                        f'takes only {", ".join(sorted(_KEYS))} (has '
                        f'{", ".join(sorted(row))})')
      values = {key: _resolved(value, constants) for key, value in row.items()}
      annotations[name] = values.pop('type')
      setattr(cls, name, setting(values.pop('default', None),
                                 values.pop('help'), **values))
    cls.__annotations__ = {**annotations,
                           **cls.__dict__.get('__annotations__', {})}
    return dataclasses.dataclass(frozen=True)(cls)

  return make


def declared(group) -> Iterator[dataclasses.Field]:
  """The fields of a settings dataclass (class or instance) made by
  `setting`, in declaration order."""
  for field in dataclasses.fields(group):
    if 'help' in field.metadata:
      yield field


def flag_name(field: dataclasses.Field) -> str:
  return field.metadata.get('flag') or field.name


def _kind(field: dataclasses.Field) -> str:
  """bool, int, float, str or list, from the field's annotation."""
  annotation = getattr(field.type, '__name__', str(field.type))
  for kind in ('bool', 'int', 'float', 'str'):
    if annotation in (kind, f'Optional[{kind}]'):
      return kind
  if annotation.startswith(('tuple', 'Tuple')):
    return 'list'
  raise TypeError(f'{field.name}: no flag type for annotation {annotation!r}')


def define_flags(group, module_name: str,
                 flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines an absl flag for each setting of `group` (a dataclass type),
  default, help and choices from its declaration; flags defined already
  (shared by several programs) are left as they are."""
  for field in declared(group):
    name, meta = flag_name(field), field.metadata
    if name in flag_values:
      continue
    kind, default = _kind(field), field.default
    args = dict(flag_values=flag_values, module_name=module_name)
    if meta['choices']:
      flags.DEFINE_enum(name, default, list(meta['choices']), meta['help'],
                        **args)
    elif kind == 'list':
      flags.DEFINE_list(name, [str(v) for v in default], meta['help'], **args)
    else:
      define = {'bool': flags.DEFINE_bool, 'int': flags.DEFINE_integer,
                'float': flags.DEFINE_float, 'str': flags.DEFINE_string}[kind]
      define(name, default, meta['help'], **args)


def from_flags(group, flag_values: flags.FlagValues = flags.FLAGS,
               **overrides):
  """An instance of `group` with each setting read from its flag (list
  flags keep their strings: the step that uses them parses them and names
  a bad one), `overrides` replacing some."""
  values = {field.name: flag_values[flag_name(field)].value
            for field in declared(group)}
  values.update(overrides)
  return group(**values)


def _accepted(meta) -> str:
  parts = []
  if meta['at_least'] is not None:
    parts.append(f'at least {meta["at_least"]:g}')
  if meta['above'] is not None:
    parts.append(f'more than {meta["above"]:g}')
  if meta['at_most'] is not None:
    parts.append(f'at most {meta["at_most"]:g}')
  return ' and '.join(parts)


def problem(field: dataclasses.Field, value) -> Optional[str]:
  """Why `value` is not accepted by the setting `field`, or None."""
  meta = field.metadata
  if meta['choices'] and value not in meta['choices']:
    return f'is not one of {", ".join(meta["choices"])}'
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    low, above, high = meta['at_least'], meta['above'], meta['at_most']
    if ((low is not None and value < low) or
        (above is not None and value <= above) or
        (high is not None and value > high)):
      return f'must be {_accepted(meta)}'
  return None


def check(group) -> None:
  """Raises SettingError for the first setting of `group` (an instance)
  outside its choices or bounds, naming the setting, the value and what is
  accepted (`optimizer='rmsprop' is not one of sgd, momentum, adam.`)."""
  for field in declared(group):
    value = getattr(group, field.name)
    why = problem(field, value)
    if why:
      name = flag_name(field)
      raise SettingError(f'{name}={value!r} {why}.', fields=(name,))


def _doc_default(field: dataclasses.Field) -> str:
  if field.metadata['doc_default'] is not None:
    return field.metadata['doc_default']
  value = field.default
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if value is None or value == '':
    return 'none'
  if isinstance(value, str):
    return f'`{value}`'
  if isinstance(value, tuple):
    return '`' + ','.join(f'{v:g}' for v in value) + '`'
  return f'{value:g}' if isinstance(value, float) else str(value)


def markdown_rows(group) -> Tuple[str, ...]:
  """docs/flags.md's table of `group`: flag | default | meaning."""
  rows = ['| flag | default | meaning |', '| --- | --- | --- |']
  for field in declared(group):
    text = field.metadata['help'].replace('|', '\\|')
    rows.append(f'| `--{flag_name(field)}` | {_doc_default(field)} | '
                f'{text} |')
  return tuple(rows)


def flat_names(groups: Dict[str, Any]) -> Dict[str, str]:
  """{setting name: group name} of a record of groups ({name: type})."""
  return {field.name: group_name for group_name, group in groups.items()
          for field in declared(group)}
