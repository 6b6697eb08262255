"""The post-hoc sharing study command.

  python -m jax_attnshare.posthoc --config=configs/posthoc_minilm.py[:cpu] \\
      --workdir=DIR

Runs the post-hoc sharing study of config.source (see study.py) and prints
its results table.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from jax_attnshare.posthoc import study

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A study config: configs/posthoc_minilm.py or '
    'configs/posthoc_trained.py, optionally with :cpu or :tiny.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where results are written.')


def main(argv):
  del argv  # Unused.
  frame = study.run(_CONFIG.value, _WORKDIR.value)
  print(study.results_markdown(frame))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
