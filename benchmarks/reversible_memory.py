"""Activation memory of one training step: reversible ReformerLM vs not.

    python benchmarks/reversible_memory.py [--layers 2 6 12] [--length 4096]

For each depth, the Flax `ReformerLM` (LSH attention) is built twice with
the same weights, `reversible=True` (the custom VJP that recomputes each
block's inputs in the backward pass) and `reversible=False` (plain autodiff
of the same blocks), and one training step (loss and gradients of every
parameter, then an optax Adam update) is compiled, not run. The table
gives XLA's compiled temporary memory (`memory_analysis()`: exact, no
noise) and the parameter bytes for scale. Compiling takes minutes at 4K on
a CPU; nothing is executed.
"""
import argparse
import functools
import os
import platform
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))  # this checkout's lsh_jax, not an installed one

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from lsh_jax.flax import LSHSelfAttention  # noqa: E402
from lsh_jax.flax import ReformerLM  # noqa: E402

CONFIG = dict(vocab_size=256, d_model=256, d_ff=1024, d_attention_key=64,
              d_attention_value=64, n_heads=4, dropout=0.1,
              attention_type=functools.partial(LSHSelfAttention, n_hashes=2,
                                               chunk_len=64))


def step_memory(n_layers, length, batch, reversible, ff_chunk_size):
  """(temp bytes, parameter bytes) of one compiled Adam step."""
  model = ReformerLM(**CONFIG, n_layers=n_layers, max_len=length,
                     ff_chunk_size=ff_chunk_size, reversible=reversible,
                     rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = optax.adam(1e-3)

  def train_step(params, rest, opt_state, tokens):
    def loss(model):
      return optax.softmax_cross_entropy_with_integer_labels(
          model(tokens), tokens).mean()
    model = nnx.merge(graphdef, params, rest)
    value, grads = nnx.value_and_grad(loss)(model)
    grads = nnx.state(grads, nnx.Param)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return value, optax.apply_updates(params, updates), opt_state

  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  compiled = jax.jit(train_step).lower(
      params, rest, optimizer.init(params), tokens).compile()
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  return compiled.memory_analysis().temp_size_in_bytes, param_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--layers', type=int, nargs='+', default=[2, 6, 12])
  parser.add_argument('--length', type=int, default=4096)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--ff-chunk-size', type=int, default=0)
  args = parser.parse_args()
  print(f'ReformerLM {CONFIG["d_model"]}/{CONFIG["d_ff"]}, '
        f'{CONFIG["n_heads"]} heads, LSH 2 rounds chunk 64, dropout 0.1, '
        f'batch {args.batch}, L {args.length}, ff_chunk_size '
        f'{args.ff_chunk_size}; one optax Adam step, compiled only '
        f'(jax {jax.__version__}, {platform.machine()} '
        f'{jax.default_backend()})')
  print()
  print('| layers | params MB | temp MB, reversible | temp MB, plain autodiff'
        ' | plain / reversible |')
  print('|---|---|---|---|---|')
  mb = lambda b: b / 2 ** 20
  for n_layers in args.layers:
    rev, param_bytes = step_memory(n_layers, args.length, args.batch, True,
                                   args.ff_chunk_size)
    plain, _ = step_memory(n_layers, args.length, args.batch, False,
                           args.ff_chunk_size)
    print(f'| {n_layers} | {mb(param_bytes):.1f} | {mb(rev):.1f} | '
          f'{mb(plain):.1f} | {plain / rev:.2f}x |', flush=True)


if __name__ == '__main__':
  main()
