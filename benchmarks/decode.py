"""Decoding throughput: mode='predict' against full recomputation per token.

    python benchmarks/decode.py [--prefixes 256 1024 4096] [--tokens 32]

For each prefix length P, one `lsh_jax.trax.LSHSelfAttention` (same
weights) generates `--tokens` positions after a P-token prefix:
  * predict: mode='predict', the prefix in one call, then one token per
    call (memory P + tokens, so nothing is dropped): cost per token bounded
    by the memory, not by the tokens decoded so far;
  * recompute: mode='eval' on the whole sequence after every token, padded
    to one fixed length (P + tokens, a multiple of chunk_len) so it compiles
    once, the output read at the new position (causal: later padding is
    invisible). This is what decoding without a predict mode costs.
Tokens/s count decoded tokens only (the prefix call is reported apart);
compilation is a warm-up, reported apart too. Inputs are random
activations: the layer's work does not depend on where they come from.
"""
import argparse
import os
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))  # this checkout's lsh_jax, not an installed one

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

LAYER = dict(n_heads=4, d_qk=64, d_v=64, causal=True, chunk_len=64,
             n_chunks_before=1, n_hashes=2, n_parallel_heads=None)
D_MODEL = 256


def _layer(mode, length, **kwargs):
  from trax import fastmath  # pylint: disable=import-outside-toplevel
  from trax import shapes  # pylint: disable=import-outside-toplevel

  from lsh_jax.trax import layers as trax_layer  # pylint: disable=import-outside-toplevel
  layer = trax_layer.LSHSelfAttention(mode=mode, **LAYER, **kwargs)
  layer.init(shapes.ShapeDtype((1, length, D_MODEL), jnp.float32),
             rng=fastmath.random.get_prng(0))
  return layer


def _ready(tree):
  return jax.block_until_ready(tree)


def bench_predict(x, prefix, n_tokens, max_len):
  """(prefix call s, compile s, tokens/s) of mode='predict'."""
  # max_length_for_buckets: the automatic bucket count of the longest
  # sequence, the same for every prefix length and for `recompute`.
  layer = _layer('predict', 1, predict_mem_len=prefix + n_tokens,
                 predict_drop_len=LAYER['chunk_len'],
                 max_length_for_buckets=max_len)
  fn = jax.jit(layer.pure_fn)
  rng = jax.random.PRNGKey(0)

  def run():
    state = layer.state
    start = time.perf_counter()
    out, state = _ready(fn(x[:, :prefix], layer.weights, state, rng))
    prefix_s = time.perf_counter() - start
    start = time.perf_counter()
    for t in range(prefix, prefix + n_tokens):
      out, state = fn(x[:, t:t + 1], layer.weights, state, rng)
    _ready(out)
    return prefix_s, time.perf_counter() - start

  start = time.perf_counter()
  run()  # compiles the prefix call and the step
  compile_s = time.perf_counter() - start
  prefix_s, steps_s = run()
  return prefix_s, compile_s, n_tokens / steps_s


def bench_recompute(x, prefix, n_tokens, max_len):
  """(compile s, tokens/s) of mode='eval' over the whole sequence."""
  chunk = LAYER['chunk_len']
  length = -(-(prefix + n_tokens) // chunk) * chunk
  layer = _layer('eval', length, max_length_for_buckets=max_len)
  fn = jax.jit(layer.pure_fn)
  rng = jax.random.PRNGKey(0)
  x = jnp.pad(x[:, :prefix + n_tokens],
              ((0, 0), (0, length - prefix - n_tokens), (0, 0)))
  start = time.perf_counter()
  _ready(fn(x, layer.weights, layer.state, rng))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for t in range(prefix, prefix + n_tokens):
    # Tokens after t are zeros in a real decoder: mask them the same way.
    visible = jnp.where(jnp.arange(length)[None, :, None] <= t, x, 0.0)
    out, _ = fn(visible, layer.weights, layer.state, rng)
    _ready(out[:, t])
  return compile_s, n_tokens / (time.perf_counter() - start)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--prefixes', type=int, nargs='+',
                      default=[256, 1024, 4096])
  parser.add_argument('--tokens', type=int, default=32,
                      help='decoded tokens per prefix length (default 32)')
  args = parser.parse_args(argv)
  print(f'device: {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'{os.cpu_count()} cores, {platform.processor() or platform.machine()}'
        f'; JAX {jax.__version__}')
  print(f'layer: {LAYER}, d_model={D_MODEL}, batch 1; {args.tokens} decoded '
        f'tokens per prefix')
  max_len = max(args.prefixes) + args.tokens
  max_len = -(-max_len // LAYER['chunk_len']) * LAYER['chunk_len']
  x = jax.random.normal(jax.random.PRNGKey(1), (1, max_len, D_MODEL))
  print()
  print('| prefix | predict tokens/s | recompute tokens/s | speed-up | '
        'prefix call (predict) | warm-up predict / recompute |')
  print('|---:|---:|---:|---:|---:|---:|')
  for prefix in args.prefixes:
    prefix_s, compile_p, fast = bench_predict(x, prefix, args.tokens, max_len)
    compile_r, slow = bench_recompute(x, prefix, args.tokens, max_len)
    print(f'| {prefix} | {fast:.1f} | {slow:.1f} | {fast / slow:.1f}x | '
          f'{prefix_s * 1e3:.0f} ms | {compile_p:.1f} s / {compile_r:.1f} s |',
          flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
