"""Per-step cost of Flax decoding: does a step slow down with position?

    python benchmarks/flax_generate.py [--steps 520] [--cache 1024]

Builds a `lsh_jax.flax.ReformerLM` (2 LSH layers, d_model 256, 4 heads,
chunk_len 64, 2 rounds; random weights: the work does not depend on them),
gives it a 16-token prefix in one call (`generation.prefill`) and decodes
`--steps` tokens one `generation.step` at a time, the same compiled program
every step, each timed with `block_until_ready`. Prints the compile times
apart, then the step times around steps 10 and 500 (median of 10 steps
each) and their ratio: a cache of fixed size Lm makes the step's cost
independent of how many tokens came before (it depends on Lm).
"""
import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))  # this checkout's lsh_jax, not an installed one

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from lsh_jax import flax as lsh_flax  # noqa: E402
from lsh_jax.flax import generation  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=520)
  parser.add_argument('--cache', type=int, default=1024,
                      help='positions each layer keeps (Lm)')
  args = parser.parse_args(argv)
  attention = lambda *a, **k: lsh_flax.LSHSelfAttention(
      *a, n_hashes=2, chunk_len=64, **k)
  model = lsh_flax.ReformerLM(
      vocab_size=256, d_model=256, d_ff=512, d_attention_key=64,
      d_attention_value=64, n_layers=2, n_heads=4, dropout=0.0,
      max_len=4096, attention_type=attention, rngs=nnx.Rngs(0))
  prefix = jax.random.randint(jax.random.key(1), (1, 16), 1, 256)
  model.init_cache((1, args.cache))
  key = jax.random.key(2)
  inputs = jnp.concatenate([jnp.zeros((1, 1), jnp.int32), prefix], axis=1)
  start = time.perf_counter()
  token = generation.prefill(model, inputs, key, temperature=0.0)
  token.block_until_ready()
  prefill_s = time.perf_counter() - start
  times = []
  for i in range(args.steps):
    start = time.perf_counter()
    token = generation.step(model, token, jax.random.fold_in(key, i),
                            temperature=0.0)
    token.block_until_ready()
    times.append(time.perf_counter() - start)
  print(f'{platform.machine()}, {jax.devices()[0].platform}, jax '
        f'{jax.__version__}; cache Lm={args.cache}, prefix 16, 2 LSH layers')
  print(f'prefill (compile + run): {prefill_s:.2f} s; first step (compile '
        f'+ run): {times[0]:.2f} s')
  at = lambda i: float(np.median(times[i:i + 10])) * 1e3
  for i in (10, 500):
    if i + 10 <= len(times):
      print(f'step {i}-{i + 9}: median {at(i):.2f} ms')
  if len(times) >= 510:
    print(f'ratio step 500 / step 10: {at(500) / at(10):.2f}')


if __name__ == '__main__':
  main()
