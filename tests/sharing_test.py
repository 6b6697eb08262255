"""SharingSpec: parsing config.sharing and validation."""

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
  assert sharing.from_config(_cfg('kv'), 4).layer_groups == (
      (0, 1, 2, 3),)
  assert sharing.from_config(_cfg('kv', group_size=2),
                             4).layer_groups == ((0, 1), (2, 3))
  spec = sharing.from_config(_cfg('k', groups='0-1;3'), 4)
  assert spec.layer_groups == ((0, 1), (3,))
  assert [spec.group_of(i) for i in range(4)] == [0, 0, None, 1]
  assert spec.to_string() == 'key@0,1;3'
  assert sharing.from_config(_cfg('none'), 4).to_string() == 'none'


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
    sharing.from_config(cfg, 4)


def test_attention_unshared_looks_for_sa_in_the_given_layers():
  sa = sharing.SharingSpec(num_layers=3, num_heads=2,
                           attention_map_layers=(2,))
  assert not sa.attention_unshared()
  assert sa.attention_unshared([0, 1])
  gqa = sharing.SharingSpec(num_layers=3, num_heads=2, kv_heads=1)
  assert not gqa.attention_unshared([0])
  assert sharing.from_config(_cfg('ffn'), 3).attention_unshared()
  assert not sharing.from_config(_cfg('o'), 3).attention_unshared()


def test_with_posthoc_sets_only_the_posthoc_fields_and_checks_them():
  spec = sharing.SharingSpec(num_layers=3, num_heads=2,
                             attention_map_layers=(2,))
  linked = spec.with_posthoc(head_links=((1, 0, 0, 1),))
  assert linked.posthoc == sharing.PosthocSharing(head_links=((1, 0, 0, 1),))
  assert linked.attention_map_layers == (2,)
  assert linked.to_string() == 'attention_maps@2; head_links@1.0<0.1'
  assert spec.with_posthoc(lisa_rank=2).posthoc.has_lisa
  with pytest.raises(ValueError, match='SA on the same layers'):
    spec.with_posthoc(head_links=((2, 0, 0, 1),))


def test_heads_must_divide_width():
  assert sharing.validate_heads(64, 4) == 16
  with pytest.raises(ValueError, match='config.model.num_heads'):
    sharing.validate_heads(64, 5)

