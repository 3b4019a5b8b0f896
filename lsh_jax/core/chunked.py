"""Chunked attention over sorted tokens, one hash round (docs/algorithm.md §3).

Each round's sorted sequence is cut into M = L / C chunks of C tokens.
Chunk c of round h has flat index f = h * M + c on the axis of all R * M
chunks and attends to the key chunks f - before, ..., f, ..., f + after,
each taken modulo R * M: windows wrap into the neighbouring rounds, exactly
as Trax's `look_adjacent` over the flat chunk axis.

So one round needs its own chunks plus a halo: the `before` chunks that
precede it and the `after` chunks that follow it on the flat axis, which
belong to other rounds (`halo_chunk_ids`). `chunked_attend` works on one
round's extended chunks; a window is a static slice of them, so the
adjacent keys are never copied W times.

The backward pass is written by hand (`_attend_blocks`, a `custom_vjp`):
it keeps only the inputs and `lse`, and recomputes each block's
probabilities from `lse`, as FlashAttention does. Autodiff would store every
block's [K, C, W*C] logits and probabilities and scatter each block's key
gradient into full-size buffers; this way the chunk attention's backward
keeps no [K, C, W*C] arrays between the passes.
"""
import functools

import jax
import jax.numpy as jnp

from lsh_jax.core import masks

__all__ = [
    'chunked_attend', 'chunked_attend_backward', 'dropout_multiplier',
    'halo_chunk_ids', 'normalize_keys',
]


def normalize_keys(sq: jax.Array) -> jax.Array:
  """Shared-QK keys: unit RMS, then scaled by 1/sqrt(D).

  Args:
    sq: float[..., L, D] sorted queries.

  Returns:
    float[..., L, D] keys.
  """
  variance = jnp.mean(sq**2, axis=-1, keepdims=True)
  keys = sq / jnp.sqrt(variance + 1e-6)
  return keys / jnp.sqrt(jnp.asarray(sq.shape[-1], sq.dtype))


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


def halo_chunk_ids(round_index, n_rounds, n_chunks, n_chunks_before,
                   n_chunks_after):
  """Flat chunk ids of one round's halo.

  Args:
    round_index: int32 scalar h (may be traced).
    n_rounds, n_chunks: R and M (static).
    n_chunks_before, n_chunks_after: the window (static).

  Returns:
    (before int32[before], after int32[after]): round h is preceded on the
    flat chunk axis by chunks h*M - before, ..., h*M - 1 and followed by
    (h+1)*M, ..., (h+1)*M + after - 1, all modulo R * M.
  """
  start = round_index * n_chunks
  total = n_rounds * n_chunks
  before = (start + jnp.arange(-n_chunks_before, 0, dtype=jnp.int32)) % total
  after = (start + n_chunks + jnp.arange(n_chunks_after, dtype=jnp.int32)
           ) % total
  return before, after


def _block_logits(q, q_pos, k_ext, pos_ext, valid_ext, bias=None, *,
                  n_windows, causal):
  """Masked logits of K query chunks: q [K, C, D], k_ext [K+W-1, C, D].

  bias: float[K, C, W*C] subtracted after the masks (the duplicate-count
  correction, `lsh_jax.core.duplicates`), or None.

  Returns:
    float[K, C, W*C]: query chunk c against extended chunks c, ..., c+W-1.
  """
  n_chunks = q.shape[0]

  def window(x):
    return jnp.concatenate([x[w:w + n_chunks] for w in range(n_windows)],
                           axis=1)

  k_pos = window(pos_ext)  # [K, W*C]
  k_valid = None if valid_ext is None else window(valid_ext)
  dots = jnp.concatenate(
      [jnp.einsum('ncd,nkd->nck', q, k_ext[w:w + n_chunks])
       for w in range(n_windows)], axis=-1)  # [K, C, W*C]
  dots = masks.mask_logits(dots, q_pos, k_pos, k_valid, causal=causal)
  return dots if bias is None else dots - bias


