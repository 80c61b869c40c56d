"""Settings declared once: flags, checks, flat overrides and docs from one
declaration (retrain/common/settings.py, retrain/config/)."""

import dataclasses

import pytest
from absl import flags

from retrain import config as config_lib
from retrain.common import settings
from retrain.common.settings import setting
from retrain.config import DEFAULTS
from retrain.errors import SettingError


@dataclasses.dataclass(frozen=True)
class _Group:
  size: int = setting(3, 'How many.', at_least=1)
  rate: float = setting(0.5, 'How fast.', above=0, at_most=1)
  mode: str = setting('a', 'Which.', choices=('a', 'b'))
  grid: tuple = setting((1.0, 0.1), 'Tried values.', flag='the_grid')
  on: bool = setting(False, 'Switch.')


def test_flags_are_made_from_the_declarations():
  values = flags.FlagValues()
  settings.define_flags(_Group, 'test.group', values)
  values(['prog', '--size=7', '--mode=b', '--the_grid=2,3', '--on'])
  assert settings.from_flags(_Group, values) == _Group(7, 0.5, 'b',
                                                       ['2', '3'], True)
  assert values['mode'].parser.enum_values == ['a', 'b']
  assert values['rate'].help == 'How fast.'
  with pytest.raises(flags.IllegalFlagValueError):
    values['mode'].parse('c')


@pytest.mark.parametrize('change, message', [
    ({'size': 0}, 'size=0 must be at least 1.'),
    ({'rate': 0.0}, 'rate=0.0 must be more than 0 and at most 1.'),
    ({'rate': 1.5}, 'rate=1.5 must be more than 0 and at most 1.'),
    ({'mode': 'z'}, "mode='z' is not one of a, b."),
])
def test_check_names_the_setting_the_value_and_what_is_accepted(change,
                                                                message):
  with pytest.raises(SettingError) as caught:
    settings.check(dataclasses.replace(_Group(), **change))
  assert str(caught.value) == message
  name = next(iter(change))
  assert caught.value.worded(lambda f: '--' + f).startswith(f'--{name}=')


def test_config_check_uses_the_declared_choices():
  DEFAULTS.check()
  with pytest.raises(SettingError, match="optimizer='rmsprop' is not one of"):
    DEFAULTS.replace(optimizer='rmsprop').check()


def test_replace_routes_flat_names_to_their_groups():
  config = DEFAULTS.replace(learning_rate=0.5, fine_tune=True,
                            image_dir='photos')
  assert config.head.learning_rate == 0.5
  assert config.finetune.fine_tune is True
  assert config.data.image_dir == 'photos'
  assert config.get('learning_rate') == 0.5
  assert config.head.optimizer == DEFAULTS.head.optimizer
  assert DEFAULTS.head.learning_rate == 0.01  # DEFAULTS is unchanged.
  head = config_lib.Head(learning_rate=0.2)
  assert DEFAULTS.replace(head=head, sampling='images').head == (
      dataclasses.replace(head, sampling='images'))
  with pytest.raises(TypeError, match='no setting learning_rat'):
    DEFAULTS.replace(learning_rat=1)


def test_each_setting_is_declared_once_with_its_help():
  names = [f.name for group in config_lib.GROUPS.values()
           for f in settings.declared(group)]
  assert len(names) == len(set(names)) == len(config_lib.GROUP_OF)
  for group in config_lib.GROUPS.values():
    assert [f.name for f in dataclasses.fields(group)] == [
        f.name for f in settings.declared(group)]
    for field in settings.declared(group):
      assert field.metadata['help'].strip(), field.name


def test_every_program_checks_the_declared_choices(tmp_path):
  """evaluate, inspect and the Beam job run Config.check before any work,
  as a training run does (prepare.check_config), so a bad choice given
  through the Python API is refused by name."""
  from retrain import evaluate
  from retrain.inspect import report
  with pytest.raises(SettingError, match="label_style='Retrain' is not one"):
    evaluate.evaluate(model=str(tmp_path / 'none'), image_dir=str(tmp_path),
                      label_style='Retrain')
  with pytest.raises(SettingError, match="image_layout='flat' is not one"):
    report.inspect_dataset(DEFAULTS.replace(image_dir=str(tmp_path),
                                            image_layout='flat'),
                           config_lib.INSPECT_DEFAULTS)


_TABLE = '''
[Group.size]
type = "int"
default = 3
help = "How many (at most @{LIMIT})."
at_least = 1

# Two tried values, the first the default.
[Group.grid]
type = "Tuple[float, ...]"
default = [1.0, 0.1]
help = """\\
Values \\
tried."""

[Group.mode]
type = "str"
default = "@{kinds.DEFAULT}"
help = "Which."
choices = "@{kinds.ALL}"

[Group.size_hint]
type = "Optional[int]"
help = "None unless given."
'''


class _Kinds:
  DEFAULT = 'b'
  ALL = ('a', 'b')


def test_a_settings_table_declares_a_group(tmp_path):
  path = tmp_path / 'settings.toml'
  path.write_text(_TABLE)

  @settings.declared_in(path, 'Group', {'LIMIT': 9, 'kinds': _Kinds})
  class Group:
    """A group read from a table."""
    extra: str = 'kept'

    def doubled(self) -> int:
      return 2 * self.size

  group = Group()
  assert dataclasses.is_dataclass(group)
  assert [f.name for f in dataclasses.fields(Group)] == [
      'size', 'grid', 'mode', 'size_hint', 'extra']
  assert (group.size, group.grid, group.mode, group.size_hint) == (
      3, (1.0, 0.1), 'b', None)
  assert group.doubled() == 6 and group.extra == 'kept'
  fields = {f.name: f for f in settings.declared(Group)}
  assert fields['size'].metadata['help'] == 'How many (at most 9).'
  assert fields['size'].metadata['at_least'] == 1
  assert fields['grid'].metadata['help'] == 'Values tried.'
  assert fields['mode'].metadata['choices'] == ('a', 'b')
  with pytest.raises(dataclasses.FrozenInstanceError):
    group.size = 4
  with pytest.raises(SettingError, match="mode='c' is not one of a, b"):
    settings.check(dataclasses.replace(group, mode='c'))


@pytest.mark.parametrize('row, error', [
    ('type = "int"\ndefault = 1\nhelp = "x"\nat_lest = 0', TypeError),
    ('default = 1\nhelp = "x"', TypeError),
    ('type = "str"\ndefault = "@{nowhere.NAME}"\nhelp = "x"', KeyError),
])
def test_a_bad_declaration_stops_the_import(tmp_path, row, error):
  path = tmp_path / 'bad.toml'
  path.write_text(f'[Group.value]\n{row}\n')
  with pytest.raises(error, match='value|nowhere'):
    settings.declared_in(path, 'Group', {})(type('Group', (), {}))


def test_every_group_of_retrain_is_declared_in_its_table():
  table = settings.read_declarations(
      str(config_lib.inputs._TABLE))  # noqa: SLF001 the config's own file
  groups = {**config_lib.GROUPS, 'inspect': config_lib.InspectConfig,
            'evaluate': config_lib.EvaluateConfig}
  declared = {group.__name__: [f.name for f in settings.declared(group)]
              for group in groups.values()}
  assert declared == {name: list(rows) for name, rows in table.items()}
