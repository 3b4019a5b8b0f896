"""Chunked attention over sorted tokens, one hash round (SPEC.md §3).

Each round's sorted sequence is cut into N = L / C chunks of C tokens.
Chunk c of round h has flat index f = h * N + c on the axis of all R * N
chunks and attends to the key chunks f - before, ..., f, ..., f + after,
each taken modulo R * N: windows wrap into the neighbouring rounds, exactly
as Trax's `look_adjacent` over the flat chunk axis.

So one round needs its own chunks plus a halo: the `before` chunks that
precede it and the `after` chunks that follow it on the flat axis, which
belong to other rounds (`halo_chunk_ids`). `chunked_attend` works on one
round's extended chunks; a window is a static slice of them, so the
adjacent keys are never copied W times.
"""
import functools

import jax
import jax.numpy as jnp

from lsh_jax import masks


def normalize_keys(sq):
  """Shared-QK keys: unit RMS, then scaled by 1/sqrt(D).

  Args:
    sq: float[..., L, D] sorted queries.

  Returns:
    float[..., L, D] keys.
  """
  variance = jnp.mean(sq**2, axis=-1, keepdims=True)
  keys = sq / jnp.sqrt(variance + 1e-6)
  return keys / jnp.sqrt(jnp.asarray(sq.shape[-1], sq.dtype))


def halo_chunk_ids(round_index, n_rounds, n_chunks, n_chunks_before,
                   n_chunks_after):
  """Flat chunk ids of one round's halo.

  Args:
    round_index: int32 scalar h (may be traced).
    n_rounds, n_chunks: R and N (static).
    n_chunks_before, n_chunks_after: the window (static).

  Returns:
    (before int32[before], after int32[after]): round h is preceded on the
    flat chunk axis by chunks h*N - before, ..., h*N - 1 and followed by
    (h+1)*N, ..., (h+1)*N + after - 1, all modulo R * N.
  """
  start = round_index * n_chunks
  total = n_rounds * n_chunks
  before = (start + jnp.arange(-n_chunks_before, 0, dtype=jnp.int32)) % total
  after = (start + n_chunks + jnp.arange(n_chunks_after, dtype=jnp.int32)
           ) % total
  return before, after


def _attend_chunks(q, q_pos, k_ext, v_ext, pos_ext, valid_ext, *, n_windows,
                   causal, dropout_multiplier):
  """B query chunks against their windows: q [B, C, D], k_ext [B+W-1, C, D]."""
  n_chunks, chunk_len = q_pos.shape

  def window(x):
    # Query chunk c sees extended chunks c, ..., c + W - 1 (in that order).
    return jnp.concatenate([x[w:w + n_chunks] for w in range(n_windows)],
                           axis=1)

  k_pos = window(pos_ext)  # [B, W*C]
  k_valid = None if valid_ext is None else window(valid_ext)
  dots = jnp.concatenate(
      [jnp.einsum('ncd,nkd->nck', q, k_ext[w:w + n_chunks])
       for w in range(n_windows)], axis=-1)  # [B, C, W*C]
  dots = masks.mask_logits(dots, q_pos, k_pos, k_valid, causal=causal)
  lse = jax.nn.logsumexp(dots, axis=-1, keepdims=True)  # [B, C, 1]
  probs = jnp.exp(dots - lse)
  if dropout_multiplier is not None:
    # Dropout comes after the normaliser: lse describes the undropped mass.
    probs = probs * dropout_multiplier
  so = sum(
      jnp.einsum('nck,nkd->ncd', probs[..., w * chunk_len:(w + 1) * chunk_len],
                 v_ext[w:w + n_chunks])
      for w in range(n_windows))  # [B, C, Dv]
  return so, lse[..., 0]


def chunked_attend(sq, q_pos, k_ext, v_ext, pos_ext, valid_ext=None, *,
                   n_chunks_before=1, n_chunks_after=0, causal=False,
                   dropout_multiplier=None, chunks_per_block=None):
  """Attention within chunks and their neighbours, one hash round.

  With E = before + N + after extended chunks: the round's halo before,
  its own N chunks, its halo after (see `lsh_jax.rounds`):

  Args:
    sq: float[L, D] this round's sorted queries, L = N * C.
    q_pos: int32[L] their original positions (the round's `sticker`).
    k_ext: float[E, C, D] sorted keys (`normalize_keys`) of the round's
      extended chunks.
    v_ext: float[E, C, Dv] sorted values of the extended chunks.
    pos_ext: int32[E, C] original positions of the extended chunks.
    valid_ext: bool[E, C] padding mask of the extended chunks, or None.
    n_chunks_before: key chunks before each query chunk.
    n_chunks_after: key chunks after each query chunk.
    causal: mask keys at later positions.
    dropout_multiplier: float[C, W * C] (keep / keep_prob) applied to the
      probabilities of every chunk, or None.
    chunks_per_block: a divisor B of N, or None for all N at once. Query
      chunks are processed B at a time (a `lax.map`), so the [B, C, W*C]
      logits stay cache-sized; results do not depend on it.

  Returns:
    (so float[L, Dv], slse float[L]): outputs and log-sum-exp normalisers
    in the round's sorted order.
  """
  chunk_len = k_ext.shape[1]
  n_chunks = sq.shape[0] // chunk_len
  n_windows = 1 + n_chunks_before + n_chunks_after
  q = sq.reshape(n_chunks, chunk_len, sq.shape[-1])  # [N, C, D]
  q_pos = q_pos.reshape(n_chunks, chunk_len)  # [N, C]
  attend = functools.partial(_attend_chunks, n_windows=n_windows,
                             causal=causal,
                             dropout_multiplier=dropout_multiplier)
  block = chunks_per_block or n_chunks
  if block >= n_chunks:
    so, lse = attend(q, q_pos, k_ext, v_ext, pos_ext, valid_ext)
  else:
    if n_chunks % block:
      raise ValueError(f'chunks_per_block ({block}) must divide the number '
                       f'of chunks per round ({n_chunks})')

    def one_block(start):
      take = lambda x, size: (None if x is None else
                              jax.lax.dynamic_slice_in_dim(x, start, size))
      span = block + n_windows - 1
      return attend(take(q, block), take(q_pos, block), take(k_ext, span),
                    take(v_ext, span), take(pos_ext, span),
                    take(valid_ext, span))

    so, lse = jax.lax.map(one_block, jnp.arange(0, n_chunks, block))
  return so.reshape(sq.shape[0], -1), lse.reshape(sq.shape[0])
