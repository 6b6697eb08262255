"""SharingSpec: parsing, validation and closed-form counts."""

import ml_collections
import pytest

from jax_attnshare import sharing


def _cfg(components='', group_size=0, groups=''):
  return ml_collections.ConfigDict(dict(components=components,
                                        group_size=group_size, groups=groups))


@pytest.mark.parametrize('text,expected', [
    ('none', ()), ('', ()), ('k', ('key',)), ('kv', ('key', 'value')),
    ('qk', ('query', 'key')), ('value,key', ('key', 'value')),
    ('qkvofn', sharing.COMPONENTS), ('qkvof', sharing.COMPONENTS[:5]), ('ffn', ('ffn',)),
])
def test_parse_components(text, expected):
  assert sharing.parse_components(text) == expected


@pytest.mark.parametrize('text', ['kx', 'keys', 'query,kex', 'kk'])
def test_bad_components_name_the_field(text):
  with pytest.raises(ValueError, match='config.sharing.components'):
    sharing.parse_components(text)


def test_groups_all_by_size_and_explicit():
  assert sharing.SharingSpec.from_config(_cfg('kv'), 4).layer_groups == (
      (0, 1, 2, 3),)
  assert sharing.SharingSpec.from_config(_cfg('kv', group_size=2),
                                         4).layer_groups == ((0, 1), (2, 3))
  spec = sharing.SharingSpec.from_config(_cfg('k', groups='0-1;3'), 4)
  assert spec.layer_groups == ((0, 1), (3,))
  assert [spec.group_of(i) for i in range(4)] == [0, 0, None, 1]
  assert spec.to_string() == 'key@0,1;3'
  assert sharing.SharingSpec.from_config(_cfg('none'), 4).to_string() == 'none'


@pytest.mark.parametrize('cfg,match', [
    (_cfg('k', groups='0,1;1,2'), 'overlap'),
    (_cfg('k', groups='0,5'), 'out of range'),
    (_cfg('k', groups='0,x'), 'config.sharing.groups'),
    (_cfg('k', group_size=3), 'config.sharing.group_size'),
    (_cfg('k', group_size=-1), 'config.sharing.group_size'),
    (_cfg('k', group_size=2, groups='0,1'), 'both set'),
])
def test_invalid_groups_raise(cfg, match):
  with pytest.raises(ValueError, match=match):
    sharing.SharingSpec.from_config(cfg, 4)


def test_heads_must_divide_width():
  assert sharing.validate_heads(64, 4) == 16
  with pytest.raises(ValueError, match='config.model.num_heads'):
    sharing.validate_heads(64, 5)


def test_count_by_hand():
  sizes = {'key': 10, 'ffn': 100, 'layer_norms': 1}
  spec = sharing.SharingSpec(num_layers=4, components=('key',),
                             layer_groups=((0, 1), (2,)))
  # key: two group copies + layer 3's own; ffn and norms: one per layer.
  assert spec.num_copies('key') == 3
  assert spec.count(sizes) == {'layers': 3 * 10 + 4 * 100 + 4, 'shared': 20}
