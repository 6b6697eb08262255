"""Post-hoc sharing of trained and pretrained models.

DirectShare, PostShare, Shared Attention and LISA applied to a model trained
by jax_attnshare.main or to a pretrained Hugging Face BERT, each scored by
the quality it keeps against the parameters, memory and FLOPs it saves.
Command: python -m jax_attnshare.posthoc --config=... --workdir=...
"""
