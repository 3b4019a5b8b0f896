"""lsh_jax: Reformer LSH self-attention in JAX.

Shape glossary, one meaning per letter in every docstring of the package.
The multi-head layout is jax.nn's (`jax.nn.dot_product_attention`):
  B   batch (examples)           T   length
  N   heads                      H   query/key depth per head
  Hv  value depth per head       P   (example, head) pairs, B * N
One head of one sequence (`lsh_attention`: the [T, H] and [T, Hv] slice of
one (example, head) pair):
  L   length (= T)               D   query/key depth (d_qk, = H)
  Dv  value depth (d_v, = Hv)    R   hash rounds (n_hashes)
  NB  buckets per round          C   chunk length (chunk_len)
  M   chunks per round (L / C)   W   chunks in a window (1 + before + after)
  K   chunks per block of the chunk loop
  E   chunks of a round plus its halo (M + before + after)
Layers and models:
  Dm  model depth (d_model)      Dff feed-forward depth
  V   vocabulary size            F   a Flax module's in_features
  Lm  decoding memory length (predict_mem_len)
  Ks  memory keys a decoded token attends to

The package's layers (each imports only the ones above it in this list):
  lsh_jax.core       the pipeline in pure JAX, one step per module; its
                     building blocks (`sort_buckets`, `chunked_attend`, ...)
                     are public there
  lsh_jax.reference  the NumPy oracle (`lsh_jax.oracle` for short)
  lsh_jax.trax       drop-in Trax layers (needs the `trax` extra)
  lsh_jax.flax       Flax NNX modules (needs the `flax` extra)
  lsh_jax.equinox    an Equinox module (needs the `equinox` extra)
  lsh_jax.apps       the `lsh-jax` command line and its applications

The algorithm, with the section numbers docstrings cite (§1-§6), is
docs/algorithm.md. `import lsh_jax` imports JAX and NumPy only: never Trax,
TensorFlow, Flax, Equinox or matplotlib.
"""
from lsh_jax.core.attention import lsh_attention
from lsh_jax.core.attention import lsh_attention_from_buckets
from lsh_jax.core.dense import full_attention
from lsh_jax.core.hashing import auto_n_buckets
from lsh_jax.core.hashing import hash_vectors
from lsh_jax.core.multihead import lsh_self_attention
from lsh_jax.core.weights import attention_weights

__version__ = '0.2.0'

__all__ = [
    'attention_weights', 'auto_n_buckets', 'full_attention', 'hash_vectors',
    'lsh_attention', 'lsh_attention_from_buckets', 'lsh_self_attention',
]

