"""The LSH entry points: validate the arguments, pad, dispatch.

`lsh_attention` = hash (§1) -> sort (§2) -> chunked attention (§3) ->
undo the sort (§4) -> combine rounds (§5), for one head of one sequence;
`lsh_attention_from_buckets` starts at the sort. Arguments are validated in
Python before tracing (`validation`); any length is padded to a multiple of
the chunk (`padding`); the rounds run at once or in turn (`rounds`, as
`schedule` picks). Each is one jit-compiled function per static
configuration; use `jax.vmap` for heads and batch.
"""
import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lsh_jax.core import chunked
from lsh_jax.core import hashing
from lsh_jax.core import masks
from lsh_jax.core import padding
from lsh_jax.core import rounds
from lsh_jax.core import schedule
from lsh_jax.core import sorting
from lsh_jax.core import validation

__all__ = ['lsh_attention', 'lsh_attention_from_buckets']

_STATIC = ('chunk_len', 'n_chunks_before', 'n_chunks_after', 'causal',
           'attention_dropout', 'sequential_rounds', 'n_ids',
           'allow_duplicate_attention', 'attend_across_buckets')


def _attend_buckets(q, v, buckets, mask, dropout_key, *, chunk_len,
                    n_chunks_before, n_chunks_after, causal,
                    attention_dropout, sequential_rounds, n_ids=None,
                    allow_duplicate_attention=True,
                    attend_across_buckets=True):
  """Steps 2-5 for given buckets int[R, L]; returns float[L, Dv]."""
  out_dtype = jnp.result_type(q, v)
  q, v = masks.at_least_float32(q), masks.at_least_float32(v)
  n_rounds = buckets.shape[0]
  in_turn = schedule.round_schedule(sequential_rounds, n_rounds, q.shape[0])
  sticker, undo = sorting.sort_buckets(buckets, n_ids=n_ids)  # [R, L] each
  multiplier = None
  window_len = chunk_len * (1 + n_chunks_before + n_chunks_after)
  if attention_dropout > 0.0:
    multiplier = chunked.dropout_multiplier(
        dropout_key, attention_dropout, chunk_len, window_len, q.dtype)
  out = rounds.attend_rounds(
      in_turn=in_turn, q=q, keys=chunked.normalize_keys(q), v=v,
      mask=mask, sticker=sticker, undo=undo, chunk_len=chunk_len,
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=causal, dropout_multiplier=multiplier,
      buckets=buckets, correction=(allow_duplicate_attention,
                                   attend_across_buckets),
      chunks_per_block=schedule.chunks_per_block(
          1 if in_turn else n_rounds, q.shape[0] // chunk_len,
          chunk_len * window_len))
  if mask is not None:
    # A padded query may see only padding, whose logits float32 cannot tell
    # apart at -1e9; its output is unused anyway: make it a clean zero.
    out = jnp.where(mask[:, None], out, 0)
  return out.astype(out_dtype)


def _hash_and_attend(q, v, hash_key, mask, dropout_key, *, n_buckets,
                     n_hashes,
                     **static):
  """Steps 1-5 on a multiple of chunk_len; returns float[L, Dv]."""
  rotations = hashing.random_rotations(hash_key, q.shape[-1], n_buckets,
                                       n_hashes)
  buckets = hashing.hash_with_rotations(masks.at_least_float32(q), rotations,
                                        n_buckets, mask)
  n_ids = hashing.n_buckets_total(n_buckets) + 1  # + the padding id
  return _attend_buckets(q, v, buckets, mask, dropout_key, n_ids=n_ids,
                         **static)


