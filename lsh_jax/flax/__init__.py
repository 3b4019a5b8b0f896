"""Flax NNX modules: LSH self-attention and the Reformer (the `flax` extra).

  ReformerLM          the Reformer language model (Trax's ReformerLM):
                      reversible blocks, chunked feed-forward, learned,
                      sin-cos or axial positions
  LSHSelfAttention    Reformer's LSH self-attention, an `nnx.Module`
  SelfAttention       its dense twin: the same parameters, exact attention
  LocalSelfAttention  separate keys, chunked or dense (Trax's SelfAttention)
  generate            greedy or temperature sampling from a ReformerLM,
                      decoding with caches (`decode=True`, `init_cache` on
                      the model and on each attention module)
  from_trax           a Trax ReformerLM (live or a checkpoint file) as a
                      ReformerLM with its weights

Importing this package imports Flax; `import lsh_jax` does not. The
function underneath the attention is `lsh_jax.lsh_self_attention`.
docs/flax.md is the reference.
"""
from lsh_jax import _extras

# Without the extra: one line naming it and its install command.
_extras.require('flax', 'lsh_jax.flax')

from lsh_jax.flax.attention import LSHSelfAttention  # noqa: E402
from lsh_jax.flax.attention import SelfAttention  # noqa: E402
from lsh_jax.flax.from_trax import from_trax  # noqa: E402
from lsh_jax.flax.generation import generate  # noqa: E402
from lsh_jax.flax.local import LocalSelfAttention  # noqa: E402
from lsh_jax.flax.reformer import ReformerLM  # noqa: E402

__all__ = ['LSHSelfAttention', 'LocalSelfAttention', 'ReformerLM',
           'SelfAttention', 'from_trax', 'generate']
