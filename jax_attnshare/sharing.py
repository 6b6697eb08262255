"""SharingSpec: which parts of the encoder are shared across which layers.

The spec is a small frozen value built once from `config.sharing`; the model
reads it and nothing else interprets it. A component named in the spec is
created once per layer group and bound in every layer of that group, so the
parameter tree holds one copy per group and that copy receives the sum of the
gradients of all its uses.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

# Components that can be shared across layers. Letters are accepted as short
# names so a config arg like `share=kv` reads like the blog's conditions.
COMPONENTS = ('query', 'key', 'value', 'output', 'ffn')
SHORT_NAMES = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'output',
               'f': 'ffn'}


def parse_components(text: str) -> tuple[str, ...]:
  """'kv', 'key,value' or 'none' -> ('key', 'value'), in canonical order."""
  text = text.strip().lower()
  if text in ('', 'none'):
    return ()
  if ',' in text or text in COMPONENTS:
    names = [n.strip() for n in text.split(',') if n.strip()]
  else:
    names = [SHORT_NAMES.get(letter, letter) for letter in text]
  unknown = sorted(set(names) - set(COMPONENTS))
  if unknown:
    raise ValueError(
        f'config.sharing.components: unknown component(s) {unknown} in '
        f'{text!r}; use names from {COMPONENTS} or letters from '
        f'{sorted(SHORT_NAMES)} (e.g. "kv" or "key,value").')
  if len(set(names)) != len(names):
    raise ValueError(
        f'config.sharing.components: {text!r} names a component twice.')
  return tuple(c for c in COMPONENTS if c in names)


def parse_groups(text: str) -> tuple[tuple[int, ...], ...]:
  """'0,1;2,3' or '0-1;2-3' -> ((0, 1), (2, 3))."""
  groups = []
  for part in text.split(';'):
    layers = []
    for item in part.split(','):
      item = item.strip()
      if not item:
        continue
      try:
        if '-' in item:
          lo, hi = (int(x) for x in item.split('-'))
          layers.extend(range(lo, hi + 1))
        else:
          layers.append(int(item))
      except ValueError:
        raise ValueError(
            f'config.sharing.groups: cannot read {item!r} in {text!r}; write '
            'layer groups as "0,1;2,3" or "0-1;2-3".') from None
    if layers:
      groups.append(tuple(layers))
  return tuple(groups)


@dataclasses.dataclass(frozen=True)
class SharingSpec:
  """Which components are shared, and the layer groups that share them.

  Attributes:
    num_layers: depth of the encoder the spec applies to.
    components: shared components, a subset of COMPONENTS.
    layer_groups: disjoint groups of layer indices; each group binds one copy
      of every shared component. Layers in no group keep their own copies.
  """
  num_layers: int
  components: tuple[str, ...] = ()
  layer_groups: tuple[tuple[int, ...], ...] = ()

  def __post_init__(self):
    seen = set()
    for group in self.layer_groups:
      for layer in group:
        if not 0 <= layer < self.num_layers:
          raise ValueError(
              f'config.sharing.groups: layer {layer} is out of range for '
              f'{self.num_layers} layers (config.model.num_layers).')
        if layer in seen:
          raise ValueError(
              f'config.sharing.groups: layer {layer} is in more than one '
              f'group of {self.layer_groups}; groups must not overlap.')
        seen.add(layer)
    unknown = set(self.components) - set(COMPONENTS)
    if unknown:
      raise ValueError(f'config.sharing.components: unknown {sorted(unknown)}')

  @classmethod
  def from_config(cls, sharing_config, num_layers: int) -> SharingSpec:
    """Builds the spec from `config.sharing` (components, group_size, groups)."""
    components = parse_components(sharing_config.components)
    group_size = sharing_config.group_size
    groups_text = sharing_config.groups.strip()
    if group_size < 0:
      raise ValueError(
          f'config.sharing.group_size must be >= 0 (0 = all layers), got '
          f'{group_size}.')
    if group_size and groups_text:
      raise ValueError(
          'config.sharing.group_size and config.sharing.groups are both set; '
          'give consecutive groups of n layers or an explicit list, not both.')
    if groups_text:
      groups = parse_groups(groups_text)
    elif group_size:
      if num_layers % group_size:
        raise ValueError(
            f'config.sharing.group_size={group_size} does not divide '
            f'config.model.num_layers={num_layers}; pick a divisor or list '
            'the groups explicitly in config.sharing.groups.')
      groups = tuple(tuple(range(s, s + group_size))
                     for s in range(0, num_layers, group_size))
    else:
      groups = (tuple(range(num_layers)),)
    if not components:
      groups = ()
    return cls(num_layers=num_layers, components=components,
               layer_groups=groups)

  def group_of(self, layer: int) -> int | None:
    """Index of the group that `layer` belongs to, or None if unshared."""
    for g, group in enumerate(self.layer_groups):
      if layer in group:
        return g
    return None

  def is_shared(self, component: str, layer: int) -> bool:
    return component in self.components and self.group_of(layer) is not None

  def num_copies(self, component: str) -> int:
    """How many copies of `component` the parameter tree holds."""
    if component not in self.components:
      return self.num_layers
    in_groups = sum(len(g) for g in self.layer_groups)
    return len(self.layer_groups) + self.num_layers - in_groups

  def count(self, sizes: Mapping[str, int]) -> dict[str, int]:
    """Closed-form parameter counts of the per-layer components.

    Args:
      sizes: parameters of one copy of each component (plus any per-layer
        parts that are never shared, under other names).
    Returns:
      'layers' (all per-layer parameters) and 'shared' (parameters in shared
      copies).
    """
    layers = shared = 0
    for name, size in sizes.items():
      copies = self.num_copies(name) if name in COMPONENTS else self.num_layers
      layers += copies * size
      if name in self.components:
        shared += len(self.layer_groups) * size
    return {'layers': layers, 'shared': shared}

  def to_string(self) -> str:
    """'key,value@all', 'ffn,query@0,1;2,3' or 'none'."""
    if not self.components:
      return 'none'
    if self.layer_groups == (tuple(range(self.num_layers)),):
      where = 'all'
    else:
      where = ';'.join(','.join(map(str, g)) for g in self.layer_groups)
    return f'{",".join(self.components)}@{where}'


def validate_heads(width: int, num_heads: int) -> int:
  """Returns the head width; raises if the heads do not divide the width."""
  if num_heads < 1 or width % num_heads:
    raise ValueError(
        f'config.model.num_heads={num_heads} must be >= 1 and divide '
        f'config.model.width={width}.')
  return width // num_heads