def lsh_attention(q: ArrayLike, v: ArrayLike, *, hash_key: ArrayLike,
                  n_buckets: hashing.NBuckets = None, n_hashes: int,
                  chunk_len: int,
                  n_chunks_before: int = 1, n_chunks_after: int = 0,
                  causal: bool = False, mask: ArrayLike | None = None,
                  attention_dropout: float = 0.0,
                  dropout_key: ArrayLike | None = None,
                  sequential_rounds: bool | None = None,
                  allow_duplicate_attention: bool = True,
                  attend_across_buckets: bool = True) -> jax.Array:
  """LSH self-attention for one head of one sequence (docs/algorithm.md).

  Any length L >= 1 works: when L is not a multiple of `chunk_len` (or
  `chunk_len > L`) the inputs are padded internally with masked positions
  up to the next multiple and the padding is cut off again (see
  `lsh_jax.core.padding`); the real positions get exactly what that padded,
  masked computation gives.

  Args:
    q: float[L, D] shared queries/keys.
    v: float[L, Dv] values.
    hash_key: PRNG key for the hash rotations (`random_rotations`).
    n_buckets: even int, sequence of even factors, or None (default) for
      `auto_n_buckets(L, chunk_len)` with the real length L (not the
      padded one).
    n_hashes: number of hash rounds R >= 1.
    chunk_len: C >= 1, any size (L is padded to a multiple of it).
    n_chunks_before: key chunks before each query chunk (default 1).
    n_chunks_after: key chunks after each query chunk (default 0).
    causal: a query does not see later positions.
    mask: bool[L], True for real tokens, or None. Masked positions'
      contents never reach real outputs (they are cleared first, so even
      NaN or inf there is harmless).
    attention_dropout: rate in [0, 1) applied to the attention
      probabilities.
    dropout_key: PRNG key for attention dropout; required if the rate > 0.
    sequential_rounds: True: run the rounds one after another, each
      combined into the output as it finishes
      (`rounds.attend_rounds_in_turn`),
      peak memory of one round in the forward and backward passes; False:
      all at once (`vmap`); None (default): automatic, by R * L
      (`schedule.round_schedule`). The same results either way, to a few float32
      ulps.
    allow_duplicate_attention: True (default; the lab's and Trax 1.4.1's
      attention): a key in k of a query's windows counts k times in the
      round combine. False: the Reformer paper's exact multi-round
      attention (its Appendix A): each copy's logit gets -log N_ij, N_ij the
      number of the query's window entries (all rounds) that hold key j, so
      the output is softmax attention over the union of the candidate sets,
      each key once (`lsh_jax.core.duplicates`; docs/paper.md).
    attend_across_buckets: True (default): every key of a window is a
      candidate. False: only keys hashed, in the query's round, to the
      query's bucket (the paper's P_i^r); the others, and keys of another
      round's chunks, are masked.

  Returns:
    float[L, Dv] in the inputs' dtype (half-precision inputs are computed
    in float32); zeros at padded positions. Differentiable in `q` and `v`
    (the hash takes no gradient).

  Raises:
    ValueError, before tracing, for any argument that cannot work (see
    `lsh_jax.core.validation`), naming the argument and what was expected.

  Example (one head; with one chunk holding every token, LSH attention is
  dense attention):

  >>> import jax, jax.numpy as jnp
  >>> from lsh_jax import full_attention, lsh_attention
  >>> q = jax.random.normal(jax.random.key(0), (10, 4))
  >>> v = jax.random.normal(jax.random.key(1), (10, 3))
  >>> lsh_attention(q, v, hash_key=jax.random.key(2), n_hashes=2,
  ...               chunk_len=4, causal=True).shape
  (10, 3)
  >>> one_chunk = lsh_attention(q, v, hash_key=jax.random.key(2), n_hashes=1,
  ...                           chunk_len=10, n_chunks_before=0)
  >>> bool(jnp.allclose(one_chunk, full_attention(q, v), atol=1e-5))
  True
  """
  rate = validation.check_attention_args(
      q, v, mask, chunk_len, n_chunks_before, n_chunks_after,
      attention_dropout, dropout_key)
  validation.check_key('hash_key', hash_key)
  if n_buckets is None:
    n_buckets = hashing.auto_n_buckets(q.shape[0], chunk_len)
  return _lsh_attention_any_length(
      q, v, hash_key, mask, dropout_key,
      n_buckets=validation.check_n_buckets(n_buckets),
      n_hashes=validation.check_positive_int('n_hashes', n_hashes),
      chunk_len=chunk_len, n_chunks_before=n_chunks_before,
      n_chunks_after=n_chunks_after, causal=bool(causal),
      attention_dropout=rate, sequential_rounds=(
          None if sequential_rounds is None else bool(sequential_rounds)),
      allow_duplicate_attention=validation.check_flag(
          'allow_duplicate_attention', allow_duplicate_attention),
      attend_across_buckets=validation.check_flag(
          'attend_across_buckets', attend_across_buckets))


