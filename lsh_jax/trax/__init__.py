"""Drop-in replacements for Trax 1.4.1's efficient-attention layers.

Importing this package imports Trax (install the `trax` extra:
`pip install 'lsh_jax[trax]'`). The layers keep Trax's constructor
arguments, weights and state, and compute with lsh_jax's jit-compiled
functions; they are gin-configurable as `lsh_jax.<ClassName>`.

  layers.py   the layer classes (weights, state, the forward/backward wiring)
  kernels.py  the jit-compiled per-(example, head) computations they call
  heads.py    batching over (example, head) pairs, `n_parallel_heads`
  predict.py  incremental decoding (`mode='predict'`)
"""
from lsh_jax.trax.layers import LSHSelfAttention
from lsh_jax.trax.layers import SelfAttention

__all__ = ['LSHSelfAttention', 'SelfAttention']
