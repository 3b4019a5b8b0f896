"""lsh_self_attention against lsh_attention under two nested jax.vmap.

    PYTHONPATH=. python benchmarks/multihead.py [--batch 8 --length 4096
        --heads 8 --depth 64 --n-hashes 4 --chunk 64 --repeats 5 --grad]

Both compute the same thing (the per-(example, head) keys of
`lsh_jax.core.head_keys`): the multi-head entry point on [B, T, N, H], and
what a user writes without it, `jax.jit(jax.vmap(jax.vmap(lsh_attention)))`
with the keys split by hand, on the same [B, T, N, H] arrays (vmapped over
axes 0 and 1 of each example) and on head-major [B, N, T, H] arrays. Each
is compiled first (compile time reported apart), then the calls are
interleaved, `--repeats` rounds of one call each, and the table gives the
median and fastest call and the ratio of medians to the nested vmap. With
`--grad`, the timed function is forward + backward (gradient of a sum in
query and value).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import lsh_jax  # noqa: E402
from lsh_jax.apps import machine  # noqa: E402


def cases(args):
  """name -> (function, its arguments), all computing the same output."""
  settings = dict(n_hashes=args.n_hashes, chunk_len=args.chunk,
                  n_chunks_before=1, causal=args.causal)
  kq, kv, key = jax.random.split(jax.random.PRNGKey(0), 3)
  shape = (args.batch, args.length, args.heads, args.depth)
  q, v = jax.random.normal(kq, shape), jax.random.normal(kv, shape)
  keys = lsh_jax.core.head_keys(key, args.batch, args.heads)  # [B, N]
  one_head = lambda q, v, k: lsh_jax.lsh_attention(q, v, hash_key=k,
                                                   **settings)

  def multi(q, v):
    return lsh_jax.lsh_self_attention(q, v, hash_key=key, **settings)

  def nested(q, v):  # [B, T, N, H]: heads are axis 1 of each example
    per_example = jax.vmap(one_head, in_axes=(1, 1, 0), out_axes=1)
    return jax.vmap(per_example)(q, v, keys)

  def nested_head_major(q, v):  # [B, N, T, H]
    return jax.vmap(jax.vmap(one_head))(q, v, keys)

  functions = {'lsh_self_attention [B, T, N, H]': (multi, (q, v)),
               'nested vmap of lsh_attention, [B, T, N, H]': (nested, (q, v)),
               'nested vmap of lsh_attention, [B, N, T, H]': (
                   nested_head_major, (jnp.swapaxes(q, 1, 2),
                                       jnp.swapaxes(v, 1, 2)))}
  out = {}
  for name, (f, inputs) in functions.items():
    if args.grad:
      f = jax.grad(lambda q, v, f=f: jnp.sum(f(q, v)), argnums=(0, 1))
    out[name] = (jax.jit(f), inputs)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in (('batch', 8), ('length', 4096), ('heads', 8),
                        ('depth', 64), ('n-hashes', 4), ('chunk', 64),
                        ('repeats', 5)):
    parser.add_argument('--' + name, type=int, default=default)
  parser.add_argument('--causal', action='store_true')
  parser.add_argument('--grad', action='store_true',
                      help='time forward + backward')
  args = parser.parse_args()
  functions = cases(args)
  compile_s, outputs = {}, {}
  for name, (f, inputs) in functions.items():
    start = time.perf_counter()
    outputs[name] = jax.block_until_ready(f(*inputs))
    compile_s[name] = time.perf_counter() - start
  first = jax.tree.leaves(outputs['lsh_self_attention [B, T, N, H]'])[0]
  second = jax.tree.leaves(
      outputs['nested vmap of lsh_attention, [B, T, N, H]'])[0]
  max_diff = float(jnp.max(jnp.abs(first - second)))
  times = {name: [] for name in functions}
  for _ in range(args.repeats):  # interleaved: load changes hit all alike
    for name, (f, inputs) in functions.items():
      start = time.perf_counter()
      jax.block_until_ready(f(*inputs))
      times[name].append(time.perf_counter() - start)
  baseline = statistics.median(
      times['nested vmap of lsh_attention, [B, T, N, H]'])
  pass_name = 'forward + backward' if args.grad else 'forward'
  print(f'{pass_name}, B={args.batch} T={args.length} N={args.heads} '
        f'H={args.depth}, n_hashes={args.n_hashes}, chunk {args.chunk}, one '
        f'chunk back, causal={args.causal}, n_buckets auto; median of '
        f'{args.repeats} interleaved calls')
  print()
  print('| case | median ms | fastest ms | compile+first s | nested vmap / '
        'this |')
  print('|---|---|---|---|---|')
  for name, samples in times.items():
    median = statistics.median(samples)
    print(f'| {name} | {1e3 * median:.0f} | {1e3 * min(samples):.0f} | '
          f'{compile_s[name]:.1f} | {baseline / median:.2f}x |')
  print()
  print(f'max |lsh_self_attention - nested vmap| = {max_diff:.2e}')
  print(f'machine: {machine.describe()}; load average '
        f'{machine.info().get("load")}')


if __name__ == '__main__':
  main()
