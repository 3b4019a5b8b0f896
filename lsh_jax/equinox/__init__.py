"""An Equinox module for LSH self-attention (needs the `equinox` extra).

  LSHSelfAttention   Reformer's LSH self-attention, an `eqx.Module`: one
                     sequence [T, F], `key=` for randomness, `jax.vmap`
                     for batches (Equinox's conventions)

Importing this package imports Equinox; `import lsh_jax` does not. The
function underneath is `lsh_jax.lsh_self_attention`; the module computes
what `lsh_jax.flax.LSHSelfAttention` computes on one sequence.
docs/equinox.md is the reference.
"""
from lsh_jax import _extras

# Without the extra: one line naming it and its install command.
_extras.require('equinox', 'lsh_jax.equinox')

from lsh_jax.equinox.attention import LSHSelfAttention  # noqa: E402

__all__ = ['LSHSelfAttention']
