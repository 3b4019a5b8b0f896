"""Where lsh_jax's time and memory go, by stages and in the compiled HLO.

  .venv/bin/python benchmarks/profile_lsh.py --length 16K --hashes 4
  .venv/bin/python benchmarks/profile_lsh.py --length 1M --hashes 8 --no-time
  .venv/bin/python benchmarks/profile_lsh.py --length 16K --hashes 4 --ops

Compile-only facts (XLA's memory_analysis and cost_analysis, op counts of
the optimised HLO) for the forward and forward+backward, then, unless
--no-time, the median time of each stage jitted on its own: hash, sort,
the vmapped rounds (sort-permute, chunked attention, undo-sort), combine,
the rounds in turn with their running combine (the default path from
R * L >= 2**10).
Stage times add up only roughly to the whole (fusion across stages).
With --ops: XLA's own per-op times instead (a jax.profiler trace of the
whole forward and forward+backward), each op with the JAX operation it came
from, summed over a call; ops inside loops count all their iterations.
"""
import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The checkout's lsh_jax, not the venv's installed one.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lsh_jax  # noqa: E402
from lsh_jax.core import chunked, hashing, rounds, schedule, sorting  # noqa: E402
from run import parse_length  # noqa: E402

C, BEFORE, AFTER, D = 64, 1, 0, 64


def timed(fn, *args, repeats=7):
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(times), min(times)


