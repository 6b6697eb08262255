"""The config's classifier trained by a PyTorch eager loop, one seed.

The reference that experiments/seed_throughput.py's CPU rows are compared
with (docs/performance.md): the same sizes, sharing of whole projections
across layers, masking, pooling and optimizer as the config, written the
way a PyTorch user would (nn.Linear, F.scaled_dot_product_attention, Adam
or AdamW with global-norm clipping), on random full-length batches
gathered from a resident split, as the benchmark does. PyTorch is not a
dependency of this project:

  pip install torch==2.13.0   # a CPU build
  python experiments/torch_reference.py [--config=configs/kv_share.py:cpu]
      [--steps=100] [--threads=2] [--repeats=3]

Prints examples/s per repeat (the best is the figure) and one JSON line.
Head maps, SA/CLA layers and LISA are not modelled: configs using them are
refused.
"""

import argparse
import json
import math
import os
import sys
import time

try:
  import torch
  from torch import nn
  from torch.nn import functional as F
except ImportError:
  sys.exit('torch_reference.py needs PyTorch: pip install torch==2.13.0')

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from jax_attnshare import configs  # pylint: disable=g-import-not-at-top

PROJECTIONS = ('query', 'key', 'value', 'output')


class Block(nn.Module):
  """Post-LN block; `shared` maps part -> the module all layers share."""

  def __init__(self, c, shared: dict):
    super().__init__()
    d, f = c.model.width, c.model.ffn_multiplier * c.model.width
    bias = c.model.qkv_bias
    self.heads = c.model.num_heads
    self.parts = nn.ModuleDict({
        p: shared.get(p) or nn.Linear(d, d, bias=bias or p == 'output')
        for p in PROJECTIONS})
    self.ffn = shared.get('ffn') or nn.Sequential(
        nn.Linear(d, f), nn.ReLU(), nn.Linear(f, d))
    eps = c.model.layer_norm_eps
    self.ln_attention, self.ln_ffn = nn.LayerNorm(d, eps), nn.LayerNorm(d, eps)

  def forward(self, x_btd, mask_b11t):
    b, t, d = x_btd.shape
    q, k, v = (self.parts[p](x_btd).view(b, t, self.heads, -1).transpose(1, 2)
               for p in ('query', 'key', 'value'))
    a_bhtk = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_b11t)
    a_btd = self.parts['output'](a_bhtk.transpose(1, 2).reshape(b, t, d))
    x_btd = self.ln_attention(x_btd + a_btd)
    return self.ln_ffn(x_btd + self.ffn(x_btd))


class Classifier(nn.Module):
  """Embeddings, blocks, masked mean or max pooling, linear head."""

  def __init__(self, c):
    super().__init__()
    d = c.model.width
    components = c.sharing.components.split(',')
    shared = {p: nn.Linear(d, d, bias=c.model.qkv_bias or p == 'output')
              for p in PROJECTIONS if p in components}
    if 'ffn' in components:
      f = c.model.ffn_multiplier * d
      shared['ffn'] = nn.Sequential(nn.Linear(d, f), nn.ReLU(),
                                    nn.Linear(f, d))
    self.config = c
    self.token_embed = nn.Embedding(c.data.vocab_size, d)
    self.position_embed = nn.Embedding(c.data.max_length, d)
    self.blocks = nn.ModuleList(Block(c, shared)
                                for _ in range(c.model.num_layers))
    self.head = nn.Linear(d, c.model.num_classes)

  def forward(self, tokens_bt):
    m = self.config.model
    valid_bt = tokens_bt != 0
    positions = torch.arange(tokens_bt.shape[1])
    x_btd = self.token_embed(tokens_bt) + self.position_embed(positions)
    mask_b11t = valid_bt[:, None, None, :] if m.padding_mask else None
    for block in self.blocks:
      x_btd = block(x_btd, mask_b11t)
    if not m.pooling_mask:
      pooled = x_btd.mean(1) if m.pooling == 'mean' else x_btd.amax(1)
    elif m.pooling == 'mean':
      w_bt1 = valid_bt[..., None].float()
      pooled = (x_btd * w_bt1).sum(1) / w_bt1.sum(1).clamp(min=1)
    else:
      pooled = x_btd.masked_fill(~valid_bt[..., None], -math.inf).amax(1)
    return self.head(pooled)


def check(c) -> None:
  """Refuses what the reference does not model."""
  s = c.sharing
  unmodelled = [f'sharing.{name}' for name in (
      'group_size', 'groups', 'kv_heads', 'head_map', 'shared_weight',
      'attention_map_layers', 'kv_activation_every') if s[name]]
  unmodelled += [f'sharing.components={part}'
                 for part in s.components.split(',')
                 if part not in (*PROJECTIONS, 'ffn', 'none')]
  if c.get('task', 'classify') != 'classify':
    unmodelled.append(f'task={c.task}')
  if unmodelled:
    print(f'torch_reference.py models classifiers that share whole parts '
          f'across all layers; the config sets {", ".join(unmodelled)}.',
          file=sys.stderr)
    sys.exit(2)


def examples_per_s(c, steps: int, seed: int) -> float:
  torch.manual_seed(seed)
  model = Classifier(c)
  optimizer = (torch.optim.AdamW if c.opt.name == 'adamw'
               else torch.optim.Adam)(
                   model.parameters(), lr=c.opt.learning_rate,
                   betas=(c.opt.b1, c.opt.b2),
                   weight_decay=c.opt.weight_decay)
  b, t = c.batch_size, c.data.max_length
  # Full-length random reviews, as experiments/seed_throughput.py trains on.
  tokens = torch.randint(1, c.data.vocab_size, (4 * b, t))
  labels = torch.randint(0, 2, (4 * b,))

  def step(i):
    rows = torch.arange(b) + (i % 4) * b
    loss = F.cross_entropy(model(tokens[rows]), labels[rows])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), c.opt.clip_norm)
    optimizer.step()

  for i in range(5):  # Warm-up: allocator, thread pool.
    step(i)
  start = time.perf_counter()
  for i in range(steps):
    step(i)
  return steps * b / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/kv_share.py:cpu')
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  if args.steps < 1 or args.threads < 1 or args.repeats < 1:
    print('torch_reference.py: --steps, --threads and --repeats must be >= 1',
          file=sys.stderr)
    sys.exit(2)
  c = configs.load_config(args.config)
  check(c)
  torch.set_num_threads(args.threads)
  rates = []
  for r in range(args.repeats):
    rates.append(examples_per_s(c, args.steps, seed=r))
    print(f'repeat {r}: {rates[-1]:.0f} examples/s', flush=True)
  print(f'PyTorch {torch.__version__}, {args.threads} threads, config '
        f'{args.config}, one seed, batch {c.batch_size} x '
        f'{c.data.max_length} tokens: best {max(rates):.0f} examples/s')
  print(json.dumps({'config': args.config, 'torch': torch.__version__,
                    'threads': args.threads, 'steps': args.steps,
                    'examples_per_s': rates}))


if __name__ == '__main__':
  main()
