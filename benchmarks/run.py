"""Benchmark driver: lsh_jax against Trax, the PyTorch peers and dense JAX.

  make bench                                   # the default table (~25 min)
  .venv/bin/python benchmarks/run.py --quick   # a few minutes
  .venv/bin/python benchmarks/run.py --full    # adds 256K and 1M
  .venv/bin/python benchmarks/run.py --lengths 4K,16K --hashes 4 \
      --impls lsh_jax,trax --modes fwd --rounds 1

Every case (impl, L, rounds, fwd/bwd) runs in a fresh process
(`case.py`), so its peak memory is its own; the driver kills a case past
`--timeout` or past `--mem-cap-gb` of resident memory and records why. The
whole list of cases runs `--rounds` times, interleaved, and the table keeps
each case's faster round (the machine is shared and noisy). Results go to
`--out` (default benchmarks/results/, git-ignored): results.jsonl, table.md,
bench.png.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402  (after the path tweak)
import report  # noqa: E402

from lsh_jax.apps import machine  # noqa: E402

LSH_IMPLS = ('lsh_jax', 'trax', 'hf', 'lucidrains')
EXTRA_IMPLS = ('lsh_jax_seq',)  # not in the default list (see --full)
DENSE_IMPLS = ('dense_blocked', 'dense_plain', 'dense_nn')
TORCH_IMPLS = ('hf', 'lucidrains')
DEFAULT_IMPLS = LSH_IMPLS + DENSE_IMPLS
LM_IMPLS = ('reformerlm_lsh_jax', 'reformerlm_trax')
# Training groups (training.py), each timed in one process, interleaved:
# the layer at issue 18's two sizes, ReformerLM steps, multi-head attention,
# the Flax ReformerLM's step against Trax's (issue 23; a batch per length
# for >= 1 s a step on 2 cores: B 2 at 1K, where B 1 took 0.8 s, B 1 above).
DEFAULT_GROUPS = ('layer:4K:8', 'layer:16K:1', 'lm:1K:2', 'lm:4K:2',
                  'lm:16K:2', 'lm:1K:6', 'lm:4K:6', 'lm:16K:6',
                  'multihead:4K:8', 'multihead:16K:1', 'seqpar:16K:1',
                  'flax_lm:1K:2:2', 'flax_lm:4K:2:1', 'flax_lm:16K:2:1',
                  'flax_lm:1K:6:2', 'flax_lm:4K:6:1', 'flax_lm:16K:6:1')
QUICK_GROUPS = ('layer:1K:2:1', 'lm:1K:2', 'multihead:1K:2', 'seqpar:1K:1')
# Compiled per-device memory of the sequence-parallel attention and model
# step (scaling_memory.py, compiled only), appended to table.md.
DEFAULT_SCALING = '64K'
FULL_SCALING = '64K,256K,1M'



def parse_length(text):
  text = text.strip().upper()
  scale = {'K': 1024, 'M': 1024**2}.get(text[-1:], 1)
  return int(text.rstrip('KM')) * scale


def static_skip(impl, length, n_hashes, mode):
  """Cases not attempted, with the reason (stated in the table)."""
  del n_hashes, mode
  if impl == 'dense_nn' and length > 4096:
    return ('2-3x slower than the plain dense at 1K-4K (measured here); not '
            'run beyond 4K to keep the run short')
  if impl == 'dense_plain' and length > 16384:
    return (f'[L, L] float32 logits alone are {length**2 * 4 / 2**30:.0f} GiB '
            '(x2-3 with softmax/backward) > 24 GB')
  if impl == 'dense_blocked' and length > 65536:
    return ('O(L^2) time: ~16x the 64K case (minutes per call) > the '
            'per-case limit')
  return None


class Runner:
  """Runs cases in fresh processes; remembers which sizes already failed."""

  def __init__(self, args, peers_python, peers_reason, log_path):
    self.args = args
    self.peers_python = peers_python
    self.peers_reason = peers_reason
    self.failed = {}  # (impl, mode) -> (length, n_hashes, reason)
    self.log = open(log_path, 'a')

  def skip_reason(self, impl, length, n_hashes, mode):
    reason = static_skip(impl, length, n_hashes, mode)
    if reason:
      return reason
    if impl in TORCH_IMPLS and not self.peers_python:
      return self.peers_reason
    prior = self.failed.get((impl, mode))
    if prior and length >= prior[0] and n_hashes >= prior[1] and (
        length, n_hashes) != prior[:2]:
      return f'{prior[2]} at L={prior[0]:,} x {prior[1]}'
    return None

  def run(self, impl, length, n_hashes, mode):
    base = dict(impl=impl, length=length, hashes=n_hashes, mode=mode)
    reason = self.skip_reason(impl, length, n_hashes, mode)
    if reason:
      return dict(base, skip=reason)
    a = self.args
    python = self.peers_python if impl in TORCH_IMPLS else sys.executable
    cmd = [python, os.path.join(HERE, 'case.py'), '--impl', impl,
           '--length', str(length), '--hashes', str(n_hashes), '--mode', mode,
           '--repeats', str(a.repeats), '--budget', str(a.budget)]
    return self._spawn(cmd, base, (impl, mode), (length, n_hashes))[-1]

  def run_group(self, spec):
    """A `training.py` group in one process: one record per function."""
    a = self.args
    cmd = [sys.executable, os.path.join(HERE, 'case.py'), '--group', spec,
           '--repeats', str(a.group_repeats),
           '--budget', str(a.group_budget)]
    base = dict(group=spec, impl=spec, length=0, hashes=0, mode='-')
    return self._spawn(cmd, base, None, None, timeout=a.group_timeout)

  def _spawn(self, cmd, base, fail_key, size, timeout=None):
    """Runs `cmd`, watching memory and time; returns its BENCH records."""
    a = self.args
    timeout = timeout or a.timeout
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', OMP_WAIT_POLICY='PASSIVE')
    self.log.write(f'\n$ {shlex.join(cmd)}\n')
    self.log.flush()
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log,
                            env=env, text=True)
    killed, peak_seen = None, 0.0
    while proc.poll() is None:
      time.sleep(0.2)
      rss = _rss_gb(proc.pid)
      peak_seen = max(peak_seen, rss)
      if rss > a.mem_cap_gb:
        killed = f'over the {a.mem_cap_gb:g} GB memory cap'
      elif time.time() - t0 > timeout:
        killed = f'over the {timeout:g} s case limit'
      if killed:
        proc.kill()
        break
    out = proc.communicate()[0]
    records = [json.loads(line[len('BENCH '):]) for line in out.splitlines()
               if line.startswith('BENCH ')]
    if not records:
      reason = killed or f'crashed (exit {proc.returncode}; see bench.log)'
      if proc.returncode in (-9, 137) and not killed:
        reason = 'killed by the OS (out of memory?)'
      records = [dict(base, skip=reason)]
      if fail_key:
        self.failed.setdefault(fail_key, size + (reason,))
    for record in records:
      record['wall_s'] = round(time.time() - t0, 2)
    return records


def _rss_gb(pid):
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return 0.0


def _git_revision():
  try:
    return subprocess.run(['git', 'describe', '--always', '--dirty'],
                          cwd=HERE, capture_output=True, text=True,
                          timeout=10).stdout.strip() or '?'
  except (OSError, subprocess.SubprocessError):
    return '?'


def case_list(args):
  """One round's cases, grouped so the implementations run side by side."""
  cases = []
  for length in args.lengths:
    # The matmul rate before each length: the machine's speed drifts (shared
    # cores); the table uses the fastest of these.
    cases.append(('matmul', 0, 0, 'fwd'))
    for i, n_hashes in enumerate(args.hashes):
      for mode in args.modes:
        for impl in args.impls:
          if impl in DENSE_IMPLS:
            if i == 0:  # dense attention does not depend on the rounds
              cases.append((impl, length, 0, mode))
          else:
            cases.append((impl, length, n_hashes, mode))
  for length in args.lm_lengths:
    for n_hashes in args.lm_hashes:
      for impl in LM_IMPLS:
        cases.append((impl, length, n_hashes, 'train'))
  return cases


