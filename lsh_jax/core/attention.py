"""Public entry points: LSH self-attention and its dense reference.

`lsh_attention` = hash (§1) -> sort (§2) -> chunked attention (§3) ->
undo the sort (§4) -> combine rounds (§5), for one head of one sequence.
Each step is written for one round and `vmap`ped over the R rounds (or, for
long inputs, run round after round into a running combine); use `jax.vmap`
again for heads and batch. Arguments are validated in Python,
before tracing; the computation is one jit-compiled function per static
configuration.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lsh_jax.core import chunked
from lsh_jax.core import combine
from lsh_jax.core import duplicates
from lsh_jax.core import hashing
from lsh_jax.core import masks
from lsh_jax.core import padding
from lsh_jax.core import rounds
from lsh_jax.core import sorting
from lsh_jax.core import validation

_STATIC = ('chunk_len', 'n_chunks_before', 'n_chunks_after', 'causal',
           'attention_dropout', 'sequential_rounds', 'n_ids',
           'allow_duplicate_attention', 'attend_across_buckets')
# Logits processed per step of the chunk loop, summed over rounds: small
# enough to stay in the L2 cache while masks, exp and the value matmul read
# them (measured: one huge score tensor runs ~15x slower per chunk).
# Measured at 64K, one round of C = 64, W = 2: 4 chunks a step (2**15
# logits) run the forward 1.5x and the backward 1.25x faster than 16, and
# 8 chunks are as slow as 16; 1 to 4 are about equal.
_BLOCK_LOGITS = 2**15
# Except when all of a step's logits (every round attended at once, or one
# round in turn) fit this many: then no chunk loop at all. A loop step
# copies its block's inputs and outputs; at 1K-4K that costs more than the
# cache misses of one [M, C, W*C] pass (jax 0.10.2, one-process A/B at
# chunk 64, 4 rounds in turn, forward+backward: 1K 1.21-1.24x, 4K
# 1.15-1.26x faster, forward within noise). At 16K blocks of 2**19 logits
# are as fast as 2**15 in the backward and 0.88x in the forward.
_WHOLE_ROUND_LOGITS = 2**19
# Automatic rounds (`sequential_rounds=None`): from this many token-rounds
# R * L on, rounds run one after another into a running combine. One-process
# A/B at chunk 64 (vmapped -> in turn, median ms): forward+backward 256 x 4
# 3.3 -> 2.8, 512 x 8 18.2 -> 11.4, 1K x 4 18.7 -> 12.9, 2K x 4 47 -> 33,
# forward equal or faster; 128 x 2 equal (0.9 vs 1.0). In turn there is no
# [R, L, Dv] stack to fill, and each round's working set stays in cache.
_SEQUENTIAL_FROM = 2**10


def dropout_multiplier(key, rate, chunk_len, window_len, dtype):
  """The attention-dropout multiplier shared by every chunk and round.

  One `bernoulli(key, 1 - rate, [C, W * C])` draw, as Trax's `attend` makes
  it, scaled by 1 / (1 - rate).

  Returns:
    float[C, W * C].
  """
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(key, keep_prob, (chunk_len, window_len))
  return keep.astype(dtype) / jnp.asarray(keep_prob, dtype)


def chunks_per_block(n_rounds, n_chunks, logits_per_chunk):
  """All n_chunks when their logits fit `_WHOLE_ROUND_LOGITS`, else the
  largest divisor of n_chunks whose logits fit `_BLOCK_LOGITS`."""
  if n_rounds * n_chunks * logits_per_chunk <= _WHOLE_ROUND_LOGITS:
    return n_chunks
  target = max(1, _BLOCK_LOGITS // (n_rounds * logits_per_chunk))
  return max(b for b in range(1, min(target, n_chunks) + 1)
             if n_chunks % b == 0)


def round_schedule(sequential_rounds, n_rounds, length):
  """Whether rounds run one after another, for `sequential_rounds` True,
  False or None (automatic: by the number of token-rounds R * L)."""
  if sequential_rounds is None:
    return n_rounds > 1 and n_rounds * length >= _SEQUENTIAL_FROM
  return bool(sequential_rounds)


def _attend_buckets(q, v, buckets, mask, dropout_key, *, chunk_len,
                    n_chunks_before, n_chunks_after, causal,
                    attention_dropout, sequential_rounds, n_ids=None,
                    allow_duplicate_attention=True,
                    attend_across_buckets=True):
  """Steps 2-5 for given buckets int[R, L]; returns float[L, Dv]."""
  out_dtype = jnp.result_type(q, v)
  # Half-precision inputs: logits near the -1e5 self mask, log-sum-exps and
  # the round weights need float32's range and resolution.
  q, v = _at_least_float32(q), _at_least_float32(v)
  n_rounds = buckets.shape[0]
  sequential_rounds = round_schedule(sequential_rounds, n_rounds, q.shape[0])
  sticker, undo = sorting.sort_buckets(buckets, n_ids=n_ids)  # [R, L] each
  multiplier = None
  window_len = chunk_len * (1 + n_chunks_before + n_chunks_after)
  if attention_dropout > 0.0:
    multiplier = dropout_multiplier(dropout_key, attention_dropout, chunk_len,
                                    window_len, q.dtype)
  inputs = dict(
      q=q, keys=chunked.normalize_keys(q), v=v,
      mask=mask, sticker=sticker, undo=undo, chunk_len=chunk_len,
      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
      causal=causal, dropout_multiplier=multiplier,
      buckets=buckets, correction=(allow_duplicate_attention,
                                   attend_across_buckets),
      chunks_per_block=chunks_per_block(
          1 if sequential_rounds else n_rounds, q.shape[0] // chunk_len,
          chunk_len * window_len))
  if sequential_rounds:
    # One round at a time, combined as it finishes: memory of one round's
    # intermediates instead of R, in the backward pass too.
    out = rounds.attend_rounds_in_turn(**inputs)
  else:
    o, lse = jax.vmap(functools.partial(rounds.attend_round, **inputs))(
        jnp.arange(n_rounds, dtype=jnp.int32))  # [R, L, Dv], [R, L]
    out = combine.combine_rounds(o, lse)
  if mask is not None:
    # A padded query may see only padding, whose logits float32 cannot tell
    # apart at -1e9; its output is unused anyway: make it a clean zero.
    out = jnp.where(mask[:, None], out, 0)
  return out.astype(out_dtype)


def _at_least_float32(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _hash_and_attend(q, v, hash_key, mask, dropout_key, *, n_buckets,
                     n_hashes,
                     **static):
  """Steps 1-5 on a multiple of chunk_len; returns float[L, Dv]."""
  rotations = hashing.random_rotations(hash_key, q.shape[-1], n_buckets,
                                       n_hashes)
  buckets = hashing.hash_with_rotations(_at_least_float32(q), rotations,
                                        n_buckets, mask)
  n_ids = hashing.n_buckets_total(n_buckets) + 1  # + the padding id
  return _attend_buckets(q, v, buckets, mask, dropout_key, n_ids=n_ids,
                         **static)


def lsh_attention(q: ArrayLike, v: ArrayLike, *, hash_key: ArrayLike,
                  n_buckets: hashing.NBuckets = None, n_hashes: int,
                  chunk_len: int,
                  n_chunks_before: int = 1, n_chunks_after: int = 0,
                  causal: bool = False, mask: Optional[ArrayLike] = None,
                  attention_dropout: float = 0.0,
                  dropout_key: Optional[ArrayLike] = None,
                  sequential_rounds: Optional[bool] = None,
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
      combined into the output as it finishes (`attend_rounds_in_turn`),
      peak memory of one round in the forward and backward passes; False:
      all at once (`vmap`); None (default): automatic, by R * L
      (`round_schedule`). The same results either way, to a few float32
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
      allow_duplicate_attention=duplicates.check_flag(
          'allow_duplicate_attention', allow_duplicate_attention),
      attend_across_buckets=duplicates.check_flag(
          'attend_across_buckets', attend_across_buckets))


def lsh_attention_from_buckets(
    q: ArrayLike, v: ArrayLike, buckets: ArrayLike, *, chunk_len: int,
    n_chunks_before: int = 1, n_chunks_after: int = 0, causal: bool = False,
    mask: Optional[ArrayLike] = None, attention_dropout: float = 0.0,
    dropout_key: Optional[ArrayLike] = None,
    sequential_rounds: Optional[bool] = None,
    n_ids: Optional[int] = None, allow_duplicate_attention: bool = True,
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
      allow_duplicate_attention=duplicates.check_flag(
          'allow_duplicate_attention', allow_duplicate_attention),
      attend_across_buckets=duplicates.check_flag(
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


def dense_attention(q, k, v, mask, *, causal, dropout_multiplier=None):
  """Dense attention: `full_attention`'s computation, unchecked, unjitted.

  Args:
    q: float[L, D]; k: float[L, D] or None (shared QK); v: float[L, Dv];
    mask: bool[L] or None.
    causal: a query does not see later positions.
    dropout_multiplier: float[L, L] applied to the probabilities, or None
      (the Trax layer's attention dropout with separate keys).

  Returns:
    float[L, Dv]; zeros at padded positions.
  """
  out_dtype = jnp.result_type(q, v)
  q, v = _at_least_float32(q), _at_least_float32(v)
  k = None if k is None else _at_least_float32(k)
  positions = jnp.arange(q.shape[0], dtype=jnp.int32)
  if k is None:  # shared QK: normalised keys, a token avoids itself
    dots = masks.mask_logits(q @ chunked.normalize_keys(q).T, positions,
                             positions, mask, causal=causal)
  else:
    dots = q @ (k / jnp.sqrt(jnp.asarray(k.shape[-1], k.dtype))).T
    dots = masks.mask_logits(dots, positions, positions, mask, causal=causal,
                             exclude_self=False)
  probs = jax.nn.softmax(dots, axis=-1)
  if dropout_multiplier is not None:
    probs = probs * dropout_multiplier
  out = probs @ v
  if mask is not None:
    out = jnp.where(mask[:, None], out, 0)
  return out.astype(out_dtype)


_full_attention = jax.jit(dense_attention, static_argnames=('causal',))


def full_attention(q: ArrayLike, v: ArrayLike, *,
                   k: Optional[ArrayLike] = None, causal: bool = False,
                   mask: Optional[ArrayLike] = None) -> jax.Array:
  """Dense attention with the same conventions as `lsh_attention`.

  With shared QK (`k=None`): length-normalised keys scaled by 1/sqrt(D) and
  the exclude-self mask. With separate keys `k`: keys `k / sqrt(D)` and no
  exclude-self mask (Trax's `attend` with `share_qk=False`). Causal and
  padding masks either way. O(L^2) memory: the exact reference.

  Args:
    q: float[L, D]; v: float[L, Dv]; k: float[L, D] or None;
    mask: bool[L] or None.

  Returns:
    float[L, Dv].
  """
  validation.check_matrix('q', q)
  validation.check_matrix('v', v)
  if v.shape[0] != q.shape[0]:
    raise ValueError(f'v must have the same length as q ({q.shape[0]}), got '
                     f'shape {tuple(v.shape)}')
  if k is not None:
    validation.check_matrix('k', k)
    if k.shape != q.shape:
      raise ValueError(f'k must have the shape of q {tuple(q.shape)}, got '
                       f'{tuple(k.shape)}')
  validation.check_mask(mask, q.shape[0])
  return _full_attention(q, k, v, mask, causal=bool(causal))
