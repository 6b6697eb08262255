"""Config helpers: `file.py:arg` parsing and the IMDB classifier config.

Configs under configs/ are loaded by path, so what they share lives here.
"""

from __future__ import annotations

import importlib.util

import ml_collections

# Label of each blog condition -> the components it shares across all layers.
BLOG_CONDITIONS = {
    'none': 'none', 'k': 'key', 'q': 'query', 'v': 'value',
    'kv': 'key,value', 'kq': 'key,query', 'qv': 'query,value',
    'kqv': 'key,query,value', 'albert': 'query,key,value,output,ffn',
}


def load_config(path_and_arg: str) -> ml_collections.ConfigDict:
  """What --config=path:arg does: import the file and call get_config(arg)."""
  path, _, arg = path_and_arg.partition(':')
  spec = importlib.util.spec_from_file_location('config_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style: 'cpu,seeds=3' -> {cpu: True, seeds: 3, ...defaults}.

  A bare name sets a boolean default to True; `k=v` is converted to the type
  of the default. Unknown names raise, so a typo never passes silently.
  """
  result = dict(defaults)
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    name, _, value = item.partition('=')
    if name not in defaults:
      raise ValueError(f'config arg {name!r} is unknown; known: '
                       f'{sorted(defaults)}.')
    # A None default: an int that the config fills in when not given.
    kind = int if defaults[name] is None else type(defaults[name])
    if not value:
      if kind is not bool:
        raise ValueError(f'config arg {name!r} needs a value ({name}=...).')
      result[name] = True
    elif kind is bool:
      result[name] = value.lower() in ('1', 'true', 'yes')
    else:
      result[name] = kind(value)
  return ml_collections.ConfigDict(result)


# 'clean': this project's defaults. 'blog': the blog's base code
# (pbloem/former, experiments/classify.py) and what the blog's figures show;
# 'blog32': the blog regime read at its heatmap's 32 words, without buckets.
# docs/regimes.md lists every difference and why.
REGIMES = ('clean', 'blog', 'blog32')
# Examples over which the base code warms the learning rate up.
BLOG_WARMUP_EXAMPLES = 10_000
# The blog regime's length buckets over its 512 words: of 8 lengths (on a
# grid of 16), the set that pads IMDB's training reviews least (10.0% of
# the positions, against 57.5% at a fixed 512); docs/regimes.md has the
# measurements and the alternatives.
BLOG_BUCKET_LENGTHS = '80,128,160,192,240,304,384,512'
# Steps in a row from one bucket: calls of the scanned step (steps_per_call)
# cannot cross a bucket change, so longer runs mean longer calls.
BLOG_BUCKET_RUN_STEPS = 10

# The args every config takes: its size, seed count (None: the size's) and
# regime.
SIZE_ARGS = dict(cpu=False, tiny=False, seeds=None, regime='clean')


def classifier_config(condition: str, arg: str | ml_collections.ConfigDict
                      | None) -> ml_collections.ConfigDict:
  """The blog's IMDB classifier with `condition` shared across all layers.

  Args:
    condition: a key of BLOG_CONDITIONS, or components ('kv', 'key,ffn').
    arg: 'cpu' for the 2-core-CPU size, 'tiny' for tests, 'seeds=N' to change
      the number of seeds, 'regime=blog' for the blog's regime, 'regime=blog32'
      for it at 32 words (REGIMES); or a parse_arg result holding at least
      SIZE_ARGS.
  """
  a = (arg if isinstance(arg, ml_collections.ConfigDict)
       else parse_arg(arg, **SIZE_ARGS))
  if a.regime not in REGIMES:
    raise ValueError(f'config arg regime must be one of {REGIMES}, got '
                     f'{a.regime!r}.')
  c = ml_collections.ConfigDict()
  c.name = condition
  # The preset the fields below start from (a label: the fields decide).
  c.regime = a.regime
  blog = a.regime in ('blog', 'blog32')
  # 'classify' (IMDB sentiment) or 'lm' (next token on the review texts).
  c.task = 'classify'
  # Replica i is trained from seed + i.
  c.seed = 0
  c.num_seeds = 15
  # Seeds vmapped together inside each step; 0 = all of them (best on an
  # accelerator). A CPU runs faster with 1: see steps.over_seeds.
  c.seed_chunk = 0
  # Training steps per host call (one jax.lax.scan); a call never crosses a
  # logging, evaluation or checkpoint step. Results do not depend on it.
  c.steps_per_call = 100
  # Examples per replica per step. 32, not the blog's base code's 4: 8x
  # fewer, larger steps (docs/regimes.md).
  c.batch_size = 32
  # 15 epochs of the 25,000 training reviews, as in the blog's figures.
  c.num_train_steps = 11_715
  c.log_every_steps = 100
  c.eval_every_steps = 781
  c.ckpt_every_steps = 781
  c.max_to_keep = 2
  c.eval_batch_size = 250
  # Attention statistics are computed on the first stats_examples test
  # reviews, stats_batch_size at a time (maps are [S, N, B, H, T, T]).
  c.stats_examples = 128
  c.stats_batch_size = 16
  # Index (in the test split) of the review whose maps are drawn as heatmaps.
  c.heatmap_example = 0
  # Stop the whole run on a non-finite loss instead of flagging the replica.
  c.halt_on_nonfinite = False
  # Where compiled programs are kept for later runs (jax's persistent
  # compilation cache): '' = ~/.cache/jax_attnshare/compilation on a GPU or
  # TPU, none on a CPU; 'off' = none; else that folder (see compilation.py).
  c.compilation_cache_dir = ''

  c.model = ml_collections.ConfigDict(dict(
      width=128, num_layers=3, num_heads=8, ffn_multiplier=4, num_classes=2,
      dropout_rate=0.1, pooling='mean', qkv_bias=False,
      activation='relu', layer_norm_eps=1e-5, embedding_norm=False,
      # Attention gives padded keys no weight; pooling leaves them out.
      padding_mask=True, pooling_mask=True,
      # 'flax' or 'pytorch' (torch.nn.Linear's and nn.Embedding's defaults).
      init='flax',
      # ALBERT's factorized embedding size E; 0 = width (not factorized).
      embedding_width=0,
      # Std of the N(0, std^2) init of the token and position embeddings.
      # 0 = the init's default: for 'flax' std 1/sqrt(E), under which layer
      # 0's input is so small that its attention stays uniform
      # (docs/layer0_attention.md);
      # for 'pytorch' 1.0, nn.Embedding's.
      embedding_init_std=0.0,
      # Compute dtype, 'float32' or 'bfloat16': parameters and optimizer
      # state stay float32; softmax, layer norms, losses and attention
      # statistics are float32 either way.
      dtype='bfloat16',
      # In every layer whose map no step reads: 'auto' = cuDNN's fused
      # attention where it applies (an NVIDIA GPU in bfloat16), else the
      # explicit softmax; 'fused' = jax.nn.dot_product_attention everywhere
      # (XLA's off a GPU); 'explicit' = the softmax map in every layer.
      attention='auto'))
  # Read by sharing.from_config; see sharing.SharingSpec for each field.
  c.sharing = ml_collections.ConfigDict(dict(
      components=BLOG_CONDITIONS.get(condition, condition), group_size=0,
      groups='',
      # Key/value heads per layer (GQA; 1 = MQA); 0 = one per query head.
      kv_heads=0,
      # Head maps 'key:0,0,2,2;value:...': head h uses head m(h)'s weights.
      head_map='',
      # Q, K, V = X·Ws·Dq, X·Ws·Dk, X·Ws·Dv (arXiv 2412.00359).
      shared_weight=False,
      # SA layers ('2,3' or '2-3') reuse the last computed softmax map.
      attention_map_layers='',
      # CLA factor k: every k-th layer computes K and V, the rest reuse them.
      kv_activation_every=0))
  c.data = ml_collections.ConfigDict(dict(
      dataset='imdb_reviews', data_dir='',
      # 'sentencepiece' (unigram) or 'words' (lower-cased whitespace words,
      # the most frequent vocab_size - 2 plus <pad> and <unk>).
      tokenizer='sentencepiece', vocab_size=16_000, max_length=256,
      train_examples=0, test_examples=0, data_seed=0,
      # 'shared': one batch stream for all replicas (paired comparisons);
      # 'per_seed': replica i shuffles with its own seed.
      seed_mode='shared', tokenizer_train_examples=25_000,
      allow_download=True,
      # Length buckets, e.g. '128,256,512' (the last max_length): a review
      # goes to the smallest that holds it and a batch is padded to its
      # bucket's length; '' = every batch padded to max_length. Each
      # bucket length compiles its own programs.
      bucket_lengths='',
      # Consecutive steps drawn from one bucket (data.TrainBatches).
      bucket_run_steps=1,
      # Where the tokenized splits are kept (data_cache.py): '' = a folder
      # in the TFDS data dir, or ~/.cache/jax_attnshare/prepared where that
      # cannot be written.
      cache_dir=''))
  c.opt = ml_collections.ConfigDict(dict(
      name='adamw', learning_rate=3e-4, warmup_steps=313,
      schedule='constant', weight_decay=0.01, clip_norm=1.0, b1=0.9,
      b2=0.999))

  if blog:
    # methods.md §1.1-1.2. The base code masks no padding, initialises as
    # PyTorch does and trains with Adam 1e-4, warmed up linearly over 10,000
    # examples (so over 10,000 / batch_size steps, whatever batch_size is
    # set to) and constant after, clipping at 1.0, without dropout or weight
    # decay, on lower-cased whitespace words (vocabulary 50,000), truncated
    # at 512 and batched by length (torchtext's BucketIterator). Depth 3,
    # width 128, 8 heads and 15 epochs are the blog's figures' (and the
    # clean regime's). The blog's runs varied the data order with the seed.
    # Unknown, so picked: batch size 32, the clean regime's, so that 15
    # epochs stay 11,715 steps. blog32 reads the blog's heatmap instead
    # (32 whitespace tokens ending mid-sentence), which cannot reach the
    # blog's 0.82 (docs/regimes.md).
    c.model.update(padding_mask=False, pooling_mask=False, init='pytorch',
                   dropout_rate=0.0, pooling='mean')
    c.opt.update(name='adam', learning_rate=1e-4, schedule='constant',
                 weight_decay=0.0, clip_norm=1.0)
    c.opt.warmup_steps = BLOG_WARMUP_EXAMPLES // c.get_ref('batch_size')
    c.data.update(tokenizer='words', vocab_size=50_000, seed_mode='per_seed')
    if a.regime == 'blog':
      c.data.update(max_length=512, bucket_lengths=BLOG_BUCKET_LENGTHS,
                    bucket_run_steps=BLOG_BUCKET_RUN_STEPS)
      # A call cannot cross a bucket change, so longer calls would only
      # scan steps that do nothing.
      c.steps_per_call = BLOG_BUCKET_RUN_STEPS
    else:
      c.data.max_length = 32
  if a.cpu:
    # Sized for 5 seeds in under 10 minutes on 2 cores: two 32-wide heads
    # (fewer, wider heads keep the attention's elementwise work small), no
    # dropout (as the blog's base code; the run is shorter than an epoch),
    # and 400 steps of 32 reviews each at learning rate 1e-3, warmed up
    # over 40 steps (in the blog regime 10x its rate: 1/30 of its steps).
    c.num_seeds = 5
    c.seed_chunk = 1
    # A CPU has no fast bfloat16.
    c.model.dtype = 'float32'
    c.model.update(width=64, num_heads=2, dropout_rate=0.0)
    c.data.update(test_examples=5000)
    c.num_train_steps = 400
    c.eval_every_steps = c.ckpt_every_steps = 200
    c.log_every_steps = 50
    c.stats_examples = 64
    c.opt.learning_rate = 1e-3
    if a.regime == 'clean':
      c.opt.warmup_steps = 40
      c.data.update(vocab_size=4000, max_length=128,
                    tokenizer_train_examples=5000)
      c.opt.schedule = 'cosine'
    else:
      # 1,280 examples: 40 steps at batch 32.
      c.opt.warmup_steps = 1280 // c.get_ref('batch_size')
    if a.regime == 'blog32':
      # A 32-token step costs about a quarter of a 128-token one: one epoch
      # (781 steps) fits the clean preset's time, where 400 steps left the
      # models at 0.62 test accuracy.
      c.num_train_steps = 781
      c.eval_every_steps = c.ckpt_every_steps = 391
      c.log_every_steps = 100
    if a.regime == 'blog':
      # A step over the buckets (242 positions per review on average) costs
      # about 9x a 32-word one, and each of the 8 bucket lengths compiles
      # its own programs: 250 steps (a third of an epoch) and one
      # evaluation keep 5 seeds near 14 minutes (docs/regimes.md).
      c.num_train_steps = c.eval_every_steps = 250
      c.ckpt_every_steps = 125
  if a.tiny:
    # Runs in seconds on real IMDB as on the tests' in-memory reviews: 100
    # pieces cover the 88 characters of IMDB's first 1,000 reviews and stay
    # under the 112 pieces the tests' reviews can give.
    c.num_seeds = 2
    c.batch_size = 4
    c.model.dtype = 'float32'
    # Calls of 2 and 1 steps between the logging steps every 3.
    c.steps_per_call = 2
    c.model.update(width=16, num_layers=2, num_heads=2)
    c.data.update(vocab_size=100, max_length=16, train_examples=0,
                  test_examples=0, tokenizer_train_examples=1000)
    if a.regime == 'blog':
      # The tests' reviews have 5-14 words: two buckets, and a long one
      # that only real IMDB fills. Runs of 2 steps cut calls between them.
      c.data.update(max_length=512, bucket_lengths='8,16,512',
                    bucket_run_steps=2)
    c.num_train_steps = 6
    c.log_every_steps = c.eval_every_steps = c.ckpt_every_steps = 3
    c.eval_batch_size = 8
    c.stats_examples = 8
    c.stats_batch_size = 4
    c.opt.update(learning_rate=1e-3, warmup_steps=2)
  if a.seeds is not None:  # Checked with the other fields (train.validate).
    c.num_seeds = a.seeds
  return c


def lm_config(arg: str | ml_collections.ConfigDict | None
              ) -> ml_collections.ConfigDict:
  """A causal LM on the IMDB review texts (labels unused), same loop.

  Each review is one window of max_length tokens (truncated); the loss is
  the next-token NLL over real tokens and the test metric is perplexity on
  the test split. Args as for classifier_config.
  """
  a = (arg if isinstance(arg, ml_collections.ConfigDict)
       else parse_arg(arg, **SIZE_ARGS))
  c = classifier_config('none', a)
  c.name = 'lm'
  c.task = 'lm'
  # Decoders for SA and CLA need depth; short training needs no dropout.
  c.model.update(num_layers=6, dropout_rate=0.0)
  if a.cpu:
    # Next-token logits over the vocabulary dominate the cost: a smaller
    # vocabulary and 64-token windows keep a run near the classifier's time.
    # Four heads, so GQA with two groups differs from both MHA and MQA.
    c.model.update(num_layers=4, num_heads=4)
    # 64-token windows fill nearly every review: no buckets.
    c.data.update(vocab_size=2000, max_length=64, bucket_lengths='',
                  test_examples=2000)
  if a.tiny:
    c.model.num_layers = 3
  return c


def variant_name(base: str, a: ml_collections.ConfigDict, **defaults) -> str:
  """'gqa' plus '_<arg><value>' for each of `defaults` that `a` changes."""
  return '_'.join([base] + [f'{k}{a[k]}' for k, v in defaults.items()
                            if a[k] != v])


def paired_head_map(projections: str, num_heads: int) -> str:
  """Head map in which odd heads use the even head before them (h -> h - h%2).

  Args:
    projections: letters of the projections that take the map, e.g. 'qk'.
    num_heads: heads per layer.
  """
  heads = ','.join(str(h - h % 2) for h in range(num_heads))
  return ';'.join(f'{p}:{heads}' for p in projections)


# ALBERT's cross-layer sharing ablation (its Table 4) -> shared components;
# 'all' also shares the LayerNorms, so every block parameter is shared.
ALBERT_VARIANTS = {
    'all': 'query,key,value,output,ffn,norms',
    'attention': 'query,key,value,output', 'ffn': 'ffn', 'none': 'none'}