def _block_forward(q, q_pos, k_ext, v_ext, pos_ext, valid_ext, bias=None, *,
                   multiplier, n_windows, causal):
  """One block's (so [K, C, Dv], lse [K, C])."""
  chunk_len = q.shape[1]
  n_chunks = q.shape[0]
  dots = _block_logits(q, q_pos, k_ext, pos_ext, valid_ext, bias,
                       n_windows=n_windows, causal=causal)
  # One exp per logit: exp(dots - lse) written as exp(dots - top) *
  # exp(top - lse), with lse = top + log(sum exp(dots - top)) as
  # logsumexp computes it. Where a query sees only copies of itself (logits
  # near -1e5, docs/algorithm.md §5) dots == top, so its probabilities are
  # exp(top - lse) with the same float32 rounding as Trax's exp(dots - lse);
  # elsewhere the two differ by an ulp.
  top = jnp.max(dots, axis=-1, keepdims=True)
  weights = jnp.exp(dots - top)  # [K, C, W*C]
  lse = top + jnp.log(jnp.sum(weights, axis=-1, keepdims=True))  # [K, C, 1]
  probs = weights * jnp.exp(top - lse)
  if multiplier is not None:
    # Dropout comes after the normaliser: lse describes the undropped mass.
    probs = probs * multiplier
  so = sum(
      jnp.einsum('nck,nkd->ncd', probs[..., w * chunk_len:(w + 1) * chunk_len],
                 v_ext[w:w + n_chunks])
      for w in range(n_windows))  # [K, C, Dv]
  return so, lse[..., 0]


def _block_backward(q, q_pos, k_ext, v_ext, pos_ext, valid_ext, bias, lse,
                    g_so, g_lse, *, multiplier, n_windows, causal,
                    g_lse_adds_delta):
  """One block's gradients, the probabilities recomputed from lse.

  With p = exp(dots - lse) and pd = p * multiplier: so = pd v, so
  dv = pd^T g, d(pd) = g v^T and dp = d(pd) * multiplier; the softmax gives
  ddots = p * dp + (g_lse - rowsum(p * dp)) * softmax(dots), where
  softmax(dots) equals p up to the rounding of lse. rowsum(p * dp) is
  delta = g . so; with `g_lse_adds_delta` the lse cotangent is g_lse + delta
  and the two deltas cancel: ddots = p * dp + g_lse * softmax(dots).

  Returns:
    dq [K, C, D], dk [W, K, C, D], dv [W, K, C, Dv]: dk[w] and dv[w] belong
    to extended chunks w, ..., w + K - 1 (the caller adds the W shifts).
  """
  chunk_len = q.shape[1]
  n_chunks = q.shape[0]
  dots = _block_logits(q, q_pos, k_ext, pos_ext, valid_ext, bias,
                       n_windows=n_windows, causal=causal)
  # Two normalisations, as autodiff of the forward sees them: `probs` =
  # exp(dots - lse) as the forward used them, and the exact softmax through
  # which lse itself depends on dots. They differ where float32 cannot
  # resolve lse (a query that sees only copies of itself, logits near
  # -1e5, docs/algorithm.md §5); using each where autodiff would keeps the
  # gradients equal to Trax's there too.
  top = jnp.max(dots, axis=-1, keepdims=True)
  weights = jnp.exp(dots - top)  # [K, C, W*C]
  softmax = weights / jnp.sum(weights, axis=-1, keepdims=True)
  probs = weights * jnp.exp(top - lse[..., None])
  dropped = probs if multiplier is None else probs * multiplier
  d_dropped = jnp.concatenate(
      [jnp.einsum('ncd,nkd->nck', g_so, v_ext[w:w + n_chunks])
       for w in range(n_windows)], axis=-1)
  if multiplier is not None:
    d_dropped = d_dropped * multiplier
  if g_lse_adds_delta:
    lse_term = g_lse[..., None]
  else:
    delta = jnp.sum(probs * d_dropped, axis=-1, keepdims=True)  # [K, C, 1]
    lse_term = g_lse[..., None] - delta
  d_dots = probs * d_dropped + lse_term * softmax
  part = lambda x, w: x[..., w * chunk_len:(w + 1) * chunk_len]
  dq = sum(jnp.einsum('nck,nkd->ncd', part(d_dots, w), k_ext[w:w + n_chunks])
           for w in range(n_windows))
  # Key-side products with the logits transposed first: contracting the
  # first axis of both operands ('nck,ncd->nkd') falls back to XLA:CPU's
  # own dot loop, ~1.5x slower than the library call this form gets.
  d_dots_t = jnp.swapaxes(d_dots, 1, 2)  # [K, W*C, C]
  dropped_t = jnp.swapaxes(dropped, 1, 2)
  part_t = lambda x, w: x[:, w * chunk_len:(w + 1) * chunk_len]
  dk = jnp.stack([jnp.einsum('nkc,ncd->nkd', part_t(d_dots_t, w), q)
                  for w in range(n_windows)])
  dv = jnp.stack([jnp.einsum('nkc,ncd->nkd', part_t(dropped_t, w), g_so)
                  for w in range(n_windows)])
  return dq, dk, dv


