"""The plain NumPy reference for LSH self-attention, one head at a time.

It follows docs/algorithm.md step by step, written to be read rather than
to be fast: loops where they show the algorithm, vectorised NumPy where that
is just as clear. Everything is computed in float64, so the oracle is more
precise than the float32 code it checks. No JAX here: the oracle must not
share a bug with the code under test.

Letter glossary used in the shapes below (the package's, see `lsh_jax`):
  L   sequence length            D   query/key depth (d_qk)
  Dv  value depth (d_v)          R   hash rounds (n_hashes)
  NB  buckets per round          C   chunk length (chunk_len)
  M   chunks per round (L / C)   W   chunks in a window (1 + before + after)

The pipeline, in the course lab's flat layout (all rounds side by side on
one axis of R * L entries):

  1. `our_hash_vectors`   bucket ids [R * L], with round offsets  (§1)
  2. `sort_buckets`       sort by (bucket, position)              (§2)
  3. `attend`             chunked attention with look-adjacent    (§3)
  4. `unsort_rounds`      back to the original order              (§4)
  5. `combine_rounds`     re-weight the rounds by their lse       (§5)

With `allow_duplicate_attention=False` (the paper's exact multi-round
attention, Appendix A), `duplicate_counts` first counts, for every query i
and key j, how many window entries of all rounds hold the pair (i, j), and
`attend` subtracts log N_ij from each of them, so the combined output is
softmax attention over the union of the candidate sets, each key once.
With `attend_across_buckets=False` a window key counts as a candidate only
if it was hashed, in the query's round, to the query's bucket.

`lsh_attention` runs all five for one head (the core's `lsh_attention`);
`full_attention` is dense attention with the same conventions. The lab's
teaching helpers live in `lsh_jax.reference.lab`, the decoding reference in
`lsh_jax.reference.decode`.
"""
import math

import numpy as np

__all__ = [
    'adjacent_chunks', 'attend', 'auto_n_buckets', 'bucket_factors',
    'BUCKET_PENALTY', 'CAUSAL_PENALTY', 'combine_rounds',
    'duplicate_counts', 'full_attention', 'length_normalized', 'logsumexp',
    'lsh_attention', 'mask_logits', 'NORM_EPSILON', 'our_hash_vectors',
    'our_softmax', 'PADDING_PENALTY', 'SELF_PENALTY', 'shared_qk_keys',
    'sort_buckets', 'unsort_rounds',
]

# The masks are *subtracted* from the logits (docs/algorithm.md §3), never
# set with `where`.
#
# A key in a query's future must get no probability at all: exp(-1e9)
# underflows to exactly 0 next to any real logit.
CAUSAL_PENALTY = 1e9
# Keys are the (normalised) queries themselves, so a token's dot product with
# itself is the largest in its row. It is pushed down by a large but *finite*
# amount: a token still attends to itself when nothing else is available
# (causal position 0, a real token surrounded by padding).
SELF_PENALTY = 1e5
# Padding keys must never receive probability, at any position (including
# positions 0 and 1, which Trax 1.4.1 leaves unmasked).
PADDING_PENALTY = 1e9
# attend_across_buckets=False: a window key hashed to another bucket (or
# taken from another round's chunk) is removed. Below the self penalty, so a
# token still falls back on itself, and far above any real logit.
BUCKET_PENALTY = 1e7
# Keeps the key normalisation finite for an all-zero query.
NORM_EPSILON = 1e-6


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def logsumexp(x, axis=-1, keepdims=False):
  """log(sum(exp(x))) along `axis`, computed stably (max subtracted first)."""
  x = np.asarray(x, np.float64)
  peak = np.max(x, axis=axis, keepdims=True)
  out = peak + np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True))
  return out if keepdims else np.squeeze(out, axis=axis)


def length_normalized(x, epsilon=NORM_EPSILON):
  """Scales each row of x [..., D] to unit root-mean-square."""
  variance = np.mean(x**2, axis=-1, keepdims=True)
  return x / np.sqrt(variance + epsilon)


def shared_qk_keys(q):
  """The keys of shared-QK attention: float[L, D] -> float[L, D].

  Keys are the queries, length-normalised, then divided by sqrt(D).
  """
  return length_normalized(q) / np.sqrt(q.shape[-1])


def bucket_factors(n_buckets):
  """The factors of `n_buckets` (an even int or a list of even ints)."""
  if isinstance(n_buckets, (list, tuple)):
    return [int(factor) for factor in n_buckets]
  return [int(n_buckets)]


