"""Post-hoc sharing of a model trained here (classifier or causal LM).

Takes replica `replica` of a jax_attnshare.main workdir whose layers hold
their own attention (e.g. configs/no_share.py or configs/lm.py without
sharing options) and runs the same sweep as posthoc_minilm.py. Quality is
the classifier's test accuracy (its own head; output_cosine is the agreement
of its predictions with the unshared model) or the LM's test token
accuracy (perplexity is in results.csv). PostShare and SA fine-tuning use the
task loss on the train split; LISA adds distillation.

2-core CPU size (1,000 train / 1,000 test reviews at the run's length):
  python -m jax_attnshare.main --config=configs/no_share.py:cpu \
      --workdir=runs/none
  TFDS_DATA_DIR=... python -m jax_attnshare.posthoc \
      --config=configs/posthoc_trained.py:cpu \
      --config.source_workdir=runs/none --workdir=runs/posthoc_none
Args: `cpu`, `tiny` (tests).
"""

from jax_attnshare.posthoc import config as posthoc_config


def get_config(arg=None):
  c = posthoc_config.study_config('workdir', arg)
  # Learning rates for a small model trained from scratch at 1e-3.
  c.postshare.learning_rate = 1e-4
  c.sa.learning_rate = 1e-4
  return c
