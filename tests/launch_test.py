"""The launch scripts parse, and print the right commands in a dry run."""

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
SCRIPTS = sorted(n for n in os.listdir(LAUNCH)
                 if n.endswith(('.sh', '.sbatch')))
JAX_VERSION = '0.10.2'  # launch/lib.sh's

pytestmark = pytest.mark.slow  # Every test starts bash.


def _dry_run(script, *args, env=None, path_dir=None, check=True):
  environ = dict(os.environ, DRY_RUN='1', **(env or {}))
  if path_dir:
    environ['PATH'] = f'{path_dir}:{environ["PATH"]}'
  result = subprocess.run(['bash', os.path.join(LAUNCH, script), *args],
                          cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=60, check=False)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _fake_command(tmp_path, name, script):
  """An executable `name` in tmp_path/bin that runs `script` (sh)."""
  folder = tmp_path / 'bin'
  folder.mkdir(exist_ok=True)
  path = folder / name
  path.write_text(f'#!/bin/sh\n{script}\n')
  path.chmod(0o755)
  return str(folder)


def test_the_scripts_pin_the_version_the_tests_run_with():
  with open(os.path.join(LAUNCH, 'lib.sh')) as f:
    assert f'JAX_VERSION={JAX_VERSION}\n' in f.read()
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.__version__ == JAX_VERSION


@pytest.mark.parametrize('script', SCRIPTS)
def test_script_parses(script):
  result = subprocess.run(['bash', '-n', os.path.join(LAUNCH, script)],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not shutil.which('shellcheck'),
                    reason='shellcheck is not installed (apt install '
                    'shellcheck)')
def test_scripts_pass_shellcheck():
  result = subprocess.run(
      ['shellcheck', '-x', *(f'launch/{s}' for s in SCRIPTS)], cwd=ROOT,
      capture_output=True,
      text=True, check=False)
  assert result.returncode == 0, result.stdout


def test_cpu_runs_the_cpu_size():
  result = _dry_run('cpu.sh', 'configs/no_share.py')
  assert result.stdout == (
      'exec python -m jax_attnshare.main --config=configs/no_share.py:cpu '
      '--workdir=runs/no_share_cpu\n')


def test_gpu_installs_the_pinned_cuda_jax_once(tmp_path):
  missing = _fake_command(tmp_path, 'python', 'exit 1')
  assert _dry_run('gpu.sh', path_dir=missing).stdout.splitlines() == [
      f'python -m pip install --quiet jax[cuda12]=={JAX_VERSION}',
      'exec python -m jax_attnshare.main --config=configs/kv_share.py '
      '--workdir=runs/kv_share']
  installed = _fake_command(tmp_path, 'python', 'exit 0')
  assert _dry_run('gpu.sh', path_dir=installed).stdout.splitlines() == [
      'exec python -m jax_attnshare.main --config=configs/kv_share.py '
      '--workdir=runs/kv_share']


def _remote_commands(stdout):
  """The --command texts of the dry run's `tpu-vm ssh` commands."""
  return [c.partition('--command=')[2]
          for c in re.split(r'^(?=gcloud )', stdout, flags=re.M)
          if c.startswith('gcloud compute tpus tpu-vm ssh')]


@pytest.mark.parametrize('workdir,remote', [
    ('runs/kv', '$HOME/runs/kv'), ('/mnt/runs/kv', '/mnt/runs/kv')])
def test_tpu_vm_copies_clean_installs_once_and_trains_detached(
    workdir, remote):
  stdout = _dry_run('tpu_vm.sh', 'my-tpu', 'us-west4-a',
                    'configs/kv_share.py', workdir).stdout
  # A tarball of the tracked files into a fresh folder: `scp --recurse` into
  # an existing folder would nest a second copy.
  assert re.search(r'^gcloud compute tpus tpu-vm scp --zone=us-west4-a '
                   r'--worker=all \S+\.tar\.gz my-tpu:jax_attnshare\.tar\.gz$',
                   stdout, re.M), stdout
  setup, start = _remote_commands(stdout)
  for command in (setup, start):  # Each is valid bash on the workers.
    assert subprocess.run(['bash', '-n', '-c', command],
                          check=False).returncode == 0
  assert ('rm -rf $HOME/jax_attnshare && mkdir $HOME/jax_attnshare\n'
          'tar -xzf $HOME/jax_attnshare.tar.gz -C $HOME/jax_attnshare\n'
          in setup)
  # Python 3.11 once; the pinned jax[tpu] when setup.cfg changed.
  assert ('if [ ! -x $HOME/jax_attnshare_venv/bin/python ]; then' in setup
          and 'uv venv --python 3.11 $HOME/jax_attnshare_venv' in setup)
  assert f"'jax[tpu]=={JAX_VERSION}'" in setup
  assert ('if ! cmp -s $HOME/jax_attnshare/setup.cfg '
          '$HOME/jax_attnshare_venv/installed-setup.cfg' in setup)
  assert ('setsid nohup $HOME/jax_attnshare_venv/bin/python -m '
          'jax_attnshare.main --distributed' in start)
  assert f'--workdir={remote} \\\n  > $HOME/jax_attnshare_logs/kv.log 2>&1' \
         ' < /dev/null &' in start


