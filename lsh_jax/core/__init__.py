"""The LSH attention pipeline in pure JAX, one step per module.

Building blocks (public, documented in docs/api.md; the entry points that
chain them are re-exported by `lsh_jax`):

  hashing     `hash_vectors`, `random_rotations`, `hash_with_rotations`,
              `auto_n_buckets`                                  (§1)
  sorting     `sort_buckets`, `undo_sort`                       (§2, §4)
  chunked     `chunked_attend`, `normalize_keys`                (§3)
  rounds      `attend_round`: one round, sort to unsort; the
              rounds vmapped or run in turn                     (§2-§4)
  combine     `combine_rounds`, `round_weights`, and the
              combine's backward                                (§5)
  attention   `lsh_attention`, `lsh_attention_from_buckets`: the
              entry points (validate, pad, dispatch)
  dense       `full_attention`: dense attention, the O(L^2) reference
  multihead   `lsh_self_attention`, `head_keys`: batch and heads in
              jax.nn's [B, T, N, H] layout
  weights     `attention_weights`: the effective [L, L] matrix
  local       Trax's dense and chunked (local) attention with separate
              keys: `attend`, `look_adjacent`, `scale_keys`
  schedule    chunks per loop step, rounds at once or in turn: the
              measured speed heuristics
  masks, padding, validation: shared helpers (mask constants, any-length
              padding, argument checks)

Section numbers refer to docs/algorithm.md.
"""
from lsh_jax.core.attention import lsh_attention
from lsh_jax.core.attention import lsh_attention_from_buckets
from lsh_jax.core.dense import full_attention
from lsh_jax.core.chunked import chunked_attend
from lsh_jax.core.chunked import normalize_keys
from lsh_jax.core.combine import combine_rounds
from lsh_jax.core.combine import round_weights
from lsh_jax.core.hashing import auto_n_buckets
from lsh_jax.core.hashing import hash_vectors
from lsh_jax.core.hashing import hash_with_rotations
from lsh_jax.core.hashing import random_rotations
from lsh_jax.core.multihead import head_keys
from lsh_jax.core.multihead import lsh_self_attention
from lsh_jax.core.rounds import attend_round
from lsh_jax.core.sorting import sort_buckets
from lsh_jax.core.sorting import undo_sort
from lsh_jax.core.weights import attention_weights

__all__ = [
    'attend_round', 'attention_weights', 'auto_n_buckets', 'chunked_attend',
    'combine_rounds', 'full_attention', 'hash_vectors', 'hash_with_rotations',
    'head_keys', 'lsh_attention', 'lsh_attention_from_buckets',
    'lsh_self_attention', 'normalize_keys',
    'random_rotations', 'round_weights', 'sort_buckets', 'undo_sort',
]