def lsh_attention_from_buckets(
    q: ArrayLike, v: ArrayLike, buckets: ArrayLike, *, chunk_len: int,
    n_chunks_before: int = 1, n_chunks_after: int = 0, causal: bool = False,
    mask: ArrayLike | None = None, attention_dropout: float = 0.0,
    dropout_key: ArrayLike | None = None,
    sequential_rounds: bool | None = None,
    n_ids: int | None = None, allow_duplicate_attention: bool = True,
    attend_across_buckets: bool = True) -> jax.Array:
  """LSH self-attention given precomputed buckets (e.g. a layer's state).

  Any length L >= 1, as in `lsh_attention`: appended padding positions take
  their round's largest bucket id, so they sort after every real token.

  Args:
    q, v, chunk_len, n_chunks_before, n_chunks_after, causal, mask,
      attention_dropout, dropout_key, sequential_rounds,
      allow_duplicate_attention, attend_across_buckets: as in
      `lsh_attention` (buckets are compared within a round only).
    buckets: int[R, L] bucket ids per round. Round offsets may be present or
      not: only the order within each round matters.
    n_ids: a static bound, all bucket ids < n_ids, or None. Only speed
      depends on it: with a bound the sort uses one packed int32 key.

  Returns:
    float[L, Dv].

  Example (one round, every token in one bucket; constant values):

  >>> import jax, jax.numpy as jnp
  >>> from lsh_jax import lsh_attention_from_buckets
  >>> q = jax.random.normal(jax.random.key(0), (8, 4))
  >>> buckets = jnp.zeros((1, 8), jnp.int32)
  >>> out = lsh_attention_from_buckets(q, jnp.ones((8, 2)), buckets,
  ...                                  chunk_len=4)
  >>> out.shape, bool(jnp.allclose(out, 1.0))
  ((8, 2), True)
  """
  rate = validation.check_attention_args(
      q, v, mask, chunk_len, n_chunks_before, n_chunks_after,
      attention_dropout, dropout_key)
  validation.check_buckets(buckets, q.shape[0])
  return _from_buckets_any_length(
      q, v, buckets, mask, dropout_key, chunk_len=chunk_len,
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=bool(causal), attention_dropout=rate,
      sequential_rounds=(None if sequential_rounds is None
                         else bool(sequential_rounds)),
      n_ids=None if n_ids is None else validation.check_positive_int(
          'n_ids', n_ids),
      allow_duplicate_attention=validation.check_flag(
          'allow_duplicate_attention', allow_duplicate_attention),
      attend_across_buckets=validation.check_flag(
          'attend_across_buckets', attend_across_buckets))


# The entry points' only jits (the helpers they call are traced into them).
# Any length (lsh_jax.core.padding) inside the same compiled program as the
# attention: one dispatch per call, and the same program whether or not the
# caller is itself jitted, so the results are bit-identical either way.
@functools.partial(jax.jit, static_argnames=_STATIC + ('n_buckets', 'n_hashes'))
def _lsh_attention_any_length(q, v, hash_key, mask, dropout_key, **static):
  length = q.shape[0]
  if padding.needs_preparing(length, static['chunk_len'], mask):
    q, v, mask, _ = padding.prepare(q, v, mask,
                                    chunk_len=static['chunk_len'])
  out = _hash_and_attend(q, v, hash_key, mask, dropout_key, **static)
  return padding.strip(out, length)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _from_buckets_any_length(q, v, buckets, mask, dropout_key, **static):
  length = q.shape[0]
  if padding.needs_preparing(length, static['chunk_len'], mask):
    q, v, mask, buckets = padding.prepare(q, v, mask, buckets,
                                          chunk_len=static['chunk_len'])
  out = _attend_buckets(q, v, buckets, mask, dropout_key, **static)
  return padding.strip(out, length)
