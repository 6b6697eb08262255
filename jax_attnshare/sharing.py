"""SharingSpec: which parts of the attention and blocks are shared, and how.

`SharingSpec` is a frozen value of typed fields, checked against each other
when it is built; the model asks it which parts each layer uses and which
stored head each head uses. `from_config` parses the text fields of
`config.sharing` into one; cost.py counts the parameters, heads, FLOPs and
cache that a spec implies. It covers four kinds of sharing that a model can
be trained with, which compose:

* Projection weights across layers (the blog, ALBERT): a component named in
  `components` is created once per layer group and bound in every layer of
  that group, so the parameter tree holds one copy per group and that copy
  receives the sum of the gradients of all its uses.
* Heads within a layer: head h of a projection uses the parameters of head
  m(h) (`head_maps`); `kv_heads` = G is the MQA/GQA map h -> h // (H / G) for
  the key and value. Only the distinct heads are stored.
* Shared-weight attention (arXiv 2412.00359): one matrix Ws and three
  diagonal scalings make Q, K and V (the part 'qkv').
* Activations across layers: SA layers (arXiv 2407.12866) reuse the softmax
  map of the most recent layer that computed one; with CLA (arXiv 2405.12981)
  only every k-th layer computes K and V and the layers after it reuse them.

Post-hoc sharing of a trained model (posthoc/methods.py) adds a
`PosthocSharing`, which no config sets: cross-layer head links (DirectShare:
a head uses the Q/K/V/O parameters of a head of an earlier layer, stored
once; head_links.py) and LISA modules in the SA layers (lisa.py). The
post-hoc methods build it with `SharingSpec.with_posthoc`.
"""

from __future__ import annotations

import dataclasses
from typing import Collection

# Components that can be shared across layers. Letters are accepted as short
# names so a config arg like `share=kv` reads like the blog's conditions.
COMPONENTS = ('query', 'key', 'value', 'output', 'ffn', 'norms')
SHORT_NAMES = {'q': 'query', 'k': 'key', 'v': 'value', 'o': 'output',
               'f': 'ffn', 'n': 'norms'}
# Projections that have heads, and so can take a head map.
HEAD_PROJECTIONS = ('query', 'key', 'value', 'output')
# The per-layer parts of a block: COMPONENTS, with 'qkv' (the shared-weight
# Q/K/V module) in place of the three projections when shared_weight is set.
PARTS = COMPONENTS + ('qkv',)
# The parts that make the attention sublayer.
ATTENTION_PARTS = ('query', 'key', 'value', 'qkv', 'output')


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


def _parse_layers(text: str, field: str) -> list[int]:
  """'0,1,3' or '0-1,3' -> [0, 1, 3]."""
  layers = []
  for item in text.split(','):
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
          f'config.sharing.{field}: cannot read {item!r} in {text!r}; write '
          'layers as "0,1,3" or ranges as "0-1".') from None
  return layers


def parse_groups(text: str) -> tuple[tuple[int, ...], ...]:
  """'0,1;2,3' or '0-1;2-3' -> ((0, 1), (2, 3))."""
  groups = (tuple(_parse_layers(part, 'groups')) for part in text.split(';'))
  return tuple(g for g in groups if g)