def mask_logits(dots, q_pos, kv_pos, kv_valid=None, *, causal):
  """Subtracts the causal, exclude-self and padding penalties
  (docs/algorithm.md §3).

  Args:
    dots: float[Q, K] logits.
    q_pos: int[Q] original positions of the queries.
    kv_pos: int[K] original positions of the keys.
    kv_valid: bool[K], True for real tokens, or None (no padding).
    causal: whether a query may not see later positions.

  Returns:
    float[Q, K] masked logits.
  """
  q_pos = np.asarray(q_pos)[:, None]  # [Q, 1]
  kv_pos = np.asarray(kv_pos)[None, :]  # [1, K]
  if causal:
    dots = dots - CAUSAL_PENALTY * (q_pos < kv_pos)
  dots = dots - SELF_PENALTY * (q_pos == kv_pos)
  if kv_valid is not None:
    dots = dots - PADDING_PENALTY * ~np.asarray(kv_valid, bool)[None, :]
  return dots


def _check_chunking(length, chunk_len):
  if length % chunk_len:
    raise ValueError(
        f'length L must be a multiple of chunk_len: got L={length}, '
        f'chunk_len={chunk_len} (remainder {length % chunk_len})')




def our_softmax(x, passthrough=False):
  """Softmax over the last axis, also returning its log-sum-exp.

  Args:
    x: float[..., K] logits.
    passthrough: return x itself instead (lets integer examples be
      followed by eye), with a zero lse.

  Returns:
    (probabilities float[..., K], lse float[..., 1]); with passthrough,
    (x, zeros[..., 1]).
  """
  x = np.asarray(x, np.float64)
  lse = logsumexp(x, axis=-1, keepdims=True)  # [..., 1]
  if passthrough:
    return x, np.zeros_like(lse)
  return np.exp(x - lse), lse



# ---------------------------------------------------------------------------
# 1. Hash
# ---------------------------------------------------------------------------


