"""An Equinox module for LSH self-attention (needs the `equinox` extra).

  LSHSelfAttention   Reformer's LSH self-attention, an `eqx.Module`: one
                     sequence [T, F], `key=` for randomness, `jax.vmap`
                     for batches (Equinox's conventions)

Importing this package imports Equinox; `import lsh_jax` does not. The
function underneath is `lsh_jax.lsh_self_attention`; the module computes
what `lsh_jax.flax.LSHSelfAttention` computes on one sequence.
docs/equinox.md is the reference.
"""
try:
  import equinox as _equinox  # noqa: F401  (the extra's check)
except ImportError as error:
  raise ImportError(
      "lsh_jax.equinox needs Equinox, which is not installed: "
      "pip install 'lsh_jax[equinox]'") from error

from lsh_jax.equinox.attention import LSHSelfAttention

__all__ = ['LSHSelfAttention']
