"""Where the Trax layer's training time goes, per (example, head) pair.

  .venv/bin/python benchmarks/layer_breakdown.py   # B 2, 4 heads, 256, 4K x 4
  .venv/bin/python benchmarks/layer_breakdown.py --batch 1 --heads 8 \
      --d-model 512 --length 16K

One process, every function compiled first and then called in turn
(`--repeats` rounds); prints the median wall time and process CPU time
per call divided by the number of pairs:

- kernel fwd / fwd+bwd: `lsh_attention_from_buckets` of one pair (the
  layer's own buckets), forward, and gradient in q and v;
- layer fwd: `lsh_jax.trax.kernels.run` hashing anew (what the layer's
  forward computes), at each n_parallel_heads;
- layer bwd: `run` with an output cotangent from the stored buckets (what
  the layer's custom backward computes: the forward again, then its vjp in
  x and the weights), at each n_parallel_heads;
- projections: the layer's q/v/output projections and their vjp around
  an elementwise stand-in for attention (the matmul work the layer adds to
  the kernel, the same in Trax's layer).

CPU time is less sensitive than wall time to other jobs on a shared
machine (both cores count: on an idle machine it may exceed wall time).
"""
import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import lsh_jax  # noqa: E402  (the checkout's)
from lsh_jax.core import hashing  # noqa: E402
from lsh_jax.trax import kernels  # noqa: E402
from run import parse_length  # noqa: E402

DEPTH, CHUNK_LEN = 64, 64


def cases(batch, n_heads, d_model, length, n_hashes, parallel):
  pairs = batch * n_heads
  n_buckets = lsh_jax.auto_n_buckets(length, CHUNK_LEN)
  n_ids = hashing.n_buckets_total(n_buckets)  # no padding id: unmasked
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  x = jax.random.normal(k[0], (batch, length, d_model))
  ct = jax.random.normal(k[1], x.shape)
  weights = tuple(jax.random.normal(key, (n_heads,) + shape) / shape[0]**.5
                  for key, shape in zip(k[2:5], ((d_model, DEPTH),
                                                 (d_model, DEPTH),
                                                 (DEPTH, d_model))))
  rng = jax.random.PRNGKey(5)

  def spec(nph):
    return kernels.Spec(
        kind='lsh', n_heads=n_heads, causal=True, chunk_len=CHUNK_LEN,
        n_chunks_before=1, n_chunks_after=0, bias=False,
        attention_dropout=0.0, output_dropout=0.0, n_parallel_heads=nph,
        n_hashes=n_hashes, n_buckets=n_buckets)
  state = (jnp.zeros((pairs, n_hashes * length), jnp.int32),
           jax.random.split(k[5], pairs))
  state = kernels.run(x, None, weights, state, rng, spec=spec(1))[1]
  buckets = (state[0][0].reshape(n_hashes, length)
             - n_ids * jnp.arange(n_hashes)[:, None])
  q, v, g = (x[0, :, :DEPTH] for _ in range(3))
  attend = lambda q, v: lsh_jax.lsh_attention_from_buckets(
      q, v, buckets, chunk_len=CHUNK_LEN, causal=True, n_ids=n_ids)
  out = {
      'kernel fwd': (attend, (q, v), 1),
      'kernel fwd+bwd': (lambda q, v: jax.grad(
          lambda q, v: jnp.vdot(attend(q, v), g), argnums=(0, 1))(q, v),
                         (q, v), 1)}
  for nph in parallel:
    out[f'layer fwd, n_parallel_heads={nph}'] = (
        lambda x, w, s, nph=nph: kernels.run(
            x, None, w, s, rng, spec=spec(nph))[:2], (x, weights, state),
        pairs)
    out[f'layer bwd, n_parallel_heads={nph}'] = (
        lambda x, w, s, nph=nph: kernels.run(
            x, None, w, s, rng, ct, spec=spec(nph), update_state=False)[2:],
        (x, weights, state), pairs)

  def projections(x, weights):
    def layer(x, w_q, w_v, w_o):
      q = jnp.einsum('bld,hde->bhle', x, w_q)
      v = jnp.einsum('bld,hde->bhle', x, w_v)
      return jnp.einsum('bhle,hed->bld', jnp.tanh(q) * v, w_o)
    return jax.vjp(layer, x, *weights)[1](ct)
  out['projections fwd+bwd (stand-in attention)'] = (
      projections, (x, weights), pairs)
  return out


def main():
  p = argparse.ArgumentParser(
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--d-model', type=int, default=256)
  p.add_argument('--length', default='4K')
  p.add_argument('--hashes', type=int, default=4)
  p.add_argument('--parallel', default='1,4,0',
                 help='n_parallel_heads settings (0: all pairs at once)')
  p.add_argument('--repeats', type=int, default=5)
  a = p.parse_args()
  parallel = [int(n) or None for n in a.parallel.split(',')]
  todo = cases(a.batch, a.heads, a.d_model, parse_length(a.length), a.hashes,
               parallel)
  compiled = {}
  for name, (fn, args, _) in todo.items():
    compiled[name] = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled[name](*args))
  times = {name: [] for name in todo}
  for _ in range(a.repeats):
    for name, (_, args, pairs) in todo.items():
      c0, t0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(compiled[name](*args))
      times[name].append(((time.perf_counter() - t0) * 1e3 / pairs,
                          (time.process_time() - c0) * 1e3 / pairs))
  print(f'B={a.batch} heads={a.heads} d_model={a.d_model} L={a.length} '
        f'R={a.hashes}, per (example, head) pair, median of {a.repeats}:')
  print('| function | wall ms / pair | CPU ms / pair |\n|---|---|---|')
  for name, ts in times.items():
    print(f'| {name} | {statistics.median(t[0] for t in ts):.1f} | '
          f'{statistics.median(t[1] for t in ts):.1f} |')


if __name__ == '__main__':
  main()