def parse_head_maps(text: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """'key:0,0,2,2;v:0,1,1,3' -> (('key', (0, 0, 2, 2)), ('value', ...))."""
  maps = {}
  for entry in text.split(';'):
    if not entry.strip():
      continue
    name, sep, heads = entry.partition(':')
    name = SHORT_NAMES.get(name.strip().lower(), name.strip().lower())
    if not sep or name not in HEAD_PROJECTIONS or name in maps:
      raise ValueError(
          f'config.sharing.head_map: cannot read {entry!r}; write one '
          f'"projection:m(0),m(1),...,m(H-1)" per projection of '
          f'{HEAD_PROJECTIONS} (letters q,k,v,o work), joined by ";", each '
          'projection at most once.')
    try:
      maps[name] = tuple(int(h) for h in heads.split(','))
    except ValueError:
      raise ValueError(f'config.sharing.head_map: {heads!r} in {entry!r} is '
                       'not a list of head indices.') from None
  return tuple((p, maps[p]) for p in HEAD_PROJECTIONS if p in maps)


def from_config(sharing_config, num_layers: int,
                num_heads: int = 0) -> SharingSpec:
  """Parses `config.sharing` into a SharingSpec; absent fields are off."""
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
  map_layers = _parse_layers(
      sharing_config.get('attention_map_layers', ''), 'attention_map_layers')
  return SharingSpec(
      num_layers=num_layers, components=components, layer_groups=groups,
      num_heads=num_heads, kv_heads=sharing_config.get('kv_heads', 0),
      head_maps=parse_head_maps(sharing_config.get('head_map', '')),
      shared_weight=sharing_config.get('shared_weight', False),
      attention_map_layers=tuple(sorted(set(map_layers))),
      kv_activation_every=sharing_config.get('kv_activation_every', 0))


@dataclasses.dataclass(frozen=True)
class PosthocSharing:
  """Sharing added to a trained model by posthoc/methods.py, never a config.

  Attributes:
    head_links: (layer, head, source layer, source head): the head uses the
      Q, K, V and O parameters of a head of an earlier layer (DirectShare).
    lisa_rank: rank of LISA's low-rank Q/K correction in the SA layers; 0
      with lisa_align_width 0 is plain SA.
    lisa_align_width: hidden width of LISA's head-alignment MLP; 0 is none.
  """
  head_links: tuple[tuple[int, int, int, int], ...] = ()
  lisa_rank: int = 0
  lisa_align_width: int = 0

  @property
  def has_lisa(self) -> bool:
    """The SA layers hold LISA modules (lisa.Substitute)."""
    return bool(self.lisa_rank or self.lisa_align_width)


@dataclasses.dataclass(frozen=True)
class SharingSpec:
  """What is shared, across which layers and heads (see the module docstring).

  Attributes:
    num_layers: depth of the encoder the spec applies to.
    components: components shared across layers, a subset of COMPONENTS.
    layer_groups: disjoint groups of layer indices; each group binds one copy
      of every shared component. Layers in no group keep their own copies.
    num_heads: attention heads per layer; needed only by the head options.
    kv_heads: G stored key and value heads per layer (GQA; 1 is MQA); 0 keeps
      one per query head.
    head_maps: (projection, m) pairs: head h of that projection uses the
      parameters of head m(h); every m(h) must use its own (m(m(h)) = m(h)).
    shared_weight: Q, K and V come from one matrix and three diagonals.
    attention_map_layers: SA layers; each reuses the softmax map of the most
      recent earlier layer that computed one.
    kv_activation_every: CLA factor k: layers l with l % k == 0 compute K and
      V, the others reuse them; 0 (or 1) is off.
    posthoc: head links and LISA added by post-hoc sharing (with_posthoc).
  """
  num_layers: int
  components: tuple[str, ...] = ()
  layer_groups: tuple[tuple[int, ...], ...] = ()
  num_heads: int = 0
  kv_heads: int = 0
  head_maps: tuple[tuple[str, tuple[int, ...]], ...] = ()
  shared_weight: bool = False
  attention_map_layers: tuple[int, ...] = ()
  kv_activation_every: int = 0
  posthoc: PosthocSharing = PosthocSharing()

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
    self._check_heads()
    self._check_activation_sharing()
    self._check_posthoc()

  def _check_heads(self):
    h = self.num_heads
    if (self.kv_heads or self.head_maps) and h < 1:
      raise ValueError('config.sharing.kv_heads/head_map need the number of '
                       'heads (config.model.num_heads).')
    if self.kv_heads and (self.kv_heads < 0 or h % self.kv_heads):
      raise ValueError(
          f'config.sharing.kv_heads={self.kv_heads} must divide '
          f'config.model.num_heads={h} (1 = MQA; 0 = one K/V head per query '
          'head).')
    for name, m in self.head_maps:
      if len(m) != h or not all(0 <= x < h for x in m):
        raise ValueError(
            f'config.sharing.head_map: the {name} map {m} must give one head '
            f'in [0, {h}) for each of the config.model.num_heads={h} heads.')
      if any(m[x] != x for x in m):
        raise ValueError(
            f'config.sharing.head_map: in the {name} map {m} a head h uses '
            'head m(h), which must use its own parameters (m(m(h)) = m(h)).')
      if self.kv_heads and name in ('key', 'value'):
        raise ValueError(
            f'config.sharing.head_map sets a {name} map and '
            'config.sharing.kv_heads sets the key/value groups too; use one.')
    if self.shared_weight:
      if self.kv_heads or any(n != 'output' for n, _ in self.head_maps):
        raise ValueError(
            'config.sharing.shared_weight makes Q, K and V from one product '
            'X·Ws, so they have the same heads: config.sharing.kv_heads and '
            'query/key/value head maps (config.sharing.head_map) cannot be '
            'combined with it.')
      qkv = {'query', 'key', 'value'} & set(self.components)
      if qkv and len(qkv) < 3:
        raise ValueError(
            'config.sharing.shared_weight: Q, K and V are one module, so '
            'config.sharing.components must share all of query, key and '
            f'value across layers or none of them, not {sorted(qkv)}.')

  def _check_activation_sharing(self):
    k = self.kv_activation_every
    if k < 0:
      raise ValueError(f'config.sharing.kv_activation_every must be >= 0 '
                       f'(0 = off), got {k}.')
    for layer in self.attention_map_layers:
      if not 1 <= layer < self.num_layers:
        raise ValueError(
            f'config.sharing.attention_map_layers: layer {layer} must be in '
            f'[1, config.model.num_layers={self.num_layers}): an SA layer '
            'reuses the map of an earlier layer, so layer 0 computes its own.')
      if self.reuses_kv(layer) or self.provides_kv(layer):
        raise ValueError(
            f'config.sharing.attention_map_layers and '
            f'config.sharing.kv_activation_every={k} both claim layer '
            f'{layer}: an SA layer computes no keys, so it can neither reuse '
            'nor provide CLA keys and values.')
    if self.shared_weight and (self.attention_map_layers or k > 1):
      raise ValueError(
          'config.sharing.shared_weight computes Q, K and V together in every '
          'layer; it cannot be combined with config.sharing.'
          'attention_map_layers or config.sharing.kv_activation_every.')

  def _check_posthoc(self):
    heads = range(self.num_heads)
    links = self.posthoc.head_links
    targets = [(l, h) for l, h, _, _ in links]
    for layer, head, src_layer, src_head in links:
      if not (0 <= src_layer < layer < self.num_layers and head in heads
              and src_head in heads):
        raise ValueError(
            f'sharing head_links: ({layer}, {head}, {src_layer}, {src_head}) '
            'must link a head of a layer to a head of a strictly earlier '
            f'layer, within {self.num_layers} layers and {self.num_heads} '
            'heads.')
      if (src_layer, src_head) in targets:
        raise ValueError(
            f'sharing head_links: head {src_head} of layer {src_layer} is '
            'both linked and a source; sources keep their own parameters.')
    if len(set(targets)) != len(targets):
      raise ValueError('sharing head_links: a head is linked twice.')
    linked_layers = {x for link in links for x in (link[0], link[2])}
    if links and not self.attention_unshared(linked_layers):
      raise ValueError(
          'sharing head_links need per-layer, per-head Q/K/V/O parameters: '
          'they cannot be combined with kv_heads, head_map, shared_weight, '
          'cross-layer attention sharing, CLA or SA on the same layers.')
    rank, width = self.posthoc.lisa_rank, self.posthoc.lisa_align_width
    if rank < 0 or width < 0:
      raise ValueError(
          f'sharing lisa_rank={rank} and lisa_align_width={width} must be '
          '>= 0.')
    if self.posthoc.has_lisa and not self.attention_map_layers:
      raise ValueError('sharing lisa_rank/lisa_align_width act on SA layers; '
                       'config.sharing.attention_map_layers is empty.')

  def with_posthoc(self, **fields) -> SharingSpec:
    """This spec with the given PosthocSharing fields set (and checked)."""
    return dataclasses.replace(
        self, posthoc=dataclasses.replace(self.posthoc, **fields))

  def attention_unshared(self, layers: Collection[int] | None = None
                         ) -> bool:
    """Whether no trained option shares attention parameters or activations.

    That is: no kv_heads, head map, shared weight, cross-layer sharing of an
    attention part or CLA anywhere, and no SA layer among `layers` (default:
    all layers). Post-hoc sharing (`posthoc`) is not looked at.
    """
    sa_layers = set(self.attention_map_layers)
    if layers is not None:
      sa_layers &= set(layers)
    return not (set(self.shared_parts) & set(ATTENTION_PARTS) or self.kv_heads
                or self.head_maps or self.shared_weight
                or self.kv_activation_every > 1 or sa_layers)

  def group_of(self, layer: int) -> int | None:
    """Index of the group that `layer` belongs to, or None if unshared."""
    for g, group in enumerate(self.layer_groups):
      if layer in group:
        return g
    return None

  def is_shared(self, part: str, layer: int) -> bool:
    return part in self.shared_parts and self.group_of(layer) is not None

  @property
  def shared_parts(self) -> tuple[str, ...]:
    """The parts created once per group: components, 'qkv' for q+k+v."""
    if not self.shared_weight:
      return self.components
    rest = tuple(c for c in self.components
                 if c not in ('query', 'key', 'value'))
    return rest + (('qkv',) if 'query' in self.components else ())

  def reuses_map(self, layer: int) -> bool:
    """SA: the layer takes an earlier layer's softmax map (no Q, K)."""
    return layer in self.attention_map_layers

  def reuses_kv(self, layer: int) -> bool:
    """CLA: the layer takes the K and V of the last layer that made them."""
    k = self.kv_activation_every
    return k > 1 and layer % k != 0

  def provides_kv(self, layer: int) -> bool:
    """CLA: later layers reuse this layer's K and V."""
    k = self.kv_activation_every
    return k > 1 and layer % k == 0 and layer + 1 < self.num_layers

  def layer_parts(self, layer: int) -> tuple[str, ...]:
    """The parts whose parameters `layer` uses."""
    if self.shared_weight:
      attention = ('qkv',)
    elif self.reuses_map(layer):
      attention = ('value',)
    elif self.reuses_kv(layer):
      attention = ('query',)
    else:
      attention = ('query', 'key', 'value')
    return attention + ('output', 'ffn', 'norms')

  def head_index(self, projection: str) -> tuple[int, ...] | None:
    """Stored head used by each head, or None when every head has its own."""
    if self.kv_heads and projection in ('key', 'value'):
      size = self.num_heads // self.kv_heads
      index = tuple(h // size for h in range(self.num_heads))
    else:
      m = dict(self.head_maps).get(projection)
      if m is None:
        return None
      rank = {x: i for i, x in enumerate(sorted(set(m)))}
      index = tuple(rank[x] for x in m)
    return None if index == tuple(range(self.num_heads)) else index

  def to_string(self) -> str:
    """E.g. 'key,value@all', 'ffn,query@0,1;2,3; kv_heads=2' or 'none'."""
    items = []
    if self.components:
      if self.layer_groups == (tuple(range(self.num_layers)),):
        where = 'all'
      else:
        where = ';'.join(','.join(map(str, g)) for g in self.layer_groups)
      items.append(f'{",".join(self.components)}@{where}')
    if self.kv_heads:
      items.append(f'kv_heads={self.kv_heads}')
    items += [f'{name}_heads={",".join(map(str, m))}'
              for name, m in self.head_maps if self.head_index(name)]
    if self.shared_weight:
      items.append('shared_weight')
    if self.attention_map_layers:
      items.append('attention_maps@'
                   + ','.join(map(str, self.attention_map_layers)))
    if self.kv_activation_every > 1:
      items.append(f'kv_activations/{self.kv_activation_every}')
    if self.posthoc.has_lisa:
      items.append(f'lisa(rank={self.posthoc.lisa_rank},'
                   f'align={self.posthoc.lisa_align_width})')
    if self.posthoc.head_links:
      items.append('head_links@' + ','.join(
          f'{l}.{h}<{sl}.{sh}' for l, h, sl, sh in self.posthoc.head_links))
    return '; '.join(items) or 'none'


def validate_heads(width: int, num_heads: int) -> int:
  """Returns the head width; raises if the heads do not divide the width."""
  if num_heads < 1 or width % num_heads:
    raise ValueError(
        f'config.model.num_heads={num_heads} must be >= 1 and divide '
        f'config.model.width={width}.')
  return width // num_heads
