"""lsh_jax: Reformer LSH self-attention in JAX.

Shape glossary used in every docstring:
  L   sequence length            D   query/key depth (d_qk)
  Dv  value depth (d_v)          R   hash rounds (n_hashes)
  NB  buckets per round          C   chunk length (chunk_len)
  N   chunks per round (L / C)   W   chunks in a window (1 + before + after)

The pipeline (SPEC.md): `hash_vectors` -> `sort_buckets` -> `attend_round`
(one round: sort, `chunked_attend`, `undo_sort`; vmapped over rounds) ->
`combine_rounds` (or, for long inputs, the rounds in turn into a running
combine: `lsh_jax.rounds.attend_rounds_in_turn`);
`lsh_attention` runs it all for one head; `attention_weights` returns the
effective [L, L] matrix it applies (small and medium L). `lsh_jax.oracle` is the NumPy
reference; `lsh_jax.trax_layer` (imports Trax) is the drop-in Trax layer.
This module imports neither Trax nor TensorFlow.
"""
from lsh_jax.attention import full_attention
from lsh_jax.attention import lsh_attention
from lsh_jax.attention import lsh_attention_from_buckets
from lsh_jax.chunked import chunked_attend
from lsh_jax.chunked import normalize_keys
from lsh_jax.combine import combine_rounds
from lsh_jax.combine import round_weights
from lsh_jax.hashing import auto_n_buckets
from lsh_jax.hashing import hash_vectors
from lsh_jax.hashing import hash_with_rotations
from lsh_jax.hashing import random_rotations
from lsh_jax.rounds import attend_round
from lsh_jax.sorting import sort_buckets
from lsh_jax.sorting import undo_sort
from lsh_jax.weights import attention_weights

__all__ = [
    'attend_round', 'attention_weights', 'auto_n_buckets', 'chunked_attend', 'combine_rounds', 'full_attention',
    'hash_vectors', 'hash_with_rotations', 'lsh_attention',
    'lsh_attention_from_buckets', 'normalize_keys', 'random_rotations',
    'round_weights', 'sort_buckets', 'undo_sort',
]
