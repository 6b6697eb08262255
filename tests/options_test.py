"""Option configs name their variant; invalid options fail before compiling."""

import os
import subprocess
import sys

import pytest

from jax_attnshare import configs
from jax_attnshare import model as model_lib

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                       'configs')
OPTION_CONFIGS = ('gqa', 'mqa', 'head_map', 'shared_weight',
                  'shared_attention', 'cla', 'albert_grid', 'lm')


def _model_config(spec: str, **overrides):
  config = configs.load_config(spec)
  for dotted, value in overrides.items():
    group, field = dotted.split('.')
    config[group][field] = value
  return model_lib.model_config(config, config.data.vocab_size, 0)


def test_option_configs_exist_and_name_their_variant():
  for name in OPTION_CONFIGS:
    assert os.path.exists(f'{CONFIGS}/{name}.py')
  names = {configs.load_config(s).name for s in (
      f'{CONFIGS}/lm.py:cpu', f'{CONFIGS}/lm.py:cpu,sa=2-3',
      f'{CONFIGS}/lm.py:cpu,cla=2,kv_heads=1', f'{CONFIGS}/gqa.py:share=kv',
      f'{CONFIGS}/albert_grid.py:variant=ffn')}
  assert names == {'lm', 'lm_sa2-3', 'lm_kv_heads1_cla2', 'gqa2_sharekv',
                   'albert_ffn_e32'}


@pytest.mark.parametrize('overrides,match', [
    ({'sharing.kv_heads': 3}, r'config\.sharing\.kv_heads=3 must divide'),
    ({'sharing.head_map': 'key:0,0,9,9'}, r'config\.sharing\.head_map'),
    ({'sharing.head_map': 'key:1,0,2,3'}, r'm\(m\(h\)\) = m\(h\)'),
    ({'sharing.head_map': 'key:0,0,2'}, r'config\.sharing\.head_map'),
    ({'sharing.head_map': 'ffn:0,0,2,2'}, r'config\.sharing\.head_map'),
    ({'sharing.head_map': 'key:0,x,2,2'}, r'config\.sharing\.head_map'),
    ({'sharing.head_map': 'k:0,0,2,2', 'sharing.kv_heads': 2}, 'use one'),
    ({'sharing.attention_map_layers': '0'},
     r'config\.sharing\.attention_map_layers: layer 0'),
    ({'sharing.attention_map_layers': '3'},
     r'config\.sharing\.attention_map_layers: layer 3'),
    ({'sharing.attention_map_layers': '1,x'},
     r'config\.sharing\.attention_map_layers: cannot read'),
    ({'sharing.attention_map_layers': '1', 'sharing.kv_activation_every': 2},
     'both claim layer 1'),
    ({'model.num_layers': 4, 'sharing.attention_map_layers': '2',
      'sharing.kv_activation_every': 2}, 'both claim layer 2'),
    ({'sharing.kv_activation_every': -1},
     r'config\.sharing\.kv_activation_every'),
    ({'sharing.shared_weight': True, 'sharing.kv_heads': 2},
     r'config\.sharing\.shared_weight'),
    ({'sharing.shared_weight': True, 'sharing.head_map': 'q:0,0,2,2'},
     r'config\.sharing\.shared_weight'),
    ({'sharing.shared_weight': True, 'sharing.components': 'kv'},
     r'config\.sharing\.components must share all of query, key and value'),
    ({'sharing.shared_weight': True, 'sharing.attention_map_layers': '2'},
     r'config\.sharing\.attention_map_layers'),
    ({'sharing.shared_weight': True, 'sharing.kv_activation_every': 2},
     r'config\.sharing\.kv_activation_every'),
    ({'model.embedding_width': -1}, r'config\.model\.embedding_width'),
])
def test_invalid_options_raise_naming_the_field(overrides, match):
  with pytest.raises(ValueError, match=match):
    _model_config(f'{CONFIGS}/no_share.py', **{'model.num_layers': 3,
                                            'model.num_heads': 4,
                                            **overrides})


def test_unknown_task_and_albert_variant_raise():
  config = configs.load_config(f'{CONFIGS}/lm.py:tiny')
  config.task = 'translate'
  with pytest.raises(ValueError, match=r'config\.task'):
    model_lib.model_config(config, 64, 0)
  with pytest.raises(ValueError, match='variant'):
    configs.load_config(f'{CONFIGS}/albert_grid.py:variant=half')


@pytest.mark.parametrize('make_folder', [False, True])
def test_options_table_without_runs_says_so_and_fails(tmp_path, make_folder):
  out = tmp_path / 'options'
  if make_folder:
    out.mkdir()
  result = subprocess.run(
      [sys.executable, os.path.join(CONFIGS, '..', 'experiments',
                                    'options_table.py'), str(out)],
      capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 1
  assert str(out) in result.stderr and result.stderr.startswith('error: ')
