"""Post-hoc sharing of a model trained here (classifier or causal LM).

Takes the seed replicas of a jax_attnshare.main workdir whose layers hold
their own attention (e.g. configs/no_share.py or configs/lm.py without
sharing options), each on its own (--config.replicas=all, or indices such
as 0,2), runs the same sweep as posthoc_minilm.py on each and summarizes
them over replicas. Quality is the classifier's test accuracy (its own
head; agreement is that of its predictions with the unshared model's) or
the LM's test token accuracy (with perplexity), tested paired against the
unshared replica. PostShare and SA fine-tuning use the task loss on the
train split; LISA adds distillation.

2-core CPU size (1,000 train / 2,500 test reviews at the run's length), a
causal LM:
  TFDS_DATA_DIR=... python -m jax_attnshare.main --config=configs/lm.py:cpu \
      --workdir=runs/lm
  TFDS_DATA_DIR=... python -m jax_attnshare.posthoc \
      --config=configs/posthoc_trained.py:cpu \
      --config.source_workdir=runs/lm --workdir=runs/posthoc_lm
Args: `cpu`, `tiny` (tests).
"""

from jax_attnshare.posthoc import config as posthoc_config


def get_config(arg=None):
  c = posthoc_config.study_config('workdir', arg)
  # Learning rates for a small model trained from scratch at 1e-3.
  c.postshare.learning_rate = 1e-4
  c.sa.learning_rate = 1e-4
  return c
