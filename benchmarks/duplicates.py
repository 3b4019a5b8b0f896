"""The cost of exact multi-round attention (allow_duplicate_attention=False).

Times `lsh_attention` at the benchmark table's settings (float32, one head,
d = 64, chunk 64, one chunk back, automatic n_buckets; default 16K tokens x
4 rounds) three ways, side by side in one process:

  plain      the default (Trax 1.4.1's attention)
  exact      allow_duplicate_attention=False (the paper's Appendix A)
  exact+bkt  also attend_across_buckets=False

each as the forward pass ('fwd') and forward + backward ('fwd+bwd': the
gradient in q and v for a fixed cotangent). Compilation is timed apart;
the timed calls of the three variants alternate (round robin), so that
machine load affects all alike. Prints a table: median ms and the ratio to
plain.

    python benchmarks/duplicates.py [--length 16384] [--n-hashes 4]
                                    [--repeats 7]
"""
import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax_cases  # noqa: E402  (the table's settings)

VARIANTS = {
    'plain': {},
    'exact': {'allow_duplicate_attention': False},
    'exact+bkt': {'allow_duplicate_attention': False,
                  'attend_across_buckets': False},
}


def build(length, n_hashes, mode, flags):
  """A jit-compiled function of (q, v) or of (ct, q, v), and its args."""
  import lsh_jax  # pylint: disable=import-outside-toplevel
  q, v = jax_cases._inputs(length, 2)  # pylint: disable=protected-access
  rng = jax.random.PRNGKey(1)

  def forward(q, v):
    return lsh_jax.lsh_attention(
        q, v, hash_key=rng, n_buckets=jax_cases.n_buckets_for(length),
        n_hashes=n_hashes, chunk_len=jax_cases.CHUNK_LEN,
        n_chunks_before=jax_cases.N_CHUNKS_BEFORE,
        n_chunks_after=jax_cases.N_CHUNKS_AFTER, **flags)
  fn, args = jax_cases._mode(  # pylint: disable=protected-access
      forward, (q, v), mode, (length, jax_cases.DEPTH))
  return jax.jit(fn), args


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--length', type=int, default=16384)
  parser.add_argument('--n-hashes', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=7)
  args = parser.parse_args(argv)
  print(f'# exact multi-round attention: cost at L={args.length}, '
        f'R={args.n_hashes}, d={jax_cases.DEPTH}, chunk '
        f'{jax_cases.CHUNK_LEN}; {jax.devices()[0].device_kind}, jax '
        f'{jax.__version__}, {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs')
  print('| mode | variant | compile s | median ms | min ms | ratio to plain |')
  print('|---|---|---|---|---|---|')
  for mode in ('fwd', 'bwd'):
    compiled, compile_s = {}, {}
    for name, flags in VARIANTS.items():
      fn, fn_args = build(args.length, args.n_hashes, mode, flags)
      start = time.perf_counter()
      jax.block_until_ready(fn(*fn_args))  # compiles, then runs once
      compile_s[name] = time.perf_counter() - start
      compiled[name] = (fn, fn_args)
    times = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
      for name, (fn, fn_args) in compiled.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*fn_args))
        times[name].append((time.perf_counter() - start) * 1e3)
    plain = statistics.median(times['plain'])
    for name in VARIANTS:
      median = statistics.median(times[name])
      print(f'| {"fwd" if mode == "fwd" else "fwd+bwd"} | {name} | '
            f'{compile_s[name]:.1f} | {median:.1f} | {min(times[name]):.1f} '
            f'| {median / plain:.2f} |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
