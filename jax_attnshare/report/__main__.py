"""python -m jax_attnshare.report --runs=DIR --out=REPORT_DIR (see build.py)."""

import sys

from jax_attnshare.report import build

if __name__ == '__main__':
  sys.exit(build.main())