def report_only(out):
  with open(os.path.join(out, 'results.jsonl')) as f:
    records = [json.loads(line) for line in f if line.strip()]
  with open(os.path.join(out, 'runs.json')) as f:
    runs = json.load(f)
  meta = dict(runs[-1], machine=machine.info(), rounds=1, earlier=runs[:-1])
  meta['machine'].pop('load', None)
  text = report.render(records, meta)
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(text)
  print(text)
  report.plot(records, os.path.join(out, 'bench.png'))


def scaling_table(lengths, timeout):
  """scaling_memory.py's Markdown table and checks (docs/scaling.md)."""
  cmd = [sys.executable, os.path.join(HERE, 'scaling_memory.py'),
         '--lengths', lengths, '--markdown']
  print(f'[bench] {shlex.join(cmd)}', flush=True)
  try:
    result = subprocess.run(cmd, capture_output=True, text=True,
                            timeout=timeout * 4)
  except subprocess.TimeoutExpired:
    return f'Sequence-parallel memory ({lengths}): over {timeout * 4:g} s'
  if result.returncode:
    return (f'Sequence-parallel memory ({lengths}): failed (exit '
            f'{result.returncode}): {result.stderr[-500:]}')
  return (f'## Sequence parallelism: compiled memory per device\n\n'
          f'`{shlex.join(cmd[1:])}`\n\n{result.stdout}')


