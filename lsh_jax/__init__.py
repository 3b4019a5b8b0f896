"""lsh_jax: Reformer LSH self-attention in JAX.

Shape glossary, one meaning per letter in every docstring of the package:
  B   batch (examples)           T   length in the multi-head layout
  L   sequence length            D   query/key depth (d_qk)
  Dv  value depth (d_v)          R   hash rounds (n_hashes)
  NB  buckets per round          C   chunk length (chunk_len)
  N   chunks per round (L / C)   W   chunks in a window (1 + before + after)
  H   heads                      K   chunks per block of the chunk loop
  E   chunks of a round plus its halo (N + before + after)
  Dm  model depth (d_model)      P   (example, head) pairs, B * H

The package's layers (each imports only the ones above it in this list):
  lsh_jax.core       the pipeline in pure JAX, one step per module; its
                     building blocks (`sort_buckets`, `chunked_attend`, ...)
                     are public there
  lsh_jax.reference  the NumPy oracle (`lsh_jax.oracle` for short)
  lsh_jax.trax       drop-in Trax layers (needs the `trax` extra)
  lsh_jax.apps       the `lsh-jax` command line and its applications

The algorithm, with the section numbers docstrings cite (§1-§6), is
docs/algorithm.md. `import lsh_jax` imports JAX and NumPy only: never Trax,
TensorFlow, Flax or matplotlib.
"""
import warnings

from lsh_jax.core.attention import full_attention
from lsh_jax.core.attention import lsh_attention
from lsh_jax.core.attention import lsh_attention_from_buckets
from lsh_jax.core.hashing import auto_n_buckets
from lsh_jax.core.hashing import hash_vectors
from lsh_jax.core.multihead import lsh_self_attention
from lsh_jax.core.weights import attention_weights

__version__ = '0.2.0'

__all__ = [
    'attention_weights', 'auto_n_buckets', 'full_attention', 'hash_vectors',
    'lsh_attention', 'lsh_attention_from_buckets', 'lsh_self_attention',
]

# Building blocks that lived at the top level before 0.2; they now live in
# `lsh_jax.core` and still resolve here, with a warning.
_MOVED_TO_CORE = (
    'attend_round', 'chunked_attend', 'combine_rounds', 'hash_with_rotations',
    'normalize_keys', 'random_rotations', 'round_weights', 'sort_buckets',
    'undo_sort',
)


def __getattr__(name):
  if name in _MOVED_TO_CORE:
    warnings.warn(f'lsh_jax.{name} moved to lsh_jax.core.{name}; the old '
                  'name will be removed in a future release',
                  DeprecationWarning, stacklevel=2)
    from lsh_jax import core  # pylint: disable=import-outside-toplevel
    return getattr(core, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
