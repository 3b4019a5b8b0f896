"""Flax NNX modules for LSH self-attention (needs the `flax` extra).

  LSHSelfAttention   Reformer's LSH self-attention, an `nnx.Module`
  SelfAttention      its dense twin: the same parameters, exact attention

Importing this package imports Flax; `import lsh_jax` does not. The
function underneath is `lsh_jax.lsh_self_attention`. docs/flax.md is the
reference.
"""
from lsh_jax import _extras

# Without the extra: one line naming it and its install command.
_extras.require('flax', 'lsh_jax.flax')

from lsh_jax.flax.attention import LSHSelfAttention  # noqa: E402
from lsh_jax.flax.attention import SelfAttention  # noqa: E402

__all__ = ['LSHSelfAttention', 'SelfAttention']
