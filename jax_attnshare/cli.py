"""Command-line plumbing shared by the commands: one-line errors, exit 2.

`python -m jax_attnshare.main` and `python -m jax_attnshare.posthoc` report
bad input (a flag absl refuses, a mistyped --config.FIELD, a config file
that fails to load, a value a check refuses) as one line `error: ...` on
stderr with exit status 2, the status of a usage error, never as a
traceback. Each command defines its own --config flag and passes its holder.
"""

from __future__ import annotations

import difflib
import logging as pylogging
import os
import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from jax_attnshare import configs

# Our package and CLU's logging writer (the metrics) log at INFO.
_INFO_SOURCES = (os.path.dirname(os.path.abspath(__file__)),
                 os.path.join('clu', 'metric_writers'))


def fail(message: str, status: int = 2):
  """Bad input: one line on stderr, exit status 2 (as for a usage error)."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def config_name(config: flags.FlagHolder) -> str:
  """The config flag as given: the file and its :ARGS."""
  return config_flags.get_config_filename(flags.FLAGS[config.name])


def check_no_arguments(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f'unexpected arguments: {argv[1:]}; fields are set with '
         '--config.FIELD=VALUE.')


def _config_arg(argv: list[str]) -> str | None:
  return next((a for a in argv if a.startswith('--config=')), None)


def unknown_field_message(argv: list[str]) -> str | None:
  """Names the first --config.FIELD override that is not a field."""
  config_arg = _config_arg(argv)
  if config_arg is None:
    return None
  try:
    node = configs.load_config(config_arg.removeprefix('--config='))
  except Exception:  # pylint: disable=broad-exception-caught
    return None  # The file's own error: not an override's.
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg.removeprefix('--config.').partition('=')[0]
    node_here, parents = node, []
    for name in path.split('.'):
      fields = list(node_here.keys()) if hasattr(node_here, 'keys') else []
      if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        where = f'config.{".".join(parents)}' if parents else 'config'
        hint = (f'did you mean --config.{".".join(parents + close)}?'
                if close else f'{where} has {", ".join(sorted(fields))}.')
        return f'--config.{path}: no such config field; {hint}'
      node_here, parents = node_here[name], parents + [name]
  return None


def one_line(error: Exception) -> str:
  """An error whose text may hold a traceback, as its first and last line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if len(lines) == 1:
    return lines[0]
  # The last line of a traceback is 'SomeError: what went wrong'.
  return f'{lines[0]} {lines[-1].partition(": ")[2] or lines[-1]}'


def parse_flags(argv: list[str], config: flags.FlagHolder) -> list[str]:
  """absl's parse, with every bad flag reported as one line, exit status 2.

  Args:
    argv: the command line.
    config: the holder of the command's config_flags.DEFINE_config_file.
  """
  try:
    rest = flags.FLAGS(argv)
    path = config_name(config)
    if not os.path.isfile(path.partition(':')[0]):
      fail(f'--config={path}: no such file (the configs are in configs/).')
    # ml_collections applies the overrides lazily.
    config.value.keys()
    return rest
  except flags.Error as e:
    fail(one_line(e).removeprefix('flag '))
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a field that does not
    # exist, with a multi-line hint.
    fail(unknown_field_message(argv) or ' '.join(str(e).split()))
  except Exception as e:  # pylint: disable=broad-exception-caught
    # The config file's own: a syntax error, or get_config raising.
    fail(f'{_config_arg(argv) or "--config"}: the file failed to load: '
         f'{type(e).__name__}: {one_line(e)}')


class _LibraryInfoFilter(pylogging.Filter):
  """Passes warnings and errors, and INFO lines only from _INFO_SOURCES."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or any(
        source in record.pathname for source in _INFO_SOURCES)


def quiet_libraries() -> None:
  """Shows the libraries' (orbax, tfds, jax) warnings and errors only."""
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())