def test_tpu_vm_refuses_a_worker_that_still_trains(tmp_path):
  setup, _ = _remote_commands(_dry_run(
      'tpu_vm.sh', 'my-tpu', 'us-west4-a').stdout)
  # The same check, run here while a fake training process lives.
  fake = tmp_path / 'python'
  fake.write_text('#!/bin/sh\nsleep 60\n')
  fake.chmod(0o755)
  with subprocess.Popen([str(fake), '-m', 'jax_attnshare.main']) as trainer:
    try:
      check = setup.partition('rm -rf')[0]
      result = subprocess.run(['bash', '-c', check], capture_output=True,
                              text=True, check=False)
    finally:
      trainer.kill()
  assert result.returncode == 2
  assert 'still trains' in result.stderr
  # Nor does the check find itself: the workers' shell runs it with its
  # text on the command line that pgrep -f reads.
  pattern = re.search(r"pgrep -f '([^']+)'", check).group(1)
  assert not re.search(pattern, setup)


def test_slurm_job_runs_one_task_script_per_task_with_its_cpus(tmp_path):
  scontrol = _fake_command(tmp_path, 'scontrol', 'printf "gpu07\\ngpu08\\n"')
  stdout = _dry_run('slurm.sbatch', path_dir=scontrol, env={
      'SLURM_JOB_NODELIST': 'gpu[07-08]', 'SLURM_JOB_ID': '12345',
      'SLURM_CPUS_PER_TASK': '12', 'SLURM_SUBMIT_DIR': ROOT}).stdout
  assert stdout == (
      f'srun --cpus-per-task=12 bash {ROOT}/launch/slurm_task.sh '
      'configs/kv_share.py runs/kv_share gpu07:32345\n')
  with open(os.path.join(LAUNCH, 'slurm.sbatch')) as f:
    assert '#SBATCH --cpus-per-task=' in f.read()


@pytest.mark.parametrize('tasks_per_node,local_id,visible,expected', [
    ('8', '3', '5', '5'),  # SLURM bound GPU 5 to this task: kept.
    ('4', '2', '4,5,6,7', '6'),  # Every task sees all: the LOCALID-th.
    ('8', '3', None, '3'),  # None named: every GPU of the node.
    ('1', '0', '0,1', '0,1'),  # One process per node: all of them.
    ('1', '0', None, '(every GPU)'),
])
def test_slurm_task_gets_its_gpus_under_either_binding(
    tasks_per_node, local_id, visible, expected):
  env = {'SLURM_NTASKS_PER_NODE': tasks_per_node, 'SLURM_LOCALID': local_id,
         'SLURM_NTASKS': '16', 'SLURM_PROCID': '11'}
  environ = {k: v for k, v in os.environ.items()
             if k != 'CUDA_VISIBLE_DEVICES'}
  if visible is not None:
    env['CUDA_VISIBLE_DEVICES'] = visible
  result = subprocess.run(
      ['bash', os.path.join(LAUNCH, 'slurm_task.sh'), 'configs/kv_share.py',
       '/shared/runs/kv', 'gpu07:32345'], cwd=ROOT,
      env={**environ, 'DRY_RUN': '1', **env}, capture_output=True, text=True,
      timeout=60, check=False)
  assert result.returncode == 0, result.stderr
  assert result.stderr.endswith(f'CUDA_VISIBLE_DEVICES={expected}\n')
  assert result.stdout == (
      'exec python -m jax_attnshare.main --config=configs/kv_share.py '
      '--workdir=/shared/runs/kv --config.data.allow_download=False '
      '--coordinator_address=gpu07:32345 --num_processes=16 '
      '--process_id=11\n')


def test_slurm_task_refuses_more_tasks_than_gpus():
  result = _dry_run('slurm_task.sh', 'configs/kv_share.py', 'runs/kv',
                    'gpu07:32345', check=False, env={
                        'SLURM_NTASKS_PER_NODE': '4', 'SLURM_LOCALID': '3',
                        'CUDA_VISIBLE_DEVICES': '0,1', 'SLURM_NTASKS': '8',
                        'SLURM_PROCID': '3'})
  assert result.returncode == 2
  assert result.stderr == ('error: task 3 of its node sees only 2 GPUs; set '
                           '--ntasks-per-node to the GPUs per node.\n')
  assert not result.stdout
