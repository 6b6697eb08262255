"""The report on a folder of runs: statistics, figures and report.md.

Reads the workdirs that jax_attnshare.main wrote (their summary.json,
config.json and attention_maps.npz) and imports no JAX, so it works on runs
copied from another machine. Command: python -m jax_attnshare.report.
"""
