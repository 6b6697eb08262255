"""jax_attnshare: which parts of attention can be shared, and at what cost."""

__version__ = '0.1.0'
