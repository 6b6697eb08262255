"""README.md and docs/ cannot rot silently: what they name must exist.

Every relative link resolves to a file (and its #anchor to a heading of
it); every `configs/NAME.py[:ARGS]` they mention loads with those args;
every command in a bash block names an existing module or script, existing
config fields and flags the command accepts.
"""

import functools
import os
import re
import shlex
import subprocess
import sys

import pytest

from jax_attnshare import configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _documents() -> list[str]:
  docs = [os.path.join(ROOT, 'README.md')]
  for folder, _, files in os.walk(os.path.join(ROOT, 'docs')):
    docs += [os.path.join(folder, f) for f in sorted(files)
             if f.endswith('.md')]
  return docs


DOCUMENTS = _documents()


def _name(path: str) -> str:
  return os.path.relpath(path, ROOT)


def _read(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


_LINK_RE = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def _anchors(text: str) -> set[str]:
  """The anchors of a Markdown page's headings, as GitHub makes them.

  Lower case, everything but letters, digits, spaces, '-' and '_' dropped,
  spaces to '-'; a repeated heading gets '-1', '-2', ...
  """
  text = re.sub(r'```.*?```', '', text, flags=re.S)  # Not headings.
  anchors = set()
  for heading in re.findall(r'^#{1,6} +(.+?) *$', text, re.M):
    slug = re.sub(r'[^\w\- ]', '', heading.lower()).replace(' ', '-')
    anchor, n = slug, 0
    while anchor in anchors:
      n += 1
      anchor = f'{slug}-{n}'
    anchors.add(anchor)
  return anchors


@pytest.mark.parametrize('doc', DOCUMENTS, ids=_name)
def test_relative_links_name_existing_files_and_headings(doc):
  missing = []
  for target in _LINK_RE.findall(_read(doc)):
    if re.match(r'[a-z]+:', target):
      continue  # A web address.
    file, _, anchor = target.partition('#')
    path = (os.path.normpath(os.path.join(os.path.dirname(doc), file))
            if file else doc)  # '#anchor' alone: a heading of this page.
    if not os.path.exists(path):
      missing.append(target)
    elif anchor and (not path.endswith('.md')
                     or anchor not in _anchors(_read(path))):
      missing.append(target)
  assert not missing, (
      f'{_name(doc)} links to missing files or headings: {missing}')


def test_anchors_are_made_as_github_makes_them():
  assert _anchors('# The `:cpu` size\n## Seeds: `seed_chunk`\n'
                  '```\n# not a heading\n```\n## Seeds: `seed_chunk`\n'
                  "### The workdir's lock\n") == {
                      'the-cpu-size', 'seeds-seed_chunk', 'seeds-seed_chunk-1',
                      'the-workdirs-lock'}



def _linked(doc: str) -> set[str]:
  """The documents that `doc` links to."""
  paths = set()
  for target in _LINK_RE.findall(_read(doc)):
    file = target.partition('#')[0]
    if file and not re.match(r'[a-z]+:', target):
      paths.add(os.path.normpath(os.path.join(os.path.dirname(doc), file)))
  return paths & set(DOCUMENTS)


def test_every_doc_is_reached_from_the_readme():
  reached, todo = set(), [DOCUMENTS[0]]  # README.md
  while todo:
    doc = todo.pop()
    if doc not in reached:
      reached.add(doc)
      todo.extend(_linked(doc))
  unreached = sorted(_name(d) for d in set(DOCUMENTS) - reached)
  assert not unreached, f'not reached by links from README.md: {unreached}'


# A config file with its args, as the docs write it after --config= or alone.
_CONFIG_RE = re.compile(r'(configs/[A-Za-z0-9_]+\.py)(:[A-Za-z0-9_=.,]+)?')
# Paths of the project's own files named in prose or commands.
_PATH_RE = re.compile(
    r'(?<![\w/.])((?:jax_attnshare|experiments|launch|tests|configs|docs)'
    r'/[A-Za-z0-9_./-]*[A-Za-z0-9_])')


@functools.lru_cache(maxsize=None)
def _load(path_and_arg: str):
  return configs.load_config(os.path.join(ROOT, path_and_arg))


@pytest.mark.parametrize('doc', DOCUMENTS, ids=_name)
def test_every_config_and_path_mentioned_exists(doc):
  text = _read(doc)
  for path, arg in set(_CONFIG_RE.findall(text)):
    # Placeholders such as configs/X.py:ARGS are not configs.
    if arg and re.search(r'[A-Z]', arg.split('=')[0]):
      continue
    _load(path + (arg or ''))
  missing = [p for p in set(_PATH_RE.findall(text))
             if not re.search(r'[A-Z]{2,}|<', p)
             and not os.path.exists(os.path.join(ROOT, p))]
  assert not missing, f'{_name(doc)} names missing paths: {sorted(missing)}'


def _commands(text: str) -> list[list[str]]:
  """The commands of the bash blocks, continuation lines joined."""
  commands = []
  for block in re.findall(r'```(?:bash|sh)\n(.*?)```', text, re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.split(' #')[0].strip()
      if not line or line.startswith('#'):
        continue
      for part in re.split(r'&&|\|\||;|\|', line):
        words = shlex.split(part)
        while words and re.match(r'^[A-Z_]+=', words[0]):
          words = words[1:]  # Environment assignments.
        if words:
          commands.append(words)
  return commands


@functools.lru_cache(maxsize=None)
def _help(program: tuple[str, ...]) -> str:
  result = subprocess.run([sys.executable, *program, '--help'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  # absl's --help exits 1, argparse's 0.
  assert result.returncode in (0, 1) and '--' in result.stdout, (
      program, result.stderr[-2000:])
  return result.stdout + result.stderr


def _program(words: list[str]) -> tuple[str, ...] | None:
  """The Python program a command runs, as its argv prefix, or None."""
  if words[0] not in ('python', 'python3'):
    return None
  if words[1] == '-m':
    return ('-m', words[2])
  return (words[1],)


@pytest.mark.slow
@pytest.mark.parametrize('doc', DOCUMENTS, ids=_name)
def test_commands_name_existing_programs_fields_and_flags(doc):
  for words in _commands(_read(doc)):
    if words[0] in ('pip', 'tensorboard', 'git', 'cd', 'mkdir', 'export',
                    'bash', 'source', 'gcloud', 'sbatch', 'ls'):
      if words[0] == 'bash':
        assert os.path.exists(os.path.join(ROOT, words[1])), words
      continue
    if words[0].startswith(('experiments/', 'launch/')):
      assert os.path.exists(os.path.join(ROOT, words[0])), words
      continue
    program = _program(words)
    assert program is not None, f'{_name(doc)}: unknown command {words}'
    if program[0] == '-m':
      if program[1] in ('pytest', 'pip', 'build'):
        continue
      assert program[1].startswith('jax_attnshare'), words
      assert _help(program)
    else:
      assert os.path.exists(os.path.join(ROOT, program[0])), words
    config = next((w.partition('=')[2] for w in words
                   if w.startswith('--config=')), None)
    for word in words[len(program) + 1:]:
      if not word.startswith('--'):
        continue
      flag = word[2:].partition('=')[0]
      if flag.startswith('config.'):
        assert config, f'{word} without --config= in {words}'
        node = _load(config)
        for name in flag.removeprefix('config.').split('.'):
          assert name in node, f'{_name(doc)}: {word}: no such field'
          node = node[name]
      else:
        names = [flag] + ([flag[2:]] if flag.startswith('no') else [])
        assert any(re.search(rf'--(\[no\])?{re.escape(n)}\b',
                             _help(program)) for n in names), (
                                 f'{_name(doc)}: {words[:3]} has no --{flag}')
