"""Drop-in replacements for Trax 1.4.1's efficient-attention layers.

Importing this package imports Trax (install the `trax` extra:
`pip install 'lsh_jax[trax]'`). The layers keep Trax's constructor
arguments, weights and state, and compute with lsh_jax's jit-compiled
functions; they are gin-configurable as `lsh_jax.<ClassName>`.

  layers.py         LSHSelfAttention, SelfAttention (weights, state, wiring)
  pure.py           PureLSHSelfAttention, its Wrapper, MixedLSHSelfAttention
  encdec.py         EncDecAttention
  models.py         WithLSHJaxLayers: Trax models that build attention in
                    code (the encoder-decoder Reformer) with lsh_jax's layers
  kernels.py        the jit-compiled per-(example, head) computations
  heads.py          batching over (example, head) pairs, `n_parallel_heads`
  projected.py      the LSH layer's projections batch-wide, around that loop
  predict.py        incremental decoding (`mode='predict'`), LSH layer
  predict_dense.py  incremental decoding, dense SelfAttention
"""
from lsh_jax import _extras

# Without the extra: one line naming it and its install command.
_extras.require('trax', 'lsh_jax.trax')

from lsh_jax.trax.encdec import EncDecAttention  # noqa: E402
from lsh_jax.trax.layers import LSHSelfAttention  # noqa: E402
from lsh_jax.trax.layers import SelfAttention  # noqa: E402
from lsh_jax.trax.models import WithLSHJaxLayers  # noqa: E402
from lsh_jax.trax.pure import MixedLSHSelfAttention  # noqa: E402
from lsh_jax.trax.pure import PureLSHSelfAttention  # noqa: E402
from lsh_jax.trax.pure import PureLSHSelfAttentionWrapper  # noqa: E402

# The layers, each named as its Trax 1.4.1 counterpart.
LAYERS = ('EncDecAttention', 'LSHSelfAttention', 'MixedLSHSelfAttention',
          'PureLSHSelfAttention', 'PureLSHSelfAttentionWrapper',
          'SelfAttention')
__all__ = list(LAYERS) + ['WithLSHJaxLayers']