def hlo_facts(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  text = compiled.as_text()
  ops = collections.Counter(
      m.group(1) for m in re.finditer(r'= \S+ (\w[\w-]*)\(', text))
  keep = ('sort', 'gather', 'scatter', 'dot', 'while', 'fusion',
          'dynamic-slice', 'dynamic-update-slice', 'concatenate', 'copy',
          'transpose', 'reduce')
  return dict(
      temp_mb=mem.temp_size_in_bytes / 2**20,
      out_mb=mem.output_size_in_bytes / 2**20,
      arg_mb=mem.argument_size_in_bytes / 2**20,
      gflop=(cost or {}).get('flops', 0) / 1e9,
      gb_accessed=(cost or {}).get('bytes accessed', 0) / 1e9,
      ops={k: ops[k] for k in keep if ops[k]})


def op_profile(fn, *args, calls=3, top=25):
  """Prints XLA's top ops by time per call: ms, count per call, op, origin."""
  compiled = jax.jit(fn).lower(*args).compile()
  origin = {}  # HLO instruction name -> the JAX op_name it came from
  for m in re.finditer(r'%([\w.-]+) = .*?op_name="([^"]+)"', compiled.as_text()):
    origin[m.group(1)] = m.group(2)
  for _ in range(2):
    jax.block_until_ready(compiled(*args))
  folder = tempfile.mkdtemp()
  try:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(calls):
        jax.block_until_ready(compiled(*args))
    path, = glob.glob(f'{folder}/**/perfetto_trace.json.gz', recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)
  finally:
    shutil.rmtree(folder)
  events = events['traceEvents'] if isinstance(events, dict) else events
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    # Complete events named after HLO instructions; loops ('while') include
    # their bodies' ops, so the rows overlap.
    if e.get('ph') == 'X' and e['name'] in origin:
      total[e['name']] += e.get('dur', 0)
      count[e['name']] += 1
  for name, us in total.most_common(top):
    where = origin[name].split('/')
    print(f'  {us / calls / 1e3:8.2f} ms {count[name] // calls:6d}x  '
          f'{name:42s} {"/".join(where[-3:])[:70]}')


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--length', default='16K')
  p.add_argument('--hashes', type=int, default=4)
  p.add_argument('--no-time', action='store_true')
  p.add_argument('--ops', action='store_true',
                 help="XLA's per-op times (jax.profiler) instead of stages")
  p.add_argument('--sequential', action='store_true',
                 help='sequential_rounds=True')
  a = p.parse_args()
  length, n_hashes = parse_length(a.length), a.hashes
  kq, kv, kc = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(kq, (length, D))
  v = jax.random.normal(kv, (length, D))
  ct = jax.random.normal(kc, (length, D))
  rng = jax.random.PRNGKey(1)
  n_buckets = lsh_jax.auto_n_buckets(length, C)
  kw = dict(n_buckets=n_buckets, n_hashes=n_hashes, chunk_len=C,
            n_chunks_before=BEFORE, n_chunks_after=AFTER)
  if a.sequential:
    kw['sequential_rounds'] = True
  fwd = lambda q, v: lsh_jax.lsh_attention(q, v, hash_key=rng, **kw)
  bwd = jax.grad(lambda q, v: jnp.vdot(fwd(q, v), ct), argnums=(0, 1))
  print(f'L={length:,} R={n_hashes} n_buckets={n_buckets} '
        f'attention GFLOP (4RLCWd) = {4 * n_hashes * length * C * 2 * D / 1e9:.2f}')
  for name, fn in (('fwd', fwd), ('fwd+bwd', bwd)):
    print(f'{name}: {hlo_facts(fn, q, v)}')
  if a.no_time:
    return
  if a.ops:
    for name, fn in (('fwd', fwd), ('fwd+bwd', bwd)):
      print(f'{name}: top XLA ops per call (loops include their bodies)')
      op_profile(fn, q, v)
    return
  buckets = lsh_jax.hash_vectors(q, hash_key=rng, n_buckets=n_buckets,
                                 n_hashes=n_hashes)
  n_ids = hashing.n_buckets_total(n_buckets) + 1
  sticker, undo = sorting.sort_buckets(buckets, n_ids=n_ids)
  keys = chunked.normalize_keys(q)
  n_chunks = length // C
  block = schedule.chunks_per_block(n_hashes, n_chunks, C * C * 2)

  def all_rounds(q, keys, v, sticker, undo):
    one = functools.partial(
        rounds.attend_round, q=q, keys=keys, v=v, mask=None, sticker=sticker,
        undo=undo, chunk_len=C, n_chunks_before=BEFORE, n_chunks_after=AFTER,
        causal=False, chunks_per_block=block)
    return jax.vmap(one)(jnp.arange(n_hashes, dtype=jnp.int32))

  o, lse = jax.jit(all_rounds)(q, keys, v, sticker, undo)

  def rounds_in_turn(q, keys, v, sticker, undo):
    return rounds.attend_rounds_in_turn(
        q=q, keys=keys, v=v, mask=None, sticker=sticker, undo=undo,
        chunk_len=C, n_chunks_before=BEFORE, n_chunks_after=AFTER,
        causal=False,
        chunks_per_block=schedule.chunks_per_block(1, n_chunks, C * C * 2))

  def permute_only(q, keys, v, sticker, undo):
    # The gathers alone: sorted q/keys/v per round, and the undo of [R, L, D].
    sq = jax.vmap(lambda p: (q[p], keys[p], v[p]))(sticker)
    return jax.vmap(lambda x, u: x[u])(sq[2], undo)

  def attend_sorted(sq, sk, sv, pos):
    # Chunked attention of sorted inputs, no halo from other rounds (the
    # same work per round as the real thing).
    def one(sq, sk, sv, pos):
      ext = lambda x: jnp.concatenate(
          [x[-C:], x], 0).reshape(n_chunks + 1, C, *x.shape[1:])
      return chunked.chunked_attend(sq, pos, ext(sk), ext(sv), ext(pos),
                                    n_chunks_before=BEFORE, n_chunks_after=0,
                                    chunks_per_block=block)
    return jax.vmap(one)(sq, sk, sv, pos)

  sq = jax.vmap(lambda p: q[p])(sticker)
  sk = jax.vmap(lambda p: keys[p])(sticker)
  sv = jax.vmap(lambda p: v[p])(sticker)
  stages = [
      ('hash (rotations, matmul, argmax)', lambda q: lsh_jax.hash_vectors(
          q, hash_key=rng, n_buckets=n_buckets, n_hashes=n_hashes), (q,)),
      ('sort (packed int32 key) + inverse', lambda b: sorting.sort_buckets(
          b, n_ids=n_ids), (buckets,)),
      ('gathers only (sort q/k/v, undo)', permute_only,
       (q, keys, v, sticker, undo)),
      ('chunked attention of sorted rounds', attend_sorted,
       (sq, sk, sv, sticker)),
      ('all rounds (attend_round, vmapped)', all_rounds,
       (q, keys, v, sticker, undo)),
      ('combine rounds', lsh_jax.core.combine_rounds, (o, lse)),
      ('all rounds in turn, combined (attend_rounds_in_turn)',
       rounds_in_turn, (q, keys, v, sticker, undo)),
      ('whole forward', fwd, (q, v)),
      ('whole forward+backward', bwd, (q, v)),
      ('forward+backward of the attention only (sorted, no hash/sort)',
       jax.grad(lambda sq, sk, sv: jnp.vdot(
           attend_sorted(sq, sk, sv, sticker)[0], sq), argnums=(0, 1, 2)),
       (sq, sk, sv)),
      (f'{2048}^3 matmul (rate)', lambda x: x @ x,
       (jax.random.normal(kq, (2048, 2048)),)),
  ]
  print(f'chunks_per_block={block} (of {n_chunks})')
  for name, fn, args in stages:
    med, best = timed(fn, *args)
    print(f'  {name:64s} median {med:8.1f} ms  min {best:8.1f} ms')


if __name__ == '__main__':
  main()