def _starts(n_chunks, block):
  return jnp.arange(0, n_chunks, block, dtype=jnp.int32)


def _by_block(x, block):
  """[M, ...] -> [M / K, K, ...]: the blocks' own rows, as lax.map inputs."""
  return None if x is None else x.reshape(-1, block, *x.shape[1:])


def _halo_slice(x, start, size):
  return None if x is None else jax.lax.dynamic_slice_in_dim(x, start, size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def _attend_blocks(q, q_pos, k_ext, v_ext, pos_ext, valid_ext, multiplier,
                   bias, n_windows, causal, block):
  """All M query chunks, K at a time: (so [M, C, Dv], lse [M, C]).

  bias: float[M, C, W*C] or None, see `_block_logits` (no gradient).
  """
  n_chunks = q.shape[0]
  attend = functools.partial(_block_forward, multiplier=multiplier,
                             n_windows=n_windows, causal=causal)
  if block >= n_chunks:
    return attend(q, q_pos, k_ext, v_ext, pos_ext, valid_ext, bias)
  span = block + n_windows - 1

  def one_block(args):
    start, q_b, q_pos_b, bias_b = args
    return attend(q_b, q_pos_b, *(_halo_slice(x, start, span) for x in (
        k_ext, v_ext, pos_ext, valid_ext)), bias_b)

  so, lse = jax.lax.map(one_block, (_starts(n_chunks, block),
                                    _by_block(q, block),
                                    _by_block(q_pos, block),
                                    _by_block(bias, block)))
  return so.reshape(n_chunks, *so.shape[2:]), lse.reshape(n_chunks, -1)


def _attend_blocks_fwd(q, q_pos, k_ext, v_ext, pos_ext, valid_ext, multiplier,
                       bias, n_windows, causal, block):
  so, lse = _attend_blocks(q, q_pos, k_ext, v_ext, pos_ext, valid_ext,
                           multiplier, bias, n_windows, causal, block)
  # Only the inputs and lse: the backward recomputes the probabilities
  # block by block instead of keeping [M, C, W*C] of them per round.
  return (so, lse), (q, q_pos, k_ext, v_ext, pos_ext, valid_ext, multiplier,
                     bias, lse)


def _attend_blocks_bwd(n_windows, causal, block, residuals, grads, *,
                       g_lse_adds_delta=False):
  q, q_pos, k_ext, v_ext, pos_ext, valid_ext, multiplier, bias, lse = (
      residuals)
  g_so, g_lse = grads
  n_chunks = q.shape[0]
  block = min(block, n_chunks)
  span = block + n_windows - 1
  backward = functools.partial(_block_backward, multiplier=multiplier,
                               n_windows=n_windows, causal=causal,
                               g_lse_adds_delta=g_lse_adds_delta)

  def one_block(args):
    start, q_b, q_pos_b, bias_b, lse_b, g_so_b, g_lse_b = args
    k_b, v_b, pos_b, valid_b = (_halo_slice(x, start, span) for x in (
        k_ext, v_ext, pos_ext, valid_ext))
    return backward(q_b, q_pos_b, k_b, v_b, pos_b, valid_b, bias_b, lse_b,
                    g_so_b, g_lse_b)

  dq, dk, dv = jax.lax.map(one_block, (
      _starts(n_chunks, block),
      *(_by_block(x, block) for x in (q, q_pos, bias, lse, g_so, g_lse))))

  def fold(d):
    """[M / K, W, K, C, ...] per window -> [M + W - 1, C, ...] extended."""
    d = jnp.moveaxis(d, 1, 0).reshape(n_windows, n_chunks, *d.shape[3:])
    pad = lambda w: ((w, n_windows - 1 - w),) + ((0, 0),) * (d.ndim - 2)
    return sum(jnp.pad(d[w], pad(w)) for w in range(n_windows))

  return (dq.reshape(q.shape), None, fold(dk), fold(dv), None, None, None,
          None)


_attend_blocks.defvjp(_attend_blocks_fwd, _attend_blocks_bwd)


def chunked_attend(sq: jax.Array, q_pos: jax.Array, k_ext: jax.Array,
                   v_ext: jax.Array, pos_ext: jax.Array,
                   valid_ext: jax.Array | None = None, *,
                   n_chunks_before: int = 1, n_chunks_after: int = 0,
                   causal: bool = False,
                   dropout_multiplier: jax.Array | None = None,
                   chunks_per_block: int | None = None,
                   logit_bias: jax.Array | None = None,
                   ) -> tuple[jax.Array, jax.Array]:
  """Attention within chunks and their neighbours, one hash round.

  With E = before + M + after extended chunks: the round's halo before,
  its own M chunks, its halo after (see `lsh_jax.core.rounds`):

  Args:
    sq: float[L, D] this round's sorted queries, L = M * C.
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
    chunks_per_block: a divisor K of M, or None for all M at once. Query
      chunks are processed K at a time (a `lax.map`), so the [K, C, W*C]
      logits stay cache-sized; results do not depend on it.
    logit_bias: float[M, C, W * C] subtracted from the masked logits (the
      duplicate-count correction, `lsh_jax.core.duplicates`), or None. It
      takes no gradient.

  Returns:
    (so float[L, Dv], slse float[L]): outputs and log-sum-exp normalisers
    in the round's sorted order.
  """
  chunk_len = k_ext.shape[1]
  n_chunks = sq.shape[0] // chunk_len
  n_windows = 1 + n_chunks_before + n_chunks_after
  q = sq.reshape(n_chunks, chunk_len, sq.shape[-1])  # [M, C, D]
  q_pos = q_pos.reshape(n_chunks, chunk_len)  # [M, C]
  block = chunks_per_block or n_chunks
  if n_chunks % block:
    raise ValueError(f'chunks_per_block ({block}) must divide the number '
                     f'of chunks per round ({n_chunks})')
  so, lse = _attend_blocks(q, q_pos, k_ext, v_ext, pos_ext, valid_ext,
                           dropout_multiplier, logit_bias, n_windows, causal,
                           block)
  return so.reshape(sq.shape[0], -1), lse.reshape(sq.shape[0])


def chunked_attend_backward(sq, q_pos, k_ext, v_ext, pos_ext, valid_ext, slse,
                            g_so, g_slse, *, n_chunks_before=1,
                            n_chunks_after=0, causal=False,
                            dropout_multiplier=None, chunks_per_block=None,
                            g_slse_adds_delta=False, logit_bias=None):
  """The VJP of `chunked_attend` for given output cotangents.

  For callers that keep their own residuals (`lsh_jax.core.rounds`): the same
  arguments as `chunked_attend`, plus its `slse` output and the cotangents
  g_so float[L, Dv] and g_slse float[L] of its two outputs.

  With `g_slse_adds_delta`, the cotangent of slse is g_slse plus
  delta = sum(g_so * so, -1), which the backward forms from its own
  recomputed probabilities: a caller whose lse cotangent contains that
  term (the round combine's does) need not keep `so` to compute it.

  Returns:
    (d_sq float[L, D], d_k_ext float[E, C, D], d_v_ext float[E, C, Dv]).
  """
  chunk_len = k_ext.shape[1]
  n_chunks = sq.shape[0] // chunk_len
  n_windows = 1 + n_chunks_before + n_chunks_after
  by_chunk = lambda x: x.reshape(n_chunks, chunk_len, *x.shape[1:])
  residuals = (by_chunk(sq), by_chunk(q_pos), k_ext, v_ext, pos_ext,
               valid_ext, dropout_multiplier, logit_bias, by_chunk(slse))
  d_q, _, d_k_ext, d_v_ext, _, _, _, _ = _attend_blocks_bwd(
      n_windows, causal, chunks_per_block or n_chunks, residuals,
      (by_chunk(g_so), by_chunk(g_slse)), g_lse_adds_delta=g_slse_adds_delta)
  return d_q.reshape(sq.shape), d_k_ext, d_v_ext
