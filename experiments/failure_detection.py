"""How long a process of a multi-process run takes to stop after a failure.

  JAX_PLATFORMS=cpu python experiments/failure_detection.py \
      [--heartbeat_timeout_s=10] [--initialization_timeout_s=5] [--trials=3]
      [--cases=never_started,...]

Starts pairs of processes on this host, each joining with
jax_attnshare.distributed.initialize and then, under
distributed.ends_job_on_error as main runs the training, either exchanging
arrays with the other every 50 ms (process_allgather, as the training steps
do) or working alone (sleeping, as a process between collectives: writing
files, compiling). Per case, the time from the failure to the survivor's
exit, and what the survivor said on stderr:
  never_started       process 0 started alone (from the start of joining)
  coordinator_absent  process 1 started alone (from the start of joining)
  peer_killed         process 1 killed (SIGKILL) after both joined, while
                      they exchange arrays; process 0's exit
  coordinator_killed  the same with process 0 killed; process 1's exit
  peer_killed_alone, coordinator_killed_alone: the same while the survivor
                      works alone
docs/scaling.md quotes its figures.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

_PROCESS = '''
import sys, time
from jax.experimental import multihost_utils
import numpy as np
from jax_attnshare import distributed
port, index, heartbeat_s, initialization_s, exchange = map(int, sys.argv[1:])
print("joining", time.time(), flush=True)
distributed.initialize(f"localhost:{port}", 2, index, False, heartbeat_s,
                       initialization_s)
print("joined", time.time(), flush=True)
with distributed.ends_job_on_error():
  while True:
    if exchange:
      multihost_utils.process_allgather(np.ones(4, np.float32))
    time.sleep(0.05)
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(port: int, index: int, args,
           exchange: bool = True) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.Popen(
      [sys.executable, '-c', _PROCESS, str(port), str(index),
       str(args.heartbeat_timeout_s), str(args.initialization_timeout_s),
       str(int(exchange))],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(process: subprocess.Popen, word: str) -> float:
  """The time `process` printed `word` with (it prints `word TIME`)."""
  for line in process.stdout:
    if line.startswith(word + ' '):
      return float(line.split()[1])
  raise RuntimeError(f'the process exited before "{word}": '
                     f'{process.stderr.read()[-2000:]}')


def _outcome(process: subprocess.Popen, since: float) -> tuple[float, str]:
  """(seconds from `since` to the exit, what the process said on stderr)."""
  process.wait()
  end = time.time()
  lines = [line for line in process.stderr.read().splitlines() if line]
  # Ours start with 'error:'; JAX's fatal one with 'F' and a date.
  said = [line for line in lines if line.startswith(('error:', 'F1', 'F0'))]
  shown = (said[0] if said else lines[0] if lines else '')[:150]
  return end - since, (f'exit {process.returncode}, {len(lines)} lines on '
                       f'stderr: {shown}')


def _alone(index: int, args) -> tuple[float, str]:
  process = _start(_free_port(), index, args)
  return _outcome(process, _wait_for(process, 'joining'))


def _killed(victim: int, args, exchange: bool) -> tuple[float, str]:
  port = _free_port()
  processes = [_start(port, i, args, exchange) for i in range(2)]
  try:
    for process in processes:
      _wait_for(process, 'joined')
    time.sleep(1)  # Both at work.
    killed_at = time.time()
    processes[victim].send_signal(signal.SIGKILL)
    return _outcome(processes[1 - victim], killed_at)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()


def main():
  parser = argparse.ArgumentParser(description=__doc__.partition('\n')[0])
  parser.add_argument('--heartbeat_timeout_s', type=int, default=10)
  parser.add_argument('--initialization_timeout_s', type=int, default=5)
  parser.add_argument('--trials', type=int, default=3)
  cases = {'never_started': lambda: _alone(0, args),
           'coordinator_absent': lambda: _alone(1, args),
           'peer_killed': lambda: _killed(1, args, True),
           'coordinator_killed': lambda: _killed(0, args, True),
           'peer_killed_alone': lambda: _killed(1, args, False),
           'coordinator_killed_alone': lambda: _killed(0, args, False)}
  parser.add_argument('--cases', default=','.join(cases),
                      help='comma-separated, of ' + ', '.join(cases))
  args = parser.parse_args()
  print(f'heartbeat_timeout_s={args.heartbeat_timeout_s}, '
        f'initialization_timeout_s={args.initialization_timeout_s}')
  for name in args.cases.split(','):
    case, seconds = cases[name], []
    for trial in range(args.trials):
      took, how = case()
      seconds.append(took)
      print(f'{name} trial {trial}: {took:.1f} s; {how}', flush=True)
    print(f'{name}: {min(seconds):.1f}-{max(seconds):.1f} s over '
          f'{len(seconds)} trials', flush=True)


if __name__ == '__main__':
  main()
