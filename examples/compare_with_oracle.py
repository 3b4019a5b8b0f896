"""Runs `lsh_attention` on random data and compares it with the NumPy oracle
and with dense attention. Usage: python examples/compare_with_oracle.py
"""
import time

import jax
import numpy as np

import lsh_jax
from lsh_jax import oracle


def main(length=1024, d_qk=64, d_v=64, chunk_len=64, n_hashes=4):
  kq, kv, khash = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(kq, (length, d_qk))
  v = jax.random.normal(kv, (length, d_v))
  n_buckets = lsh_jax.auto_n_buckets(length, chunk_len)
  settings = dict(n_buckets=n_buckets, n_hashes=n_hashes, chunk_len=chunk_len,
                  n_chunks_before=1, n_chunks_after=0, causal=True)
  print(f'L={length} d={d_qk} chunk_len={chunk_len} n_hashes={n_hashes} '
        f'n_buckets={n_buckets} causal on {jax.devices()[0].platform}')

  out = lsh_jax.lsh_attention(q, v, hash_key=khash,
                              **settings).block_until_ready()
  start = time.perf_counter()
  out = lsh_jax.lsh_attention(q, v, hash_key=khash,
                              **settings).block_until_ready()
  fast_ms = 1e3 * (time.perf_counter() - start)

  # The oracle gets the very rotations that lsh_attention drew from khash.
  rotations = lsh_jax.core.random_rotations(khash, d_qk, n_buckets, n_hashes)
  start = time.perf_counter()
  expected, _, lse = oracle.lsh_attention(
      np.asarray(q), np.asarray(v), np.asarray(rotations), return_rounds=True,
      **settings)
  oracle_ms = 1e3 * (time.perf_counter() - start)
  dense = lsh_jax.full_attention(q, v, causal=True)
  # A query whose only candidate is itself (causal position 0, say) has
  # logits near -1e5, which float32 resolves to ~1e-2 (docs/algorithm.md
  # §5): such queries are reported apart.
  error = np.abs(np.asarray(out) - expected).max(axis=-1)
  self_only = lse.max(axis=0) < -1e4
  print(f'lsh_attention (jit): {fast_ms:8.2f} ms   NumPy oracle: '
        f'{oracle_ms:8.1f} ms')
  print(f'max |lsh_jax - oracle|: {error[~self_only].max():.2e} over '
        f'{int((~self_only).sum())} queries, {error[self_only].max():.2e} over '
        f'the {int(self_only.sum())} that see only themselves')
  print(f'mean |lsh - dense| (the LSH approximation): '
        f'{float(np.abs(out - dense).mean()):.3f}')


if __name__ == '__main__':
  main()
