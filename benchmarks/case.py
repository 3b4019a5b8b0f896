"""Runs one benchmark case in this (fresh) process and prints one JSON line.

  python benchmarks/case.py --impl lsh_jax --length 4096 --hashes 4 --mode fwd
  python benchmarks/case.py --group layer:4K:8   # one BENCH line per function

A group (`training.py`: the Trax layer, a ReformerLM step, multi-head
attention) times its functions in this one process, interleaved.

JAX cases run in the project's venv, PyTorch peers in the peers' venv; this
file imports neither until it knows which. Errors become a JSON line with a
`skip` reason, so the driver can tabulate them.
"""
import argparse
import json
import os
import sys
import traceback

TORCH_IMPLS = ('hf', 'lucidrains')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--impl')
  p.add_argument('--group', help='a training.py group, e.g. layer:4K:8')
  p.add_argument('--length', type=int)
  p.add_argument('--hashes', type=int, default=1)
  p.add_argument('--mode', choices=('fwd', 'bwd', 'train'), default='fwd')
  p.add_argument('--repeats', type=int, default=10)
  p.add_argument('--budget', type=float, default=10.0,
                 help='seconds of timed calls at most (at least one call)')
  a = p.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  here = os.path.dirname(os.path.abspath(__file__))
  # The checkout's lsh_jax, not whichever one the venv has installed: a
  # script's sys.path starts at its own folder, not at the cwd.
  sys.path[:0] = [here, os.path.dirname(here)]
  if a.group:
    if a.group.startswith('seqpar:'):  # 2 CPU devices, before JAX starts
      os.environ['JAX_NUM_CPU_DEVICES'] = '2'
    return run_group(a)
  record = dict(impl=a.impl, length=a.length, hashes=a.hashes, mode=a.mode)
  try:
    if a.impl in TORCH_IMPLS:
      import torch_cases as cases
    else:
      import jax_cases as cases
    record.update(cases.run(a.impl, a.length, a.hashes, a.mode,
                            repeats=a.repeats, budget_s=a.budget))
  except NotImplementedError as e:
    record['skip'] = str(e)
  except MemoryError:
    record['skip'] = 'out of memory'
  except Exception as e:  # a failed case is reported, not fatal to the run
    traceback.print_exc()
    record['skip'] = f'error: {type(e).__name__}: {str(e)[:200]}'
  print('BENCH ' + json.dumps(record), flush=True)


def run_group(a):
  import training
  try:
    records = training.time_group(a.group, repeats=a.repeats,
                                  budget_s=a.budget)
  except Exception as e:  # reported as one skipped record
    traceback.print_exc()
    records = [dict(group=a.group, impl=a.group, mode='-', length=0,
                    hashes=0, skip=f'error: {type(e).__name__}: '
                    f'{str(e)[:200]}')]
  for record in records:
    print('BENCH ' + json.dumps(record), flush=True)


if __name__ == '__main__':
  main()
