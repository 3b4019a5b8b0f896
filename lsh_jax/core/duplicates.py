"""Exact multi-round attention: the duplicate-count correction (docs/paper.md).

The round combine (docs/algorithm.md §5) gives attention over the union of
the rounds' candidate sets, but a key that sits in k of a query's windows
is counted k times. The Reformer paper (Appendix A) removes this: every
copy of the pair (i, j) gets the logit term -log N_ij, where N_ij counts
the window entries of all rounds that pair query i with key j. Then the
copies' weights add up to one copy's and the output is softmax attention
over the union, each candidate once (`allow_duplicate_attention=False`).

The count, without an [L, L] array: a position t has one entry per round,
in flat chunk F_r(t) = r * M + (sorted position of t in round r) // C of
the R * M chunks. The window of chunk f holds chunks f + o, o in
[-before, after], modulo R * M (§3), so

  N_ij = sum over rounds r', r'' of #{o in [-before, after]:
                                      F_r''(j) = F_r'(i) + o  (mod R * M)},

the number of entries of j (one per round r'') in the windows of i's
entries (one per round r'). `round_logit_bias` evaluates it for every
logit of one round's chunked attention from the [R, L] table F: R^2 integer
comparisons per logit, memory [M, C, W * C] per round (linear in L).

`attend_across_buckets=False` restricts the candidates to the keys hashed,
in the query's round, to the query's bucket (the paper's P_i^r; Trax 1.2's
option): a window key of another bucket, or of another round's chunk, gets
-BUCKET_PENALTY, and only same-round, same-bucket entries count in N_ij.

The counts depend on the hash alone: integers, no gradient.
"""
import jax
import jax.numpy as jnp

__all__ = ['BUCKET_PENALTY', 'flat_chunks', 'round_logit_bias']

# A key outside the query's bucket (attend_across_buckets=False): further
# down than the self penalty (1e5), so that a token with no other candidate
# in its bucket falls back on itself (always in its own bucket), as at the
# causal position 0; Trax 1.2 used the same value.
BUCKET_PENALTY = 1e7


def flat_chunks(undo, chunk_len):
  """F int32[R, L]: F[r, t] = r * M + (sorted position of t in round r) // C.

  Args:
    undo: int32[R, L] every round's inverse permutation (`sort_buckets`).
    chunk_len: C.
  """
  n_rounds, length = undo.shape
  n_chunks = length // chunk_len
  rounds = jnp.arange(n_rounds, dtype=jnp.int32)[:, None]
  return rounds * n_chunks + undo // chunk_len


def _multiplicity(d, total, n_chunks_before, n_chunks_after):
  """#{o in [-before, after]: o = d (mod total)} for int arrays d.

  Windows narrower than all chunks give 0 or 1; wider ones repeat chunks.
  """
  d = d % total  # in [0, total)
  return ((n_chunks_after - d) // total + (n_chunks_before + d) // total
          + 1)


def round_logit_bias(round_index, *, table, buckets, q_pos, k_pos, k_chunk,
                     n_chunks_before, n_chunks_after, allow_duplicate,
                     across_buckets):
  """What round h's logits lose: float32[M, C, W * C], or None.

  Args:
    round_index: int32 scalar h.
    table: int32[R, L] `flat_chunks`.
    buckets: int[R, L] bucket ids (only compared within a round).
    q_pos: int32[M, C] round h's sorted positions, by chunk.
    k_pos: int32[M, W * C] positions of each query chunk's window keys.
    k_chunk: int32[M, W * C] the flat chunk each window key comes from.
    n_chunks_before, n_chunks_after: the window.
    allow_duplicate: False: subtract log N_ij from every candidate.
    across_buckets: False: penalise keys outside the query's bucket.

  Returns:
    None when both flags are True (nothing to change); otherwise the
    amount to subtract from each logit (stop_gradient'ed).
  """
  if allow_duplicate and across_buckets:
    return None
  n_rounds, length = table.shape
  n_chunks = length // q_pos.shape[1]
  total = n_rounds * n_chunks  # chunks on the flat axis
  q_chunks = table[:, q_pos][:, :, :, None]  # [R, M, C, 1]
  k_chunks = table[:, k_pos][:, :, None, :]  # [R, M, 1, W*C]
  count = None
  if across_buckets:
    # Every entry of j, in any round r'', against every entry of i.
    count = sum(
        _multiplicity(k_chunks[r2] - q_chunks[r1], total, n_chunks_before,
                      n_chunks_after)
        for r1 in range(n_rounds) for r2 in range(n_rounds))
    candidate = None
  else:
    q_buckets = buckets[:, q_pos][:, :, :, None]  # [R, M, C, 1]
    k_buckets = buckets[:, k_pos][:, :, None, :]  # [R, M, 1, W*C]
    if not allow_duplicate:
      count = sum(
          _multiplicity(k_chunks[r] - q_chunks[r], total, n_chunks_before,
                        n_chunks_after) * (k_buckets[r] == q_buckets[r])
          for r in range(n_rounds))
    same_round = (k_chunk // n_chunks == round_index)[:, None, :]
    candidate = same_round & (k_buckets[round_index] == q_buckets[round_index])
  bias = jnp.zeros(q_pos.shape + k_pos.shape[-1:], jnp.float32)
  if count is not None:
    # A candidate's count is >= 1 (its own entry); the max only keeps the
    # log finite where a non-candidate has none (it is penalised anyway).
    bias = jnp.log(jnp.maximum(count, 1).astype(jnp.float32))
  if candidate is not None:
    bias = jnp.where(candidate, bias, BUCKET_PENALTY)
  return jax.lax.stop_gradient(bias)