def main(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--lengths', default='1K,4K,16K,64K')
  p.add_argument('--hashes', default='1,4,8')
  p.add_argument('--modes', default='fwd,bwd')
  p.add_argument('--impls', default=','.join(DEFAULT_IMPLS),
                 help=f'of {",".join(DEFAULT_IMPLS + EXTRA_IMPLS)}')
  p.add_argument('--lm-lengths', default='4K',
                 help="ReformerLM training-step lengths ('' for none)")
  p.add_argument('--lm-hashes', default='4')
  p.add_argument('--groups', default=','.join(DEFAULT_GROUPS),
                 help='training groups, kind:length:size (training.py): '
                 'layer:L:batch, lm:L:n_layers, multihead:L:batch, '
                 "seqpar:L:batch ('' for none)")
  p.add_argument('--scaling', default=None,
                 help='lengths of the per-device memory table of '
                 'scaling_memory.py (default 64K; --full: 64K,256K,1M; '
                 "'' for none)")
  p.add_argument('--group-repeats', type=int, default=5,
                 help='interleaved calls of each function of a group')
  p.add_argument('--group-budget', type=float, default=120.0,
                 help='seconds of timed calls per group (at least 3 each)')
  p.add_argument('--group-timeout', type=float, default=1500.0)
  p.add_argument('--repeats', type=int, default=10,
                 help='timed calls per case and round (fewer if slow)')
  p.add_argument('--budget', type=float, default=4.0,
                 help='seconds of timed calls per case and round')
  p.add_argument('--rounds', type=int, default=1,
                 help='interleaved passes over all cases; the faster is kept '
                 '(2 doubles the ~25 min default)')
  p.add_argument('--timeout', type=float, default=120.0)
  p.add_argument('--mem-cap-gb', type=float, default=22.0)
  p.add_argument('--quick', action='store_true',
                 help='1K and 4K, 1 and 4 rounds, one pass: a few minutes')
  p.add_argument('--full', action='store_true',
                 help='add 256K and 1M, and lsh_jax with sequential rounds')
  p.add_argument('--out', default=os.path.join(HERE, 'results'))
  p.add_argument('--report-only', action='store_true',
                 help="re-render --out's table and plot; run nothing")
  p.add_argument('--append', action='store_true',
                 help="add to --out's earlier results (one table of both)")
  args = p.parse_args(argv)
  if args.quick:
    args.lengths, args.hashes, args.rounds, args.repeats = '1K,4K', '1,4', 1, 5
    args.lm_lengths = '1K'
    args.groups = ','.join(QUICK_GROUPS)
  if args.scaling is None:
    args.scaling = FULL_SCALING if args.full else (
        '' if args.quick else DEFAULT_SCALING)
  if args.full:
    args.lengths += ',256K,1M'
    args.impls += ',lsh_jax_seq'
  args.lengths = [parse_length(x) for x in args.lengths.split(',') if x]
  args.hashes = [int(x) for x in args.hashes.split(',') if x]
  args.modes = [x for x in args.modes.split(',') if x]
  args.impls = [x for x in args.impls.split(',') if x]
  args.lm_lengths = [parse_length(x) for x in args.lm_lengths.split(',') if x]
  args.lm_hashes = [int(x) for x in args.lm_hashes.split(',') if x]
  args.groups = [x for x in args.groups.split(',') if x]
  os.makedirs(args.out, exist_ok=True)
  if args.report_only:
    return report_only(args.out)

  peers_python, peers_reason = None, 'not requested'
  # Only kernel cases run the PyTorch peers (no lengths: nothing to install).
  if args.lengths and any(i in TORCH_IMPLS for i in args.impls):
    peers_python, peers_reason = peers.ensure()
    if peers_reason:
      print(f'[bench] {peers_reason}; the PyTorch peers are skipped')
  runner = Runner(args, peers_python, peers_reason,
                  os.path.join(args.out, 'bench.log'))
  meta = dict(machine=machine.info(), started=time.strftime('%Y-%m-%d %H:%M'),
              revision=_git_revision(),
              command=shlex.join([os.path.relpath(sys.executable)] +
                                 [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
              rounds=args.rounds)
  cases = case_list(args)
  records = []
  jsonl = os.path.join(args.out, 'results.jsonl')
  runs_path = os.path.join(args.out, 'runs.json')
  earlier = []
  if args.append and os.path.exists(jsonl):
    with open(jsonl) as f:
      records = [json.loads(line) for line in f if line.strip()]
    if os.path.exists(runs_path):
      with open(runs_path) as f:
        earlier = json.load(f)
  with open(jsonl, 'a' if args.append else 'w') as f:
    for rnd in range(args.rounds):
      for n, case in enumerate(cases):
        record = runner.run(*case)
        record['round'] = rnd
        records.append(record)
        f.write(json.dumps(record) + '\n')
        f.flush()
        print(f'[bench] round {rnd + 1}/{args.rounds} case {n + 1}/'
              f'{len(cases)}: {report.one_line(record)}', flush=True)
    for spec in args.groups:  # each interleaved within its own process
      for record in runner.run_group(spec):
        records.append(record)
        f.write(json.dumps(record) + '\n')
        f.flush()
        print(f'[bench] group {spec}: {report.one_line(record)}', flush=True)
  meta['machine']['load_end'] = os.getloadavg()
  meta['finished'] = time.strftime('%Y-%m-%d %H:%M')
  meta['earlier'] = earlier
  with open(runs_path, 'w') as f:
    json.dump(earlier + [{k: meta[k] for k in ('command', 'started',
                                                'finished', 'revision')}], f)
  text = report.render(records, meta)
  if args.scaling:
    text += '\n\n' + scaling_table(args.scaling, args.group_timeout)
  with open(os.path.join(args.out, 'table.md'), 'w') as f:
    f.write(text)
  print(text)
  png = os.path.join(args.out, 'bench.png')
  if report.plot(records, png):
    print(f'[bench] plot: {os.path.relpath(png)}')


if __name__ == '__main__':
  main()