def auto_n_buckets(length, chunk_len):
  """Trax's automatic bucket count: about two buckets per chunk.

  Returns:
    An even int n = 2 * max(1, L // C) when n <= 128, otherwise the two
    even factors [f, 2 * (n // (2 * f))] with f = 2 ** ceil(log2(sqrt(n)))
    (their product may be a little below n).
  """
  n = 2 * max(1, length // chunk_len)
  if n <= 128:
    return n
  # Written exactly as Trax 1.4.1's `hash_vectors` writes it.
  first = 2**math.ceil(math.log2(math.sqrt(n)))
  return [first, 2 * (n // (2 * first))]


def our_hash_vectors(vecs, rotations, n_buckets, n_hashes, mask=None):
  """Angular LSH bucket ids, flat with round offsets, as the lab returns them.

  Args:
    vecs: float[L, D] vectors to hash (the queries).
    rotations: float[D, R, sum(factors) // 2], the random rotations (the
      array the lab's rng would draw).
    n_buckets: an even int NB, or a list of even factors [b1, b2, ...]
      (then NB = b1 * b2 * ...).
    n_hashes: R.
    mask: bool[L], True for real tokens, or None. Padding tokens get the
      extra bucket id NB, and each round then has NB + 1 ids.

  Returns:
    int[R * L]: entry h * L + t is bucket[h, t] + h * (ids per round).
  """
  vecs = np.asarray(vecs, np.float64)
  rotations = np.asarray(rotations, np.float64)
  length = vecs.shape[0]
  factors = bucket_factors(n_buckets)
  n_total = math.prod(factors)

  # rotated[h, t, :] = sum_f vecs[t, f] * rotations[f, h, :]
  rotated = np.einsum('tf,fhb->htb', vecs, rotations)  # [R, L, rot_size // 2]

  buckets = np.zeros((n_hashes, length), np.int64)
  start, place_value = 0, 1
  for factor in factors:
    part = rotated[..., start:start + factor // 2]  # [R, L, factor // 2]
    start += factor // 2
    # A direction and its opposite: factor candidate directions in all.
    digit = np.argmax(np.concatenate([part, -part], axis=-1), axis=-1)
    buckets += place_value * digit  # b = a_1 + b1 * a_2 + b1 * b2 * a_3 ...
    place_value *= factor

  ids_per_round = n_total
  if mask is not None:
    buckets = np.where(np.asarray(mask, bool)[None, :], buckets, n_total)
    ids_per_round = n_total + 1

  offsets = np.arange(n_hashes)[:, None] * ids_per_round  # [R, 1]
  return (buckets + offsets).reshape(-1)  # [R * L]


# ---------------------------------------------------------------------------
# 2. Sort
# ---------------------------------------------------------------------------


def sort_buckets(buckets, q, v, n_buckets, n_hashes, seqlen):
  """Sorts the flat entries by (bucket, position), as the lab does.

  Args:
    buckets: int[R * L] flat bucket ids with round offsets.
    q: float[L, D] queries.
    v: float[L, Dv] values.
    n_buckets, n_hashes: unused; kept for the lab's signature.
    seqlen: L.

  Returns:
    (sq float[R * L, D], sv float[R * L, Dv], sticker int[R * L],
    undo_sort int[R * L]). sticker lists the flat indices h * L + t in
    sorted order; undo_sort is its inverse permutation.
  """
  del n_buckets, n_hashes  # The offsets already separate the rounds.
  buckets = np.asarray(buckets, np.int64)
  ticker = np.arange(buckets.shape[0])  # flat index h * L + t
  # All keys are distinct, so the order is fully determined. Because of the
  # round offsets, round 0's entries come first, then round 1's, ...
  keys = seqlen * buckets + ticker % seqlen
  sticker = np.argsort(keys, kind='stable')
  undo_sort = np.empty_like(sticker)
  undo_sort[sticker] = ticker  # undo_sort[sticker[i]] = i
  st = sticker % seqlen  # original positions of the sorted entries
  sq = np.asarray(q, np.float64)[st]
  sv = np.asarray(v, np.float64)[st]
  return sq, sv, sticker, undo_sort




# ---------------------------------------------------------------------------
# 3. Chunked attention with look-adjacent (flat layout)
# ---------------------------------------------------------------------------


def adjacent_chunks(chunk, n_chunks_total, n_chunks_before, n_chunks_after):
  """The key chunks that query chunk `chunk` sees, in order.

  Returns:
    [chunk - before, ..., chunk, ..., chunk + after], each modulo the total
    number of chunks of all rounds: windows wrap into neighbouring rounds,
    and a window wider than everything repeats chunks.
  """
  return [(chunk + step) % n_chunks_total
          for step in range(-n_chunks_before, n_chunks_after + 1)]


def attend(sq, sv, q_pos, *, chunk_len, n_hashes, n_chunks_before=1,
           n_chunks_after=0, causal=False, kv_valid=None,
           dropout_multiplier=None, sbuckets=None, counts=None):
  """Chunked shared-QK attention, flat sorted layout (docs/algorithm.md §3).

  Args:
    sq: float[R * L, D] sorted queries of all rounds.
    sv: float[R * L, Dv] sorted values.
    q_pos: int[R * L] original positions of the sorted entries.
    chunk_len: C; L must be a multiple of it.
    n_hashes: R.
    n_chunks_before, n_chunks_after: the look-adjacent window.
    causal: mask keys at later positions.
    kv_valid: bool[R * L], True for real tokens, or None (no padding).
    dropout_multiplier: float[C, W * C] (keep / (1 - rate)), applied to
      the probabilities of every chunk after lse is taken, or None.
    sbuckets: int[R * L] flat bucket ids with round offsets in sorted order,
      or None. Given: a window key whose id differs from the query's (another
      bucket, or a chunk of another round) is masked (attend_across_buckets
      False).
    counts: `duplicate_counts(...)`, or None. Given: every candidate entry
      (i, j) gets -log counts[i][j] (allow_duplicate_attention False).

  Returns:
    (so float[R * L, Dv], slse float[R * L]) in sorted order.
  """
  sq = np.asarray(sq, np.float64)
  sv = np.asarray(sv, np.float64)
  q_pos = np.asarray(q_pos)
  if kv_valid is not None:
    kv_valid = np.asarray(kv_valid, bool)
  flat_len = sq.shape[0]
  _check_chunking(flat_len // n_hashes, chunk_len)
  keys = shared_qk_keys(sq)  # [R*L, D]
  n_chunks_total = flat_len // chunk_len  # R * M

  def chunk_slice(chunk):
    return slice(chunk * chunk_len, (chunk + 1) * chunk_len)

  so = np.zeros((flat_len, sv.shape[-1]))
  slse = np.zeros(flat_len)
  for chunk in range(n_chunks_total):
    rows = chunk_slice(chunk)
    window = [chunk_slice(c) for c in adjacent_chunks(
        chunk, n_chunks_total, n_chunks_before, n_chunks_after)]
    k_window = np.concatenate([keys[s] for s in window])  # [W*C, D]
    v_window = np.concatenate([sv[s] for s in window])  # [W*C, Dv]
    pos_window = np.concatenate([q_pos[s] for s in window])  # [W*C]
    valid_window = (None if kv_valid is None else
                    np.concatenate([kv_valid[s] for s in window]))

    dots = sq[rows] @ k_window.T  # [C, W*C]
    dots = mask_logits(dots, q_pos[rows], pos_window, valid_window,
                       causal=causal)
    candidate = np.ones(dots.shape, bool)
    if sbuckets is not None:
      b_window = np.concatenate([sbuckets[s] for s in window])
      candidate = sbuckets[rows][:, None] == b_window[None, :]
      dots = dots - BUCKET_PENALTY * ~candidate
    if counts is not None:
      # Appendix A of the paper: a pair seen N times in all rounds' windows
      # has each copy's weight divided by N, so it counts once in the union.
      for a, i in enumerate(q_pos[rows]):
        for b, j in enumerate(pos_window):
          if candidate[a, b]:
            dots[a, b] -= np.log(counts[i][j])
    lse = logsumexp(dots, axis=-1, keepdims=True)  # [C, 1]
    probs = np.exp(dots - lse)
    if dropout_multiplier is not None:
      # After lse: the normaliser describes the mass before dropout.
      probs = probs * np.asarray(dropout_multiplier, np.float64)
    so[rows] = probs @ v_window
    slse[rows] = lse[:, 0]
  return so, slse


def duplicate_counts(sticker, sbuckets, *, chunk_len, n_hashes, seqlen,
                     n_chunks_before=1, n_chunks_after=0):
  """N_ij: how many window entries of all rounds pair query i with key j.

  The definition of the paper's duplicate count (Appendix A) for this
  layout: query i has one entry per round (its sorted position in that
  round); each entry's window holds the entries of the chunks
  `adjacent_chunks` lists, some of which belong to neighbouring rounds, and
  a window wider than all chunks holds some entries twice. Every such
  (query entry, key entry) pair with key position j counts once. Masks that
  depend only on positions (causal, self, padding) treat all copies of a
  pair alike and do not change the count; the bucket restriction does: with
  `sbuckets`, only copies whose key shares the query entry's bucket id (same
  round, same bucket) count.

  Args:
    sticker: int[R * L] flat sorted indices h * L + t (`sort_buckets`).
    sbuckets: int[R * L] sorted flat bucket ids with round offsets, or None
      (attend_across_buckets: every window entry is a candidate).
    chunk_len, n_hashes, n_chunks_before, n_chunks_after: the layout.
    seqlen: L.

  Returns:
    A list of L dicts: counts[i][j] = N_ij >= 1 for every candidate j of
    i (absent keys are never candidates).
  """
  sticker = np.asarray(sticker)
  st = sticker % seqlen  # original position of each sorted entry
  n_chunks_total = sticker.shape[0] // chunk_len
  counts = [dict() for _ in range(seqlen)]
  for query_index in range(sticker.shape[0]):  # every (round, query) entry
    i = st[query_index]
    for chunk in adjacent_chunks(query_index // chunk_len, n_chunks_total,
                                 n_chunks_before, n_chunks_after):
      for key_index in range(chunk * chunk_len, (chunk + 1) * chunk_len):
        if (sbuckets is not None
            and sbuckets[key_index] != sbuckets[query_index]):
          continue
        j = st[key_index]
        counts[i][j] = counts[i].get(j, 0) + 1
  return counts


# ---------------------------------------------------------------------------
# 4. Undo the sort, 5. combine the rounds
# ---------------------------------------------------------------------------


def unsort_rounds(so, slse, undo_sort, n_hashes, seqlen):
  """Puts sorted results back in original order, one row per round.

  Args:
    so: float[R * L, Dv] and slse: float[R * L], in sorted order.
    undo_sort: int[R * L] from `sort_buckets`.

  Returns:
    (o float[R, L, Dv], lse float[R, L]).
  """
  o = np.asarray(so)[undo_sort].reshape(n_hashes, seqlen, -1)
  lse = np.asarray(slse)[undo_sort].reshape(n_hashes, seqlen)
  return o, lse


def combine_rounds(o, lse):
  """Combines the rounds' outputs by their normalisers (docs/algorithm.md §5).

  Round h returned o_h = sum_{j in C_h} exp(s_j) v_j / Z_h with
  Z_h = exp(lse_h); attention over the union of the candidate sets is
  sum_h Z_h o_h / sum_h Z_h, i.e. weights w_h = exp(lse_h - logsumexp_h).

  Args:
    o: float[R, L, Dv] each round's output in original order.
    lse: float[R, L] each round's log-sum-exp.

  Returns:
    float[L, Dv].
  """
  o = np.asarray(o, np.float64)
  lse = np.asarray(lse, np.float64)
  weights = np.exp(lse - logsumexp(lse, axis=0, keepdims=True))  # [R, L]
  return np.sum(o * weights[..., None], axis=0)


# ---------------------------------------------------------------------------
# The whole pipeline, and dense attention for comparison
# ---------------------------------------------------------------------------


def lsh_attention(q, v, rotations, *, n_buckets=None, n_hashes, chunk_len,
                  n_chunks_before=1, n_chunks_after=0, causal=False,
                  mask=None, dropout_multiplier=None, return_rounds=False,
                  allow_duplicate_attention=True, attend_across_buckets=True):
  """LSH self-attention for one head (docs/algorithm.md §1-§5).

  Args:
    q: float[L, D] queries (= keys, shared QK).
    v: float[L, Dv] values.
    rotations: float[D, R, sum(factors) // 2] random rotations.
    n_buckets: an even int, a list of even factors, or None (default) for
      `auto_n_buckets(L, chunk_len)` (the rotations must match its width).
    n_hashes: R.
    chunk_len: C; L must be a multiple of it.
    n_chunks_before, n_chunks_after: the look-adjacent window.
    causal: mask keys at later positions.
    mask: bool[L], True for real tokens, or None.
    dropout_multiplier: float[C, W * C] or None, see `attend`.
    return_rounds: also return the per-round results.
    allow_duplicate_attention: True (the lab's, Trax 1.4.1's): a key seen
      in k windows counts k times in the combine. False (the paper's
      Appendix A): each copy's logit gets -log N_ij (`duplicate_counts`),
      so the output is attention over the union of the candidate sets.
    attend_across_buckets: True (the lab's, Trax 1.4.1's): every key in a
      window is a candidate. False: only keys hashed, in the query's round,
      to the query's bucket (the paper's P_i^r).

  Returns:
    float[L, Dv]; with return_rounds, (out float[L, Dv], o float[R, L, Dv],
    lse float[R, L]) with o and lse in original order.
  """
  q = np.asarray(q, np.float64)
  v = np.asarray(v, np.float64)
  length = q.shape[0]
  _check_chunking(length, chunk_len)
  if n_buckets is None:
    n_buckets = auto_n_buckets(length, chunk_len)
  expected = (q.shape[1], n_hashes, sum(bucket_factors(n_buckets)) // 2)
  if np.shape(rotations) != expected:
    raise ValueError(f'rotations should have shape [D, R, sum(factors) // 2]'
                     f' = {expected} for n_buckets={n_buckets}: but got '
                     f'{np.shape(rotations)}')

  buckets = our_hash_vectors(q, rotations, n_buckets, n_hashes, mask)
  sq, sv, sticker, undo_sort = sort_buckets(buckets, q, v, n_buckets,
                                            n_hashes, length)
  st = sticker % length  # original position of each sorted entry
  kv_valid = None if mask is None else np.asarray(mask, bool)[st]
  sbuckets = None if attend_across_buckets else buckets[sticker]
  counts = None
  if not allow_duplicate_attention:
    counts = duplicate_counts(
        sticker, sbuckets, chunk_len=chunk_len, n_hashes=n_hashes,
        seqlen=length, n_chunks_before=n_chunks_before,
        n_chunks_after=n_chunks_after)
  so, slse = attend(sq, sv, st, chunk_len=chunk_len, n_hashes=n_hashes,
                    n_chunks_before=n_chunks_before,
                    n_chunks_after=n_chunks_after, causal=causal,
                    kv_valid=kv_valid, dropout_multiplier=dropout_multiplier,
                    sbuckets=sbuckets, counts=counts)
  o, lse = unsort_rounds(so, slse, undo_sort, n_hashes, length)
  out = combine_rounds(o, lse)
  if return_rounds:
    return out, o, lse
  return out


def full_attention(q, v, *, causal=False, mask=None):
  """Dense shared-QK attention with the LSH conventions.

  Keys are the normalised queries / sqrt(D); exclude-self, causal and
  padding penalties as in `mask_logits`.

  Args:
    q: float[L, D] queries.
    v: float[L, Dv] values.
    causal: mask keys at later positions.
    mask: bool[L], True for real tokens, or None.

  Returns:
    float[L, Dv].
  """
  q = np.asarray(q, np.float64)
  v = np.asarray(v, np.float64)
  positions = np.arange(q.shape[0])
  dots = q @ shared_qk_keys(q).T  # [L, L]
  dots = mask_logits(dots, positions, positions, mask, causal=causal)
  probs, _ = our_softmax(dots)
  return probs @ v
